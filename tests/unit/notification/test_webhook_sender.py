"""send_signed against a real loopback receiver that verifies with the Standard Webhooks reference library."""

import asyncio
import base64
import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
import pytest_asyncio
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notification.adapters.webhook_sender import NO_ANSWER, SendResult, send_signed

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
PAYLOAD = json.dumps({"type": "org.enlace.referral.requested.v1", "timestamp": "2024-05-17T08:30:15+00:00",
                      "data": {"referral_id": "ref-1", "case_id": "case-1", "status": "requested",
                               "need_code": "UNACCOMPANIED_CHILD", "note": "Tapachula – oficina López",
                               "links": {"referral": "https://referral.example/referrals/ref-1"}}},
                     ensure_ascii=False)


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    verified: bool
    parsed: object = None
    error: str | None = None


@dataclass
class Receiver:
    base_url: str = ""
    received: list[Received] = field(default_factory=list)

    def last(self) -> Received:
        assert self.received, "the receiver got nothing"
        return self.received[-1]


def _receiver_app(receiver: Receiver) -> Starlette:
    async def hook(request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        secret = OTHER_SECRET if request.path_params["name"] == "other-secret" else SECRET
        try:
            parsed = Webhook(secret).verify(body, headers)
        except WebhookVerificationError as exc:
            receiver.received.append(Received(body, headers, False, error=str(exc)))
            return Response(status_code=400)
        receiver.received.append(Received(body, headers, True, parsed))
        reply = int(request.query_params.get("reply", "204"))
        if "slow" in request.query_params:
            await asyncio.sleep(float(request.query_params["slow"]))
        headers = {"retry-after": request.query_params["retry_after"]} if "retry_after" in request.query_params else {}
        return Response(status_code=reply, headers=headers)

    return Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])])


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # leave the test runner's signal handlers alone
        yield


@pytest_asyncio.fixture(scope="module")
async def receiver():
    state = Receiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_receiver_app(state), log_level="warning", lifespan="off", access_log=False,
                            timeout_graceful_shutdown=2)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the loopback receiver did not start"
    state.base_url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


@pytest_asyncio.fixture
async def client():
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


async def test_signed_webhook_verifies_with_the_reference_library(receiver, client):
    now = datetime.now(UTC)
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main", secret=SECRET,
                               message_id="msg_2b1c", payload=PAYLOAD, now=now)

    got = receiver.last()
    assert got.verified, got.error
    assert got.parsed == json.loads(PAYLOAD)
    assert got.body == PAYLOAD.encode()
    assert got.headers["webhook-id"] == "msg_2b1c"
    assert got.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert got.headers["webhook-signature"].startswith("v1,")
    assert got.headers["content-type"] == "application/json"

    assert isinstance(result, SendResult)
    assert result.status_code == 204
    assert result.ok
    assert result.error is None
    assert result.latency_ms >= 0


async def test_default_now_is_current_time(receiver, client):
    before = datetime.now(UTC)
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main", secret=SECRET,
                               message_id="msg_now", payload=PAYLOAD)
    assert result.ok
    sent = int(receiver.last().headers["webhook-timestamp"])
    assert int(before.timestamp()) - 1 <= sent <= int(datetime.now(UTC).timestamp()) + 1


class _TamperingTransport(httpx.AsyncBaseTransport):
    """Changes the body on the wire after send_signed has signed it."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        tampered = body.replace(b"UNACCOMPANIED_CHILD", b"NO_NEED")
        assert tampered != body
        forged = httpx.Request(request.method, request.url, content=tampered,
                               headers=[(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"])
        return await self._inner.handle_async_request(forged)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_tampered_body_fails_verification(receiver):
    async with httpx.AsyncClient(transport=_TamperingTransport(), timeout=5.0) as tampering:
        result = await send_signed(tampering, url=f"{receiver.base_url}/hooks/main", secret=SECRET,
                                   message_id="msg_tamper", payload=PAYLOAD)
    got = receiver.last()
    assert not got.verified
    assert b"NO_NEED" in got.body
    assert got.headers["webhook-id"] == "msg_tamper"
    assert result.status_code == 400
    assert not result.ok
    assert result.error is None  # an HTTP answer, not a transport error


def test_tampered_body_fails_verification_offline():
    now = datetime.now(UTC)
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign("msg_x", now, PAYLOAD)}
    Webhook(SECRET).verify(PAYLOAD.encode(), headers)  # the untouched body verifies...
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(PAYLOAD.encode() + b" ", headers)  # ...a single extra byte does not


async def test_other_secret_fails_verification(receiver, client):
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/other-secret", secret=SECRET,
                               message_id="msg_wrong", payload=PAYLOAD)
    assert not receiver.last().verified
    assert result.status_code == 400 and not result.ok


async def test_stale_timestamp_is_refused_by_the_receiver(receiver, client):
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main", secret=SECRET,
                               message_id="msg_old", payload=PAYLOAD, now=datetime.now(UTC) - timedelta(minutes=10))
    got = receiver.last()
    assert not got.verified
    assert "old" in got.error
    assert result.status_code == 400


@pytest.mark.parametrize("reply", [200, 202, 299])
async def test_any_2xx_is_ok(receiver, client, reply):
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main?reply={reply}", secret=SECRET,
                               message_id=f"msg_{reply}", payload=PAYLOAD)
    assert result.status_code == reply
    assert result.ok


@pytest.mark.parametrize("reply", [301, 404, 410, 429, 500, 503])
async def test_non_2xx_is_reported_but_not_ok(receiver, client, reply):
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main?reply={reply}", secret=SECRET,
                               message_id=f"msg_{reply}", payload=PAYLOAD)
    assert receiver.last().verified
    assert result.status_code == reply
    assert not result.ok
    assert result.error is None


async def test_connection_refused_gives_no_status_and_an_error(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nobody listens on the port any more.
    result = await send_signed(client, url=f"http://127.0.0.1:{port}/hooks/main", secret=SECRET,
                               message_id="msg_refused", payload=PAYLOAD)
    assert result.status_code is None
    assert not result.ok
    assert result.error == NO_ANSWER and result.cause == "ConnectError"


async def test_timeout_gives_no_status_and_an_error(receiver):
    async with httpx.AsyncClient(timeout=0.1) as impatient:
        result = await send_signed(impatient, url=f"{receiver.base_url}/hooks/main?slow=0.5", secret=SECRET,
                                   message_id="msg_slow", payload=PAYLOAD)
    assert result.status_code is None
    assert not result.ok
    assert result.error == NO_ANSWER and "Timeout" in result.cause


async def test_non_utc_now_still_verifies(receiver, client):
    now = datetime.now(timezone(timedelta(hours=-6)))
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main", secret=SECRET,
                               message_id="msg_tz", payload=PAYLOAD, now=now)
    assert receiver.last().verified, receiver.last().error
    assert result.ok


async def test_during_a_rotation_each_secret_alone_verifies(receiver, client):
    from notification.adapters.webhook_sender import signature_header

    now = datetime.now(UTC)
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main", secret=[OTHER_SECRET, SECRET],
                               message_id="msg_rot", payload=PAYLOAD, now=now)
    got = receiver.last()
    assert got.verified and result.ok  # the receiver knows only SECRET
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    Webhook(OTHER_SECRET).verify(got.body, got.headers)  # and one that knows only the other secret too
    assert got.headers["webhook-signature"] == signature_header([OTHER_SECRET, SECRET], "msg_rot", now, PAYLOAD)
    third = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(third).verify(got.body, got.headers)


async def test_the_total_timeout_bounds_the_whole_exchange(receiver, client):
    # httpx's timeout (5 s here) applies per read; the total bound ends the attempt regardless.
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main?slow=1", secret=SECRET,
                               message_id="msg_total", payload=PAYLOAD, total_timeout_s=0.1)
    assert result.status_code is None and not result.ok
    assert result.error == NO_ANSWER and result.cause == "TimeoutError"


@pytest.mark.parametrize(("reply", "header", "expected"), [
    (429, "30", 30.0), (503, "7", 7.0), (503, "Wed, 21 Oct 2015 07:28:00 GMT", None), (500, "30", None),
    (429, None, None),
])
async def test_retry_after_is_read_from_429_and_503(receiver, client, reply, header, expected):
    query = f"reply={reply}" + (f"&retry_after={header}" if header else "")
    result = await send_signed(client, url=f"{receiver.base_url}/hooks/main?{query}", secret=SECRET,
                               message_id="msg_ra", payload=PAYLOAD)
    assert result.status_code == reply and result.retry_after_s == expected
