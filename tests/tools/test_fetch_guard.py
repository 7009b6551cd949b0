"""The download address guard: every disguise of a non-public address, one resolution per connection,
the connection made to the vetted address, and redirects through the same guard."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore2
import pytest
from dpe.retry import Backoff
from dpe.tools.fetch_guard import GuardedNetwork, IPAddress, refusal
from dpe.tools.retry import Retrying
from dpe.tools.search import Failure, SerperSearch
from dpe_testkit.pictures import encode, scene
from dpe_testkit.search_server import SearchServer

QUERY = "a lighthouse at dusk"
PUBLIC = "93.184.215.14"
"""A public address the tests pretend image hosts have; nothing ever connects to it."""


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("::ffff:127.0.0.1", "carries 127.0.0.1, which is loopback"),
        ("::ffff:10.0.0.1", "carries 10.0.0.1, which is private"),
        ("::ffff:0:169.254.169.254", "carries 169.254.169.254, which is link-local"),
        ("::127.0.0.1", "carries 127.0.0.1, which is loopback"),
        ("64:ff9b::127.0.0.1", "carries 127.0.0.1, which is loopback"),
        ("64:ff9b::10.0.0.1", "carries 10.0.0.1, which is private"),
        ("64:ff9b::100.64.0.1", "carries 100.64.0.1, which is shared address space"),
        ("64:ff9b:1::a00:1", "NAT64 local-use"),
        ("2002:7f00:1::1", "6to4 address (RFC 3056), relayed to an IPv4 host 127.0.0.1"),
        ("2002:a00:1::", "6to4 address (RFC 3056), relayed to an IPv4 host 10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo address (RFC 4380), relayed to an IPv4 host 127.0.0.1"),
        ("2600:1f18::5efe:10.0.0.1", "carries 10.0.0.1, which is private"),
        ("2600:1f18::200:5efe:127.0.0.1", "carries 127.0.0.1, which is loopback"),
        ("fd00::5efe:8.8.8.8", "private"),
        ("ff02::5efe:8.8.8.8", "multicast"),
        ("2001:db8::1", "private"),
    ],
)
def test_non_public_addresses_are_refused_in_every_form(address: str, reason: str) -> None:
    found = refusal(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "address",
    [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::93.184.215.14", "2600:1f18::5efe:8.8.8.8"],
)
def test_public_addresses_pass_including_nat64_of_a_public_host(address: str) -> None:
    """An IPv6-only cluster reaches IPv4-only image hosts through NAT64: those must keep working."""
    assert refusal(ipaddress.ip_address(address)) is None


class FakeDns:
    """Answers names from a table of successive answers (the last one repeats), counting lookups."""

    def __init__(self, table: dict[str, list[list[str]]]):
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        answers = self.table[host]
        current = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ipaddress.ip_address(a) for a in current]


class StandIn(httpcore2.AsyncNetworkBackend):
    """Plays every remote host: records the address a connection was asked for, and opens it to the
    local server instead."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._real = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.asked.append(host)
        return await self._real.connect_tcp("127.0.0.1", port, timeout=timeout)


def _searcher(server: SearchServer, network: GuardedNetwork | None = None) -> SerperSearch:
    fast = Backoff(max_attempts=2, base_delay=0.01, max_delay=0.02, max_elapsed=5.0)
    return SerperSearch(
        server.url, network=network, api_retry=Retrying(fast), download_retry=Retrying(fast), download_timeout=2.0
    )


def _port(server: SearchServer) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


def test_dns_rebinding_cannot_redirect_the_connection(search_server: SearchServer) -> None:
    """The name answers public, then private: one lookup is made, and the socket goes to its answer."""
    server = search_server
    server.image("pic", encode(scene(60)))
    server.answer(QUERY, (f"http://images.example:{_port(server)}/img/pic", "rebinding"))
    dns = FakeDns({"images.example": [[PUBLIC], ["127.0.0.1"]]})
    stand_in = StandIn()
    searcher = _searcher(server, GuardedNetwork(resolve=dns, inner=stand_in))

    found = asyncio.run(searcher.search(QUERY, 1))

    assert [c.title for c in found] == ["rebinding"], searcher.stats
    assert dns.lookups == ["images.example"]
    assert stand_in.asked == [PUBLIC]
    (request,) = [r for r in server.requests if r.path == "/img/pic"]
    assert request.headers["host"] == f"images.example:{_port(server)}"


@pytest.mark.parametrize("answer", [["10.0.0.7"], [PUBLIC, "127.0.0.1"], ["64:ff9b::a9fe:a9fe"]])
def test_names_resolving_to_any_private_address_are_never_connected(search_server: SearchServer, answer: list[str]) -> None:
    server = search_server
    server.image("pic", encode(scene(61)))
    server.answer(QUERY, (f"http://images.example:{_port(server)}/img/pic", "private"))
    stand_in = StandIn()
    searcher = _searcher(server, GuardedNetwork(resolve=FakeDns({"images.example": [answer]}), inner=stand_in))
    assert asyncio.run(searcher.search(QUERY, 1)) == []
    assert searcher.stats.failures == {Failure.blocked_host: 1}
    assert stand_in.asked == [] and server.count("/img/pic") == 0


def test_redirects_to_private_addresses_are_refused(search_server: SearchServer) -> None:
    server = search_server
    port = _port(server)
    server.image("target", encode(scene(62)))
    server.image("to-name", b"", redirect_to=f"http://internal.example:{port}/img/target")
    server.image("to-literal", b"", redirect_to=f"http://127.0.0.1:{port}/img/target")
    server.image("to-nat64", b"", redirect_to=f"http://[64:ff9b::7f00:1]:{port}/img/target")
    server.answer(QUERY, *[(f"http://images.example:{port}/img/{n}", n) for n in ("to-name", "to-literal", "to-nat64")])
    dns = FakeDns({"images.example": [[PUBLIC]], "internal.example": [["10.0.0.8"]]})
    stand_in = StandIn()
    searcher = _searcher(server, GuardedNetwork(resolve=dns, inner=stand_in))

    assert asyncio.run(searcher.search(QUERY, 3)) == []

    assert searcher.stats.failures == {Failure.blocked_host: 3}
    assert server.count("/img/target") == 0
    assert set(stand_in.asked) == {PUBLIC}


def test_names_that_do_not_resolve_are_a_failed_download(search_server: SearchServer) -> None:
    async def nothing(host: str, port: int) -> list[IPAddress]:
        raise OSError(f"no such host {host}")

    server = search_server
    server.answer(QUERY, (f"http://nowhere.example:{_port(server)}/img/pic", "unresolvable"))
    searcher = _searcher(server, GuardedNetwork(resolve=nothing, inner=StandIn()))
    assert asyncio.run(searcher.search(QUERY, 1)) == []
    assert searcher.stats.failures == {Failure.http_error: 1}


def test_private_hosts_may_be_allowed_through_the_network_only() -> None:
    with pytest.raises(ValueError, match="through the network"):
        SerperSearch("http://127.0.0.1:1", network=GuardedNetwork(), allow_private_hosts=True)


def test_addresses_written_into_urls_are_vetted_in_every_form(search_server: SearchServer) -> None:
    """The default guard, no fake DNS: disguised loopback and multicast literals are refused unconnected."""
    server = search_server
    port = _port(server)
    hosts = ["[64:ff9b::7f00:1]", "[2002:7f00:1::1]", "[::ffff:127.0.0.1]", "224.0.0.1", "100.64.0.1", "2130706433"]
    server.answer(QUERY, *[(f"http://{host}:{port}/img/pic", host) for host in hosts])
    searcher = _searcher(server)
    assert asyncio.run(searcher.search(QUERY, 3)) == []
    assert searcher.stats.failures == {Failure.blocked_host: len(hosts)}
