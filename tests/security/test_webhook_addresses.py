"""Webhooks reach public addresses only (the development setting adds loopback, never private networks),
checked when the connection is made (the dispatcher end to end: tests/integration/test_notification_delivery.py);
and the delivery log cannot tell an open port from a closed one."""

import asyncio
import contextlib
import socket

import httpx
import pytest

from notification.adapters.webhook_sender import NO_ANSWER, is_public_address, send_signed, webhook_transport
from tests.support.notification_support import SigningReceiver

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PAYLOAD = '{"type": "referral.requested.v1"}'
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


def _client(*, public_only: bool, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                             transport=webhook_transport(limits=LIMITS, allow_loopback=not public_only))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def _listener(on_connect):
    """A loopback TCP server that is not an HTTP server: ``on_connect`` decides what each connection gets."""
    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _reset(reader, writer):
    writer.transport.abort()  # RST, not FIN


async def _silent(reader, writer):
    await asyncio.sleep(30)
    writer.close()


async def _send(client: httpx.AsyncClient, url: str, total_timeout_s: float | None = None):
    return await send_signed(client, url=url, secret=SECRET, message_id="msg_probe", payload=PAYLOAD,
                             total_timeout_s=total_timeout_s)


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1%1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("::", False),
    ("2002:7f00:1::1", False), ("2002:a00:1::1", False), ("192.0.0.8", False),  # 6to4 of loopback / 10.0.0.1
    ("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
])
def test_only_global_addresses_are_public(address, public):
    assert is_public_address(address) is public


async def test_a_name_that_resolves_to_loopback_is_refused_at_connection():
    receiver = SigningReceiver()
    async with receiver.running(), _client(public_only=True) as client:
        for host in ("localhost", "127.1", "2130706433"):  # none is a loopback literal the URL check knows
            result = await _send(client, f"http://{host}:{receiver.port}/hooks")
            assert (result.status_code, result.error) == (None, NO_ANSWER), host
    assert receiver.received == []


async def test_open_and_closed_ports_record_the_same_error():
    receiver = SigningReceiver()
    async with receiver.running(), _client(public_only=True) as client:
        open_port = await _send(client, f"http://127.0.0.1:{receiver.port}/hooks")
        closed_port = await _send(client, f"http://127.0.0.1:{_closed_port()}/hooks")
    assert open_port.error == closed_port.error == NO_ANSWER
    assert receiver.received == []


async def test_with_loopback_allowed_refused_reset_and_silent_ports_record_the_same_error():
    async with _client(public_only=False, timeout=0.3) as client, _listener(_reset) as resetting, \
            _listener(_silent) as silent:
        outcomes = [await _send(client, f"http://127.0.0.1:{port}/hooks", total_timeout_s=1.0)
                    for port in (_closed_port(), resetting, silent)]
    assert [(r.status_code, r.error) for r in outcomes] == [(None, NO_ANSWER)] * 3


async def test_with_loopback_allowed_a_loopback_receiver_gets_its_webhooks():
    receiver = SigningReceiver(secrets={"s": SECRET})
    async with receiver.running(), _client(public_only=False) as client:
        result = await _send(client, f"http://localhost:{receiver.port}/hooks")
    assert result.ok and [r.verified_by for r in receiver.received] == [{"s"}]


@pytest.mark.parametrize("url", ["http://10.0.0.1/hooks", "http://169.254.169.254/latest", "http://[fc00::1]/x",
                                 "http://192.168.1.1:8080/x"])
async def test_the_development_setting_opens_loopback_only_never_a_private_network(url):
    """Refused before any connection is tried: the address is checked, then nothing connects."""
    from urllib.parse import urlsplit

    from notification.adapters.webhook_sender import AddressRefused, PublicAddressesOnly
    from notification.domain.webhooks import webhook_url_problem

    assert webhook_url_problem(url, allow_loopback=True) is not None

    class Recorder:  # the real backend's place: any call would be a connection attempt
        attempts: list = []

        async def connect_tcp(self, *args, **kwargs):
            self.attempts.append(args)
            raise AssertionError("a connection was attempted")

    inner = Recorder()
    parts = urlsplit(url)
    with pytest.raises(AddressRefused):
        await PublicAddressesOnly(inner, allow_loopback=True).connect_tcp(parts.hostname, parts.port or 80, timeout=2)
    assert inner.attempts == []
