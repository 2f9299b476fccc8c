"""Sends one signed webhook (Standard Webhooks) over HTTP."""

import asyncio
import ipaddress
import socket
import time
import typing
from dataclasses import dataclass
from datetime import UTC, datetime

import httpcore
import httpx
from httpcore import AsyncNetworkBackend, AsyncNetworkStream
from standardwebhooks.webhooks import Webhook

# What the delivery log records for any attempt that got no HTTP answer: refused, reset, timed out, or refused
# by the address check alike, so that the log cannot tell an open port from a closed one (no port scanning).
NO_ANSWER = "no HTTP answer: could not connect to the endpoint, or the connection failed"


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after_s: float | None = None  # the receiver's Retry-After (429/503), in seconds
    cause: str | None = None  # the exception's name, for the operator's trace only; never recorded

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
    except (TimeoutError, httpx.HTTPError) as exc:
        return SendResult(None, (time.perf_counter() - started) * 1000, NO_ANSWER, cause=type(exc).__name__)


# --- the address check, made when the connection is -----------------------------------------------------

class AddressRefused(httpcore.ConnectError):
    """The endpoint's name resolved to an address webhooks may not reach."""


_IETF_PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")  # not all of it is flagged private


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4 or Teredo client), which is where it really goes."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo is not None else None


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is no part of the address
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        ip = inner
    if ip in _IETF_PROTOCOL_ASSIGNMENTS:
        return False
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def is_loopback_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        ip = inner
    return ip.is_loopback


class PublicAddressesOnly(AsyncNetworkBackend):
    """Resolves each host itself, refuses the connection unless every address it resolves to is public, then
    connects to the address it checked: a name cannot resolve to one address for the check and another for the
    connection (DNS rebinding). TLS still names the origin host, which httpcore hands to start_tls apart."""

    def __init__(self, inner: AsyncNetworkBackend | None = None, *, allow_loopback: bool = False) -> None:
        self._inner = inner or httpcore.AnyIOBackend()
        self._allow_loopback = allow_loopback  # development only; private networks are never reachable

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None) -> AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        addresses = [info[4][0] for info in found]
        if not addresses or not all(is_public_address(a) or (self._allow_loopback and is_loopback_address(a))
                                    for a in addresses):
            raise AddressRefused("the endpoint does not resolve to public addresses only")
        return await self._inner.connect_tcp(addresses[0], port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None) -> AsyncNetworkStream:
        raise AddressRefused("webhooks go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def webhook_transport(*, limits: httpx.Limits, allow_loopback: bool) -> httpx.AsyncHTTPTransport:
    """The dispatcher's transport: public addresses only, plus loopback when ``allow_loopback`` (development);
    private, link-local and reserved networks never."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx 0.28 takes no network backend, so the pool it built is given one (its settings kept).
    transport._pool._network_backend = PublicAddressesOnly(transport._pool._network_backend,
                                                           allow_loopback=allow_loopback)
    return transport
