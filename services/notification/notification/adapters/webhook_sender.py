"""Sends one signed webhook (Standard Webhooks) over HTTP."""

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after_s: float | None = None  # the receiver's Retry-After (429/503), in seconds

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in delay-seconds form; the HTTP-date form is ignored (backoff applies)."""
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def signature_header(secrets: list[str] | str, message_id: str, when: datetime, payload: str) -> str:
    """One ``v1,…`` signature per secret, space-separated, as Standard Webhooks allows during a rotation."""
    if isinstance(secrets, str):
        secrets = [secrets]
    return " ".join(Webhook(secret).sign(message_id, when, payload) for secret in secrets)


async def send_signed(client: httpx.AsyncClient, *, url: str, secret: str | list[str], message_id: str, payload: str,
                      now: datetime | None = None, total_timeout_s: float | None = None,
                      trace_headers: dict[str, str] | None = None) -> SendResult:
    """``total_timeout_s`` bounds the whole exchange (httpx's timeouts are per read/write, so a receiver that
    trickles bytes could otherwise outlast the dispatcher's lease). ``trace_headers``: W3C trace context."""
    # The signing library treats the datetime as UTC, so hand it UTC.
    now = (now or datetime.now(UTC)).astimezone(UTC)
    headers = {
        **(trace_headers or {}),
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature_header(secret, message_id, now, payload),
    }
    started = time.perf_counter()
    try:
        async with asyncio.timeout(total_timeout_s):
            response = await client.post(url, content=payload.encode(), headers=headers)
        return SendResult(response.status_code, (time.perf_counter() - started) * 1000, None,
                          _retry_after(response) if response.status_code in (429, 503) else None)
    except TimeoutError:
        error = f"TimeoutError: no answer within {total_timeout_s}s"
        return SendResult(None, (time.perf_counter() - started) * 1000, error)
    except httpx.HTTPError as exc:
        return SendResult(None, (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}"[:500])
