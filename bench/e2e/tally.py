"""What reached the webhook receiver, matched to the cases the benchmark screened.

The thin payload names the case and the referral (docs/notification.md), so a case's arrival is its first
``referral.requested.v1`` webhook. Exactly once means: every webhook a screened case must cause (its
referral, and its protection hold when the subscription covers holds) arrived, once.
"""

import asyncio
import time
from collections import Counter, defaultdict

import httpx

COUNTED_TYPE = "referral.requested.v1"
HOLD_TYPE = "protection_hold.placed.v1"
ARRIVED_AT, WEBHOOK_ID, TYPE, CASE_ID, REFERRAL_ID, SIGNATURE_OK = range(6)


def expected_types(subscribed: list[str]) -> tuple[str, ...]:
    """The webhooks each benchmark case causes for the receiving agency, given its subscription."""
    expected = []
    for kind in (COUNTED_TYPE, HOLD_TYPE):
        if kind in subscribed or f"{kind.split('.')[0]}.*" in subscribed:
            expected.append(kind)
    return tuple(expected)


class Arrivals:
    def __init__(self, receiver_url: str, expected: tuple[str, ...] = (COUNTED_TYPE,)) -> None:
        self.receiver_url = receiver_url
        self.expected = expected
        self.items: list[list] = []
        self.by_type: dict[str, dict[str, list[list]]] = defaultdict(lambda: defaultdict(list))  # type -> case
        self.counted = self.by_type[COUNTED_TYPE]  # case id -> its referral.requested webhooks

    async def refresh(self, http: httpx.AsyncClient) -> int:
        response = await http.get(f"{self.receiver_url}/_bench/arrivals", params={"since": len(self.items)})
        response.raise_for_status()
        new = response.json()["items"]
        for item in new:
            self.items.append(item)
            if item[CASE_ID]:
                self.by_type[item[TYPE]][item[CASE_ID]].append(item)
        return len(new)

    async def follow(self, interval_s: float = 0.5) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while True:
                try:
                    await self.refresh(http)
                except httpx.HTTPError:
                    pass  # the receiver is busy; the next poll catches up
                await asyncio.sleep(interval_s)

    def arrived_at(self, case_id: str) -> float | None:
        hooks = self.counted.get(case_id)
        return hooks[0][ARRIVED_AT] if hooks else None

    def arrived(self, case_ids: list[str], kinds: tuple[str, ...] = (COUNTED_TYPE,)) -> int:
        return sum(1 for case_id in case_ids if all(case_id in self.by_type[kind] for kind in kinds))

    async def wait_for(self, case_ids: list[str], stall_s: float, progress=None,
                       kinds: tuple[str, ...] = (COUNTED_TYPE,)) -> float | None:
        """Until every case arrived, or nothing new arrived for `stall_s`; the last of their arrival times."""
        last_count, last_change = -1, time.monotonic()
        while True:
            count = self.arrived(case_ids, kinds)
            if progress:
                progress(count)
            if count == len(case_ids):
                break
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                break
            await asyncio.sleep(0.25)
        times = [t for case_id in case_ids if (t := self.arrived_at(case_id)) is not None]
        return max(times) if times else None

    def exactly_once(self, case_ids: list[str]) -> dict:
        """Lost and duplicated, counted every way a receiver could notice them. A case is lost when one of the
        webhooks it must cause never came, duplicated when one came more than once (any webhook-id)."""
        wanted = set(case_ids)
        per_type = {kind: Counter({c: len(self.by_type[kind].get(c, ())) for c in wanted}) for kind in self.expected}
        referrals_per_case = {c: {h[REFERRAL_ID] for h in self.counted.get(c, ())} for c in wanted}
        webhook_ids = Counter(item[WEBHOOK_ID] for item in self.items)
        by_type_and_case = Counter((item[TYPE], item[CASE_ID]) for item in self.items)
        return {
            "cases": len(wanted),
            "arrived_exactly_once": sum(1 for c in wanted if all(per_type[k][c] == 1 for k in self.expected)),
            "lost": sum(1 for c in wanted if any(per_type[k][c] == 0 for k in self.expected)),
            "duplicated_cases": sum(1 for c in wanted if any(per_type[k][c] > 1 for k in self.expected)),
            "by_type": {kind: {"lost": sum(1 for n in counts.values() if n == 0),
                               "duplicated": sum(1 for n in counts.values() if n > 1)}
                        for kind, counts in per_type.items()},
            "extra_referrals": sum(max(0, len(r) - 1) for r in referrals_per_case.values()),
            "repeated_webhook_ids": sum(n - 1 for n in webhook_ids.values() if n > 1),
            "repeated_event_per_case": sum(n - 1 for n in by_type_and_case.values() if n > 1),
            "unknown_cases": len({item[CASE_ID] for item in self.items} - wanted),
            "invalid_signatures": sum(1 for item in self.items if item[SIGNATURE_OK] is False),
            "webhooks_by_type": dict(Counter(item[TYPE] for item in self.items)),
        }
