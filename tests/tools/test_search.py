"""Web image search against a local fake service: ranking order, gate, failures, retries, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

import pytest
from dpe.image_quality import GateReason, Thresholds
from dpe.retry import Backoff
from dpe.secrets import secret_env_name
from dpe.spec import SearchTool, SecretKeyRef
from dpe.tools.retry import PermanentToolError, Retrying, ToolUnavailable
from dpe.tools.search import Failure, SearxngSearch, SerperSearch, WebImageSearch, open_search
from dpe.tls import verified_context
from dpe_testkit.pictures import blurred, encode, scene
from dpe_testkit.search_server import SearchServer

API_KEY = "serper-test-key-0123456789"
QUERY = "red circles on a blue field"
CAP = 1_000_000


def _fast() -> Retrying:
    return Retrying(Backoff(max_attempts=3, base_delay=0.01, max_delay=0.02, max_elapsed=5.0))


def _searcher(server: SearchServer, kind: type[WebImageSearch] = SerperSearch, **options: object) -> WebImageSearch:
    settings: dict[str, object] = {
        "api_key": API_KEY,
        "allow_private_hosts": True,
        "api_retry": _fast(),
        "download_retry": _fast(),
        "download_timeout": 0.5,
    }
    settings.update(options)
    return kind(server.url, **settings)  # type: ignore[arg-type]


def _good(server: SearchServer, name: str, seed: int, **behaviour: object) -> tuple[str, str]:
    return server.image(name, encode(scene(seed)), **behaviour), f"title {name}"


@pytest.mark.slow
def test_serper_keeps_the_first_passing_results_in_rank_order(search_server: SearchServer) -> None:
    server = search_server
    server.api_key = API_KEY
    oversized = encode(scene(30, (1400, 1000)))
    assert len(oversized) > 2 * CAP > 2 * len(encode(scene(33)))
    server.answer(
        QUERY,
        (server.image("missing", b"", status=404), "gone"),
        (server.image("slow", encode(scene(31)), delay=3.0), "slow"),
        (server.image("huge", oversized), "declared too large"),
        (server.image("huge-stream", oversized, declare_length=False), "streamed too large"),
        (server.image("blurry", encode(blurred(scene(32)))), "blurry"),
        (server.image("page", b"<html>" * 10_000, content_type="text/html"), "not an image"),
        _good(server, "first", 33),
        _good(server, "second", 34, failures=[429]),
        _good(server, "third", 35, content_type="application/octet-stream"),
        _good(server, "fourth", 36),
    )
    searcher = _searcher(server, thresholds=Thresholds(max_bytes=CAP))
    found = asyncio.run(searcher.search(QUERY, 3))

    assert [c.title for c in found] == ["title first", "title second", "title third"], searcher.stats
    assert [c.location for c in found] == [f"{server.url}/img/{n}" for n in ("first", "second", "third")]
    assert all((c.provider, c.query, c.width, c.height) == ("serper", QUERY, 640, 480) for c in found)
    assert found[0].data == encode(scene(33))
    assert searcher.stats.failures == {
        Failure.http_error: 1,
        Failure.timeout: 1,
        GateReason.too_large: 2,
        GateReason.blurry: 1,
        GateReason.not_an_image: 1,
    }
    assert searcher.stats.as_dict()["accepted"] == 3
    assert server.count("/img/second") == 2
    api = [r for r in server.requests if r.path == "/images"]
    assert len(api) == 1
    assert api[0].headers["x-api-key"] == API_KEY
    assert json.loads(api[0].body) == {"q": QUERY, "num": 10}


def test_searxng_reads_results_and_resolves_relative_sources(search_server: SearchServer) -> None:
    server = search_server
    server.image("pic", encode(scene(40)))
    server.answer(QUERY, ("/img/pic", "relative"), _good(server, "other", 41))
    searcher = _searcher(server, SearxngSearch, api_key=None)
    found = asyncio.run(searcher.search(QUERY, 5))

    assert [c.location for c in found] == [f"{server.url}/img/pic", f"{server.url}/img/other"]
    assert [c.provider for c in found] == ["searxng", "searxng"]
    request = next(r for r in server.requests if r.path == "/search")
    assert request.query == {"q": [QUERY], "categories": ["images"], "format": ["json"]}
    assert "authorization" not in request.headers


def test_rate_limited_api_is_retried(search_server: SearchServer) -> None:
    server = search_server
    server.answer(QUERY, _good(server, "pic", 42))
    server.fail_api(429, 503)
    found = asyncio.run(_searcher(server, SearxngSearch).search(QUERY, 1))
    assert len(found) == 1
    assert server.count("/search") == 3


def test_refused_api_call_fails_at_once_without_the_key_in_the_message(search_server: SearchServer) -> None:
    server = search_server
    server.api_key = "the-right-key"
    with pytest.raises(PermanentToolError) as raised:
        asyncio.run(_searcher(server).search(QUERY, 3))
    assert raised.value.status == 403
    assert API_KEY not in str(raised.value)
    assert server.count("/images") == 1


def test_server_errors_that_persist_exhaust_the_retries(search_server: SearchServer) -> None:
    search_server.fail_api(500, 502, 503, 500)
    with pytest.raises(ToolUnavailable, match="status 503") as raised:
        asyncio.run(_searcher(search_server).search(QUERY, 3))
    assert raised.value.attempts == 3


def test_same_picture_is_never_returned_twice(search_server: SearchServer) -> None:
    server = search_server
    picture = scene(43)
    url, title = _good(server, "pic", 43)
    copy = server.image("copy.jpg", encode(picture, "JPEG", quality=80), content_type="image/jpeg")
    server.answer(QUERY, (url, title), (url, "same url"), (copy, "re-encoded copy"), _good(server, "new", 44))
    searcher = _searcher(server)
    found = asyncio.run(searcher.search(QUERY, 3))
    assert [c.title for c in found] == ["title pic", "title new"]
    assert searcher.stats.failures == {Failure.duplicate: 2}


def test_redirects_are_followed_but_not_forever(search_server: SearchServer) -> None:
    server = search_server
    target, _ = _good(server, "target", 45)
    hop = server.image("hop", b"", redirect_to=target)
    loop_url = f"{server.url}/img/loop"
    server.image("loop", b"", redirect_to=loop_url)
    server.answer(QUERY, (loop_url, "loop"), (hop, "redirected"))
    searcher = _searcher(server)
    found = asyncio.run(searcher.search(QUERY, 3))
    assert [c.title for c in found] == ["redirected"]
    assert searcher.stats.failures == {Failure.http_error: 1}


def test_private_hosts_and_odd_schemes_are_not_fetched(search_server: SearchServer) -> None:
    server = search_server
    server.answer(QUERY, _good(server, "pic", 46), ("ftp://example.org/a.png", "ftp"))
    searcher = _searcher(server, allow_private_hosts=False)
    assert asyncio.run(searcher.search(QUERY, 3)) == []
    assert searcher.stats.failures == {Failure.blocked_host: 1, Failure.invalid_url: 1}
    assert server.count("/img/pic") == 0


def test_no_results_is_an_empty_list(search_server: SearchServer) -> None:
    searcher = _searcher(search_server)
    assert asyncio.run(searcher.search("nothing matches", 3)) == []
    assert searcher.stats.as_dict() == {"queries": 1, "hits": 0, "accepted": 0, "failures": {}}


@pytest.mark.parametrize(("query", "limit"), [("  ", 3), ("cats", 0)])
def test_blank_queries_and_empty_limits_are_refused(search_server: SearchServer, query: str, limit: int) -> None:
    with pytest.raises(ValueError):
        asyncio.run(_searcher(search_server).search(query, limit))


def test_the_key_never_reaches_the_logs(search_server: SearchServer, caplog: pytest.LogCaptureFixture) -> None:
    server = search_server
    server.answer(QUERY, (server.image("missing", b"", status=404), "gone"), _good(server, "pic", 47))
    with caplog.at_level(logging.DEBUG):
        asyncio.run(_searcher(server).search(QUERY, 3))
        server.api_key = "another-key"
        with pytest.raises(PermanentToolError):
            asyncio.run(_searcher(server).search(QUERY, 3))
    assert caplog.records
    assert API_KEY not in caplog.text


def test_searches_on_one_event_loop_share_kept_alive_connections(search_server: SearchServer) -> None:
    server = search_server
    server.answer(QUERY, _good(server, "pic", 48))
    searcher = _searcher(server)

    async def twice() -> list[int]:
        sizes = [len(await searcher.search(QUERY, 1)) for _ in range(2)]
        await searcher.aclose()
        return sizes

    assert asyncio.run(twice()) == [1, 1]
    api_ports = {r.client_port for r in server.requests if r.path == "/images"}
    assert len(api_ports) == 1, "the second search reused the first one's connection to the API"


def test_searchers_use_the_process_tls_context(search_server: SearchServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API and download clients take the one context built per process: loading the CA
    certificates again per searcher, at its first search, would stall the event loop."""
    server = search_server
    server.answer(QUERY, _good(server, "pic", 50))
    verified_context()
    loads: list[object] = []
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda *args, **kwargs: loads.append(args))
    for _ in range(2):
        assert len(asyncio.run(_searcher(server).search(QUERY, 1))) == 1
    assert loads == []


def test_a_searcher_serves_successive_event_loops(search_server: SearchServer) -> None:
    server = search_server
    server.answer(QUERY, _good(server, "pic", 49))
    searcher = _searcher(server)
    assert len(asyncio.run(searcher.search(QUERY, 1))) == 1
    assert len(asyncio.run(searcher.search(QUERY, 1))) == 1


def test_open_search_builds_providers_from_the_spec(search_server: SearchServer) -> None:
    ref = SecretKeyRef(name="serper", key="apiKey")
    tool = SearchTool.model_validate({"provider": "serper", "baseUrl": search_server.url, "apiKeySecret": ref})
    searcher = open_search(tool, env={secret_env_name(ref): API_KEY})
    assert isinstance(searcher, SerperSearch)
    assert API_KEY not in repr(searcher)
    searxng = open_search(SearchTool.model_validate({"provider": "searxng", "baseUrl": search_server.url}), env={})
    assert isinstance(searxng, SearxngSearch)
    with pytest.raises(ValueError, match="imagePool"):
        open_search(SearchTool(), env={})
