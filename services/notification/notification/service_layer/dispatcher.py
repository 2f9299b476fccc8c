"""Delivers due webhooks and e-mails; retries with backoff and full jitter; the schedule lives in the database.

* Durable: ``next_attempt_at`` is in the delivery row, so a restart resumes the schedule.
* Replica-safe: an attempt is claimed with a lease (a conditional UPDATE); only the holder of the
  lease records the result, and a lease that outlives a crashed holder expires and is claimed again.
* Batched: a pass is one short transaction that records every attempt finished since the last pass and
  claims every due attempt there is room for (SQLAlchemy Core statements, no ORM unit of work). No
  transaction is open while a request is on the wire. An outcome not yet recorded keeps its lease, so its
  delivery is never claimed again meanwhile.
* Fair: at most ``delivery_concurrency_per_endpoint`` attempts are in flight per webhook URL (and for
  SMTP), only ``FAILING_ENDPOINT_CONCURRENCY`` while its last attempt failed, and at most
  ``delivery_concurrency_total`` in all. The loop never awaits an attempt: each runs as its own task with a
  per-request timeout, so a slow receiver holds only its own slots.
"""

import asyncio
import functools
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from enlace_platform.crypto import CorruptValue
from enlace_platform.db import CommitWaker
from enlace_platform.runtime import ServiceRuntime
from enlace_platform.timeutil import as_utc
from notification.adapters.email_sender import send_email
from notification.adapters.orm import DeliveryAttemptRow, DeliveryRow, SubscriptionRow
from notification.adapters.signing_secrets import SigningSecrets
from notification.adapters.webhook_sender import SendResult, send_signed, webhook_transport
from notification.config import NotificationSettings
from notification.domain.delivery import CANCELLED, DEAD, DELIVERED, PENDING, Outcome, RetryPolicy, decide, \
    outcome_of_http
from notification.domain.webhooks import EMAIL, WEBHOOK
from notification.service_layer.handlers import DELIVERIES_FLAG
from notification.service_layer.subscriptions import cancel_waiting, disable_if_active

log = logging.getLogger(__name__)
# httpx logs every request with its full URL at INFO; a webhook URL may carry the receiver's token.
logging.getLogger("httpx").setLevel(logging.WARNING)
tracer = trace.get_tracer("enlace.notification")

SMTP_ENDPOINT = "smtp:"  # all e-mails share one endpoint: the SMTP server
UNSIGNABLE = ("the subscription's signing secret cannot be read with this service's key; nothing was sent "
              "(restore the service's key, or rotate the secret)")

# Attempts that finish within this window of each other are recorded (and their slots refilled) in one pass.
RECORD_WINDOW_S = 0.01
FAILING_ENDPOINT_CONCURRENCY = 2  # in flight at most to an endpoint whose last attempt failed

# --- the statements of a pass, built once (each then reuses its compiled form and cache key) -----------

DELIVERY = DeliveryRow.__table__
SUBSCRIPTION = SubscriptionRow.__table__
ATTEMPT = DeliveryAttemptRow.__table__
_IDS = bindparam("ids", expanding=True)
_WITH_SUBSCRIPTION = SUBSCRIPTION.c.id == DELIVERY.c.subscription_id
# Pending, due at :now and not leased (or its lease has expired).
_DUE = and_(DELIVERY.c.status == PENDING, DELIVERY.c.next_attempt_at <= bindparam("now"),
            or_(DELIVERY.c.lease_expires_at.is_(None), DELIVERY.c.lease_expires_at < bindparam("now")))

# The due attempts of :channels, oldest first, leaving out the webhook URLs that are :full.
_CANDIDATES = (
    select(DELIVERY.c.id, DELIVERY.c.channel, DELIVERY.c.subscription_id, SUBSCRIPTION.c.active, SUBSCRIPTION.c.url,
           SUBSCRIPTION.c.secret, SUBSCRIPTION.c.previous_secret, SUBSCRIPTION.c.previous_secret_expires_at)
    .join_from(DELIVERY, SUBSCRIPTION, _WITH_SUBSCRIPTION)
    .where(_DUE, DELIVERY.c.channel.in_(bindparam("channels", expanding=True)),
           or_(DELIVERY.c.channel != WEBHOOK, SUBSCRIPTION.c.url.not_in(bindparam("full", expanding=True))))
    .order_by(DELIVERY.c.next_attempt_at).limit(bindparam("limit")))
_CLAIM = (update(DELIVERY).where(DELIVERY.c.id.in_(_IDS), _DUE)
          .values(lease_token=bindparam("token"), lease_expires_at=bindparam("until")))
# The rest of what an attempt needs (its subscription's columns come with the candidates): returned by the
# claim itself where the database can (SQLite 3.35+, PostgreSQL), read after it otherwise.
_JOB_COLUMNS = (DELIVERY.c.id, DELIVERY.c.event_type, DELIVERY.c.payload, DELIVERY.c.traceparent,
                DELIVERY.c.tracestate)
_CLAIM_RETURNING = _CLAIM.returning(*_JOB_COLUMNS)
_CLAIMED = select(*_JOB_COLUMNS).where(DELIVERY.c.id.in_(_IDS), DELIVERY.c.lease_token == bindparam("token"))
# Left pending by an attempt that died while its subscription was disabled.
_CANCEL_ORPHANS = (update(DELIVERY).where(DELIVERY.c.id.in_(_IDS), _DUE)
                   .values(status=CANCELLED, last_error="subscription disabled", lease_token=None,
                           lease_expires_at=None))
_NEXT_DUE = select(func.min(DELIVERY.c.next_attempt_at)).where(DELIVERY.c.status == PENDING,
                                                               DELIVERY.c.next_attempt_at > bindparam("now"))

_TO_RECORD = (
    select(DELIVERY.c.id, DELIVERY.c.subscription_id, DELIVERY.c.channel, DELIVERY.c.attempts,
           DELIVERY.c.cycle_attempts, DELIVERY.c.cycle_started_at, DELIVERY.c.lease_token, SUBSCRIPTION.c.active,
           SUBSCRIPTION.c.disabled_reason)
    .join_from(DELIVERY, SUBSCRIPTION, _WITH_SUBSCRIPTION)
    .where(DELIVERY.c.id.in_(_IDS)).with_for_update(of=DELIVERY))
_LOG_ATTEMPTS = insert(ATTEMPT)
# What recording an attempt changes in a delivery it still holds; next_attempt_at and delivered_at only when
# the decision sets them (coalesce keeps the stored value otherwise).
_RECORD_HELD = (
    update(DELIVERY).where(DELIVERY.c.id == bindparam("b_id"), DELIVERY.c.lease_token == bindparam("b_token"))
    .values(attempts=bindparam("b_attempts"), cycle_attempts=bindparam("b_cycle_attempts"),
            status=bindparam("b_status"), last_status_code=bindparam("b_status_code"),
            last_error=bindparam("b_error"), lease_token=None, lease_expires_at=None,
            next_attempt_at=func.coalesce(bindparam("b_next", type_=DELIVERY.c.next_attempt_at.type),
                                          DELIVERY.c.next_attempt_at),
            delivered_at=func.coalesce(bindparam("b_delivered", type_=DELIVERY.c.delivered_at.type),
                                       DELIVERY.c.delivered_at)))
# ...and in one whose lease ran out (taken over or cancelled): the attempt is counted, nothing decided.
_RECORD_LOST = update(DELIVERY).where(DELIVERY.c.id == bindparam("b_id")).values(attempts=bindparam("b_attempts"))


def _now() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=1024)
def _endpoint_attributes(url: str) -> dict[str, str | int]:
    """The HTTP client attributes of a webhook POST. A webhook URL can be a capability (a token in its path or
    query, as Slack-style hooks are): traces show only its scheme, host and port."""
    parts = urlsplit(url)
    return {"http.request.method": "POST", "url.full": f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/",
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80)}


def _http_outcome(span, result: SendResult) -> None:
    if result.status_code is not None:
        span.set_attribute("http.response.status_code", result.status_code)
        if result.status_code >= 400:
            span.set_attribute("error.type", str(result.status_code))
            span.set_status(trace.StatusCode.ERROR)
    elif result.error:  # the exception's name only: its message may quote the URL
        span.set_attribute("error.type", result.cause or result.error.partition(":")[0])
        span.set_status(trace.StatusCode.ERROR)


@dataclass(frozen=True, slots=True)
class Target:
    """The subscription columns an attempt needs (what SigningSecrets reads of a SubscriptionRow)."""
    id: str
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed attempt."""
    delivery_id: str
    channel: str
    event_type: str
    payload: str
    traceparent: str | None
    tracestate: str | None
    target: Target
    token: str


@dataclass(frozen=True, slots=True)
class Finished:
    """An attempt's outcome, waiting to be recorded."""
    delivery_id: str
    token: str
    result: SendResult
    outcome: Outcome
    at: datetime


class Dispatcher:
    def __init__(self, runtime: ServiceRuntime, settings: NotificationSettings) -> None:
        self._engine = runtime.engine
        self._stopping = runtime.stopping
        self._settings = settings
        self._secrets = SigningSecrets.of(runtime)
        self._policy = RetryPolicy(max_attempts=settings.delivery_max_attempts,
                                   max_age=timedelta(seconds=settings.delivery_max_age_s),
                                   base_s=settings.delivery_retry_base_s, max_s=settings.delivery_retry_max_s)
        # Longer than any attempt can take (each send is bounded as a whole), so a lease never expires
        # under a live attempt.
        self._lease = timedelta(seconds=max(settings.webhook_timeout_s, settings.smtp_timeout_s * 3)
                                + settings.delivery_lease_margin_s)
        # An outcome whose recording failed (database locked, full) waits for the next pass this long at most,
        # well within its lease; after that it is dropped and the attempt made again once the lease expires.
        self._keep_unrecorded = timedelta(seconds=settings.delivery_lease_margin_s / 2)
        self._waker = CommitWaker(runtime.sessions, DELIVERIES_FLAG)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._failing: set[str] = set()  # endpoints whose last attempt failed
        self._tasks: set[asyncio.Task] = set()
        self._finished: list[Finished] = []
        self._pass_soon: asyncio.TimerHandle | None = None
        self._next_due: datetime | None = None  # the earliest scheduled retry this dispatcher knows of
        self._client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        s = self._settings
        # One client for the process: connections to a receiver are kept alive between its webhooks.
        # Each connection checks the addresses it goes to (loopback and private ones only in development).
        limits = httpx.Limits(max_connections=s.delivery_concurrency_total,
                              max_keepalive_connections=s.delivery_concurrency_total)
        self._client = httpx.AsyncClient(
            timeout=s.webhook_timeout_s, follow_redirects=False,
            transport=webhook_transport(limits=limits, allow_loopback=s.webhook_allow_loopback))
        try:
            while not self._stopping.is_set():
                wait_s = s.dispatcher_fallback_poll_s
                try:
                    wait_s = await self.start_due()
                except Exception:
                    log.exception("dispatch pass failed; retrying")
                await self._waker.wait(wait_s)
        finally:
            # Attempts in hand finish (each is bounded by its timeout) and their outcomes are recorded;
            # anything cut short keeps its lease, which expires, and the attempt is made again.
            try:
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=s.webhook_timeout_s + 1)
                if self._finished:
                    await self._pass(claim=False)
            except Exception:
                log.exception("recording the last outcomes failed; those attempts are made again once their "
                              "leases expire")
            finally:
                for task in self._tasks:
                    task.cancel()
                if self._pass_soon is not None:
                    self._pass_soon.cancel()
                self._waker.detach()
                await self._client.aclose()

    async def start_due(self) -> float:
        """One dispatch pass: record the attempts that finished, then claim and start every due attempt there
        is room for, in one transaction. Returns how long to sleep at most."""
        return await self._pass(claim=True)

    async def _pass(self, *, claim: bool) -> float:
        s = self._settings
        if self._pass_soon is not None:
            self._pass_soon.cancel()
            self._pass_soon = None
        finished, self._finished = self._finished, []
        room = s.delivery_concurrency_total - len(self._tasks) if claim else 0
        if not finished and room <= 0:
            return s.dispatcher_fallback_poll_s  # a finishing attempt wakes the loop
        now = _now()
        jobs: list[Job] = []
        again = False
        try:
            async with self._engine.begin() as conn:
                if finished:
                    await self._record(conn, finished)
                if room > 0:
                    jobs, again = await self._claim_due(conn, now, room)
                    if not jobs and not again:
                        self._next_due = as_utc((await conn.execute(_NEXT_DUE, {"now": now})).scalar())
        except Exception:
            self._keep_for_next_pass(finished)
            raise
        for job in jobs:
            endpoint = SMTP_ENDPOINT if job.channel == EMAIL else job.target.url
            self._in_flight[endpoint] += 1
            task = asyncio.create_task(self._attempt(job, endpoint), name=f"deliver-{job.delivery_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if again:
            return 0.0  # there may be more due work behind what this pass read
        # Due work waiting for a busy endpoint is started when a slot frees (that wakes the loop); sleep
        # until the next scheduled retry, or the fallback poll (leases of dead replicas, other replicas' rows).
        if self._next_due is None:
            return s.dispatcher_fallback_poll_s
        return min(s.dispatcher_fallback_poll_s, max(0.0, (self._next_due - _now()).total_seconds()))

    def _keep_for_next_pass(self, finished: list[Finished]) -> None:
        now = _now()
        kept = [f for f in finished if now - f.at < self._keep_unrecorded]
        for f in finished:
            if now - f.at >= self._keep_unrecorded:
                log.error("delivery %s: its attempt could not be recorded; it is made again once its lease expires",
                          f.delivery_id)
        self._finished[:0] = kept

    # --- picking work ------------------------------------------------------------------------------

    def _limit(self, endpoint: str) -> int:
        """In flight at most to one endpoint: fewer while it fails, so a dead or stuck receiver holds only a
        few slots and the others keep theirs."""
        limit = self._settings.delivery_concurrency_per_endpoint
        return min(limit, FAILING_ENDPOINT_CONCURRENCY) if endpoint in self._failing else limit

    async def _claim_due(self, conn: AsyncConnection, now: datetime, room: int) -> tuple[list[Job], bool]:
        """Claims due attempts for up to ``room`` slots; returns them, and whether to go again at once (more may
        be due behind what this pass read)."""
        # A short page: past an endpoint's free slots its rows are skipped, and a pass that read a full page
        # runs again at once, leaving out the endpoints it filled.
        limit = min(room, 4 * self._settings.delivery_concurrency_per_endpoint)
        full = [key for key, n in self._in_flight.items() if n >= self._limit(key)]
        # A busy endpoint's backlog must not crowd out the others: the candidates leave it out.
        channels = [WEBHOOK] if SMTP_ENDPOINT in full or not self._settings.smtp_host else [WEBHOOK, EMAIL]
        rows = (await conn.execute(_CANDIDATES, {"now": now, "channels": channels, "limit": limit,
                                                 "full": [key for key in full if key != SMTP_ENDPOINT]})).all()
        chosen, orphans = self._choose(rows, room)
        if orphans:
            await conn.execute(_CANCEL_ORPHANS, {"ids": orphans, "now": now})
        again = len(rows) == limit and bool(chosen or orphans)
        if not chosen:
            return [], again
        token = uuid.uuid4().hex
        claim = {"ids": [row.id for row in chosen], "now": now, "token": token, "until": now + self._lease}
        if conn.dialect.update_returning:
            claimed = (await conn.execute(_CLAIM_RETURNING, claim)).all()
        else:
            await conn.execute(_CLAIM, claim)
            claimed = (await conn.execute(_CLAIMED, claim)).all()
        held = {row.id: row for row in claimed}  # the ones another replica took meanwhile are not ours
        return [_job(row, held[row.id], token) for row in chosen if row.id in held], again

    def _choose(self, rows, room: int) -> tuple[list, list[str]]:
        """The candidates to start, oldest due first, within the limits per endpoint and in all; and the ids of
        the orphans (their subscription is disabled)."""
        taken: dict[str, int] = {}
        chosen, orphans = [], []
        for row in rows:
            if not row.active:
                orphans.append(row.id)
                continue
            endpoint = SMTP_ENDPOINT if row.channel == EMAIL else row.url
            busy = self._in_flight.get(endpoint, 0) + taken.get(endpoint, 0)
            if len(chosen) < room and busy < self._limit(endpoint):
                taken[endpoint] = taken.get(endpoint, 0) + 1
                chosen.append(row)
        return chosen, orphans

    async def claim(self, delivery_id: str, now: datetime) -> str | None:
        """Take the due attempt with a lease; None if another dispatcher holds it or it is not due."""
        token = uuid.uuid4().hex
        async with self._engine.begin() as conn:
            claimed = await conn.execute(_CLAIM, {"ids": [delivery_id], "now": now, "token": token,
                                                  "until": now + self._lease})
        return token if claimed.rowcount == 1 else None

    # --- one attempt -------------------------------------------------------------------------------

    async def _attempt(self, job: Job, endpoint: str) -> None:
        try:
            parent = extract({"traceparent": job.traceparent or "", "tracestate": job.tracestate or ""})
            attributes = {"enlace.service": "notification", "webhook.id": job.delivery_id,
                          "cloudevents.event_type": job.event_type}
            webhook = job.channel == WEBHOOK
            if webhook:  # the span is the POST's client span (cheaper than instrumenting httpx for it)
                attributes.update(_endpoint_attributes(job.target.url))
            with tracer.start_as_current_span(f"{job.channel} deliver", context=parent, attributes=attributes,
                                              kind=trace.SpanKind.CLIENT if webhook else trace.SpanKind.INTERNAL
                                              ) as span:
                result, outcome = await self._send(job)
                if webhook:
                    _http_outcome(span, result)
            if outcome is Outcome.OK:
                self._failing.discard(endpoint)
            else:
                self._failing.add(endpoint)
            self._finished.append(Finished(job.delivery_id, job.token, result, outcome, _now()))
        except Exception:
            log.exception("delivery %s: attempt failed unexpectedly; its lease will expire and it is retried",
                          job.delivery_id)
        finally:
            self._in_flight[endpoint] -= 1
            if not self._in_flight[endpoint]:
                del self._in_flight[endpoint]
            # The next pass records the outcome and fills the slot; attempts that finish meanwhile join it.
            if self._pass_soon is None:
                self._pass_soon = asyncio.get_running_loop().call_later(RECORD_WINDOW_S, self._waker.wake)

    async def _send(self, job: Job) -> tuple[SendResult, Outcome]:
        if job.channel == EMAIL:
            message = json.loads(job.payload)
            result = await send_email(self._settings, message_id=job.delivery_id, to=message["to"],
                                      subject=message["subject"], body=message["body"])
            if result.ok:
                return result, Outcome.OK
            permanent = result.status_code is not None and 500 <= result.status_code < 600
            return result, Outcome.PERMANENT if permanent else Outcome.TRANSIENT
        try:
            secrets = self._secrets.for_signing(job.target, _now())
        except CorruptValue as exc:
            # Never unsigned, never signed with a wrong secret: a failed attempt, retried on the usual
            # schedule (a restored key or a rotation lets the next one through), and the others go on.
            log.error("delivery %s: %s; not sent", job.delivery_id, exc)
            return SendResult(None, 0.0, UNSIGNABLE), Outcome.TRANSIENT
        trace_headers: dict[str, str] = {}
        inject(trace_headers)  # the receiver continues the trace of the event that caused the webhook
        result = await send_signed(self._client, url=job.target.url, secret=secrets, message_id=job.delivery_id,
                                   payload=job.payload, total_timeout_s=self._settings.webhook_timeout_s,
                                   trace_headers=trace_headers)
        return result, outcome_of_http(result.status_code)

    # --- recording outcomes ------------------------------------------------------------------------

    async def record(self, delivery_id: str, token: str, result: SendResult, outcome: Outcome) -> None:
        """Log one attempt; apply the decision only while still holding the lease ``token``."""
        await self.record_all([Finished(delivery_id, token, result, outcome, _now())])

    async def record_all(self, finished: list[Finished]) -> None:
        """Log the attempts, in order, in a transaction of their own (a dispatch pass records in its own)."""
        async with self._engine.begin() as conn:
            await self._record(conn, finished)

    async def _record(self, conn: AsyncConnection, finished: list[Finished]) -> None:
        """Log the attempts and apply each decision whose lease is still held."""
        ids = list(dict.fromkeys(f.delivery_id for f in finished))
        rows = (await conn.execute(_TO_RECORD, {"ids": ids})).all()
        state = {row.id: row._asdict() for row in rows}
        active = {row.subscription_id: row.active for row in rows}
        reasons = {row.subscription_id: row.disabled_reason for row in rows}
        attempt_rows, held, to_disable = [], {}, []
        for f in finished:
            delivery = state.get(f.delivery_id)
            if delivery is None:
                log.error("delivery %s: gone before its attempt was recorded", f.delivery_id)
                continue
            delivery["attempts"] += 1
            attempt_rows.append({"id": str(uuid.uuid4()), "delivery_id": f.delivery_id,
                                 "number": delivery["attempts"], "attempted_at": f.at,
                                 "status_code": f.result.status_code, "latency_ms": round(f.result.latency_ms, 1),
                                 "error": f.result.error})
            if delivery["lease_token"] != f.token:
                continue  # our lease ran out and the attempt was taken over (or cancelled): decide nothing
            held[f.delivery_id] = self._decide(delivery, f, active, reasons, to_disable)
            delivery["lease_token"] = None
        if not attempt_rows:
            return
        await conn.execute(_LOG_ATTEMPTS, attempt_rows)
        if held:
            await conn.execute(_RECORD_HELD, [{**params, "b_attempts": state[i]["attempts"]}
                                              for i, params in held.items()])
        lost = [{"b_id": i, "b_attempts": state[i]["attempts"]} for i in state if i not in held]
        if lost:
            await conn.execute(_RECORD_LOST, lost)
        for subscription_id in to_disable:  # after the updates above: their own rows are no longer waiting
            now = _now()
            if (await conn.execute(disable_if_active(subscription_id, "gone", now))).rowcount:
                log.warning("subscription %s answered 410 Gone: disabled", subscription_id)
                await conn.execute(cancel_waiting(subscription_id, "gone", now))

    def _decide(self, delivery: dict, f: Finished, active: dict[str, bool], reasons: dict[str, str | None],
                to_disable: list[str]) -> dict:
        """What an attempt whose lease is still held changes in its delivery, as _RECORD_HELD's parameters.
        Updates ``delivery``, ``active``, ``reasons`` and ``to_disable`` as the decision goes."""
        delivery["cycle_attempts"] += 1
        decision = decide(f.outcome, attempts=delivery["cycle_attempts"],
                          started_at=as_utc(delivery["cycle_started_at"]), now=f.at, policy=self._policy,
                          retry_after_s=f.result.retry_after_s)
        params = {"b_id": f.delivery_id, "b_token": f.token, "b_cycle_attempts": delivery["cycle_attempts"],
                  "b_status": decision.status, "b_status_code": f.result.status_code, "b_error": f.result.error,
                  "b_next": None, "b_delivered": None}
        subscription_id = delivery["subscription_id"]
        if decision.status == DELIVERED:
            params["b_delivered"] = f.at
        elif decision.status == PENDING:
            params["b_next"] = decision.next_attempt_at
            if not active[subscription_id]:
                params["b_status"] = CANCELLED
                params["b_error"] = f"subscription disabled: {reasons[subscription_id]}"
            elif self._next_due is None or decision.next_attempt_at < self._next_due:
                self._next_due = decision.next_attempt_at  # the loop sleeps until then at most
        elif decision.status == DEAD:
            log.warning("delivery %s (%s) is dead after %d attempts: %s", f.delivery_id, delivery["channel"],
                        delivery["cycle_attempts"], f.result.error or f.result.status_code)
        if decision.disable_subscription and active[subscription_id]:
            params["b_error"] = "410 Gone: the subscription was disabled"
            active[subscription_id], reasons[subscription_id] = False, "gone"
            to_disable.append(subscription_id)
        return params


def _job(candidate, claimed, token: str) -> Job:
    target = Target(candidate.subscription_id, candidate.url, candidate.secret, candidate.previous_secret,
                    candidate.previous_secret_expires_at)
    return Job(candidate.id, candidate.channel, claimed.event_type, claimed.payload, claimed.traceparent,
               claimed.tracestate, target, token)
