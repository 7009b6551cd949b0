"""The address guard for downloads from the open web: public destinations only, checked where connected.

Result URLs come from anyone's web pages, and a Job inside a cluster must not be steered at internal
services through them. Two things make a check of the host name insufficient on its own:

- an address can reach a private network in disguise: an IPv6 form that carries an IPv4 address
  (IPv4-mapped, NAT64, ISATAP, ...) or a tunnel prefix (6to4, Teredo) leads to that IPv4 address;
- a name resolved to check it and resolved again to connect can answer differently the second time
  (DNS rebinding), so the check must vet the very address the socket connects to.

`GuardedNetwork` is an httpcore2 network backend that resolves a name once, refuses it if any answer is
not public (`refusal` says why), and connects to a vetted address itself; `GuardedTransport` puts it
under an httpx2 client. The URL keeps the name, so the Host header, the TLS server name and certificate
check, and the connection pool's keys all stay those of the name. Downloads made this way never go
through an HTTP(S)_PROXY from the environment: a proxy would resolve the name again, out of reach.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import httpcore2
import httpx2

IPAddress = IPv4Address | IPv6Address
Resolve = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""Answers a (host name, port) with its addresses; raises OSError when the name does not resolve."""

_SHARED_ADDRESS_SPACE = IPv4Network("100.64.0.0/10")
"""Carrier-grade NAT (RFC 6598): inside a provider's network, never the public internet. Checked by
itself because `is_private` leaves it out."""
_NAT64 = IPv6Network("64:ff9b::/96")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_TUNNELS: tuple[tuple[IPv6Network, str], ...] = (
    (IPv6Network("64:ff9b:1::/48"), "a NAT64 local-use address (RFC 8215)"),
    (IPv6Network("2002::/16"), "a 6to4 address (RFC 3056), relayed to an IPv4 host"),
    (IPv6Network("2001::/32"), "a Teredo address (RFC 4380), relayed to an IPv4 host"),
)
"""Prefixes refused whole: IANA lists none of them as globally reachable, and older Pythons count the
local-use and 6to4 ones as global. The embedded IPv4 address is named in the reason, for the logs."""


def _translated_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 host that `address` stands for, where the IPv6 form is only a wrapper around it."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    value = int(address)
    if address in _NAT64 or address in _TRANSLATED or (value >> 32 == 0 and value > 1):
        # NAT64 well-known prefix, SIIT-translated, and the deprecated IPv4-compatible ::a.b.c.d
        # (:: and ::1 are not: they are the unspecified and loopback addresses themselves).
        return IPv4Address(value & 0xFFFFFFFF)
    return None


def _isatap_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address in an ISATAP interface identifier (0000:5efe or 0200:5efe): the router of
    the address's prefix tunnels to it."""
    value = int(address)
    return IPv4Address(value & 0xFFFFFFFF) if (value >> 32) & 0xFDFFFFFF == 0x5EFE else None


def _tunnel(address: IPv6Address) -> str | None:
    for network, name in _TUNNELS:
        if address in network:
            if address.sixtofour is not None:
                return f"{name} {address.sixtofour}"
            if address.teredo is not None:
                return f"{name} {address.teredo[1]}"
            return name
    return None


def refusal(address: IPAddress) -> str | None:
    """Why a download must not connect to `address`, or None when it is a public unicast address."""
    if isinstance(address, IPv6Address):
        tunnel = _tunnel(address)
        if tunnel is not None:
            return tunnel
        # A translated form is judged by its IPv4 host alone: the wrapping prefixes sit in ranges
        # Python calls reserved or private (::/8, ::ffff:0:0/96), yet NAT64 is how an IPv6-only
        # cluster reaches IPv4-only hosts. An ISATAP address must pass both ways.
        translated = _translated_ipv4(address)
        if translated is not None:
            inner = refusal(translated)
            return None if inner is None else f"carries {translated}, which is {inner}"
        isatap = _isatap_ipv4(address)
        inner = None if isatap is None else refusal(isatap)
        if inner is not None:
            return f"carries {isatap}, which is {inner}"
        if address.is_site_local:
            return "site-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address in _SHARED_ADDRESS_SPACE:
        return "shared address space (carrier-grade NAT)"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally reachable"
    return None


class BlockedDestination(Exception):
    """A download was refused before connecting: its host is, or resolves to, a non-public address."""

    def __init__(self, host: str, address: IPAddress, reason: str):
        super().__init__(f"{host}: {reason}" if str(address) == host else f"{host} -> {address}: {reason}")


async def resolve_system(host: str, port: int) -> list[IPAddress]:
    """The system resolver's addresses for `host`, in its order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # A link-local answer carries its zone ("fe80::1%eth0"); ipaddress keeps it as the scope id.
    return [ipaddress.ip_address(info[4][0]) for info in infos]


class GuardedNetwork(httpcore2.AsyncNetworkBackend):
    """Opens TCP connections for downloads: resolves once, vets every answer, connects to a vetted one.

    `allow_private` skips the vetting (tests against loopback servers) but still connects to the
    resolved address. `resolve` and `inner` (the backend that opens the socket to an IP address)
    are replaceable so tests can play a DNS server and a remote host.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolve: Resolve = resolve_system,
        inner: httpcore2.AsyncNetworkBackend | None = None,
    ):
        self.allow_private = allow_private
        self._resolve = resolve
        self._inner = inner or httpcore2.AnyIOBackend()

    async def _addresses(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            async with asyncio.timeout(timeout):
                answers = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"resolving {host} took over {timeout} s") from None
        except OSError as error:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {error}") from None
        if not answers:
            raise httpcore2.ConnectError(f"{host} resolves to no address")
        return list(dict.fromkeys(answers))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = await self._addresses(host, port, timeout)
        if not self.allow_private:
            # Every answer, not only the one connected to: a name that mixes public and private
            # answers is steering somewhere, and the next connection might pick the private one.
            for address in addresses:
                reason = refusal(address)
                if reason is not None:
                    raise BlockedDestination(host, address, reason)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_ERRORS: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
)
"""httpcore2's errors as the httpx2 ones callers catch, most specific first."""


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for core, mapped in _ERRORS:
            if isinstance(error, core):
                raise mapped(str(error)) from error
        raise


class _Body(httpx2.AsyncByteStream):
    """A response body from httpcore2's pool, its read errors raised as httpx2's."""

    def __init__(self, stream: Any):
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        await self._stream.aclose()


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport whose connections all go through a `GuardedNetwork` (HTTP/1.1, TLS verified).

    httpx2's own transport cannot be given a network backend, hence this thin one over httpcore2's pool.
    """

    def __init__(self, network: GuardedNetwork, limits: httpx2.Limits, tls: ssl.SSLContext):
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=tls,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=network,
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
