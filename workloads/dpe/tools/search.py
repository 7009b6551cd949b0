"""Image search for the agents: one interface over web search APIs and the indexed image pool.

`ImageSearch.search(query, limit)` returns up to `limit` candidates that passed the quality gate,
in the provider's ranking order, never the same picture twice. Web providers (`SerperSearch`,
`SearxngSearch`) ask the API for result URLs, then download them concurrently:

- each download has its own deadline and is streamed with a byte cap, so one slow or huge file
  neither stalls nor floods the batch;
- a response must look like an image (content type) before any bytes are kept;
- only public addresses are connected to, on every redirect hop, since result URLs come from the
  open web and a Job inside a cluster must not be steered at internal services: each name is
  resolved once and the connection goes to the address that was vetted (`dpe.tools.fetch_guard`),
  never through the environment's HTTP(S)_PROXY, which would resolve the name again;
- 429 and 5xx are retried with backoff (API calls and downloads alike), other 4xx are not;
- downloads stop as soon as the first `limit` results in ranking order have passed the gate.

Every refusal is counted by reason in `stats`, for the generation stage's metrics. API keys are
passed in by the caller (`open_search` reads them from the spec's secret references), sent only in
request headers, and scrubbed from any error text that reaches a message.
"""

from __future__ import annotations

import asyncio
import logging
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import httpx2

from dpe import __version__
from dpe.pool import POOL_THRESHOLDS, ImageFiles, PoolIndex, load_index, open_images
from dpe.retry import Backoff, is_transient_status
from dpe.secrets import redact, resolve_secret
from dpe.spec import SearchTool, Storage
from dpe.store import ArtifactStore, StoreError
from dpe.tls import verified_context
from dpe.cpu_work import run_ranked
from dpe.image_quality import DEFAULT_THRESHOLDS, DUPLICATE_DISTANCE, GateReason, Thresholds, gate_and_hash, hamming
from dpe.tools.fetch_guard import BlockedDestination, GuardedNetwork, GuardedTransport
from dpe.tools.retry import PermanentToolError, Retrying, ToolError, ToolUnavailable, Transient

log = logging.getLogger(__name__)

HITS_PER_QUERY = 10
"""Result URLs asked of a web provider per query (one page of Serper results)."""
DOWNLOAD_TIMEOUT = 10.0
"""Seconds one download attempt may take from request to last byte."""
API_TIMEOUT = 30.0
"""Seconds one search API call may take."""
MAX_CONCURRENT_DOWNLOADS = 8
"""Downloads in flight at once within one search."""
MAX_REDIRECTS = 3
HTTP_LIMITS = httpx2.Limits(max_connections=None, max_keepalive_connections=64)
"""The shared client's pool: no cap on connections (each search caps its own downloads, and a
total cap would make concurrent samples queue behind each other), and enough kept alive for the
API and the busiest image hosts to be reused across searches."""
STREAM_CHUNK = 64 * 1024
USER_AGENT = f"dpe/{__version__} (image search for dataset generation)"
ERROR_TEXT_LIMIT = 200
"""Characters of a provider's error body quoted in an exception message."""
NON_IMAGE_TYPES_ALLOWED = frozenset({"application/octet-stream", "binary/octet-stream"})
"""Generic types some image hosts send; such bodies are judged by decoding them instead."""

API_RETRY = Backoff(max_attempts=5, base_delay=0.5, max_delay=8.0, max_elapsed=60.0)
DOWNLOAD_RETRY = Backoff(max_attempts=3, base_delay=0.5, max_delay=2.0, max_elapsed=10.0)


class Failure(StrEnum):
    """Why a result was dropped other than by the gate; gate refusals count under `GateReason`'s names."""

    http_error = "http_error"
    timeout = "timeout"
    invalid_url = "invalid_url"
    blocked_host = "blocked_host"
    duplicate = "duplicate"
    unreadable = "unreadable"


@dataclass(frozen=True)
class Candidate:
    """An image that passed the gate, with where it came from."""

    location: str
    """The URL it was downloaded from, or the pool image's path or store URI."""
    data: bytes = field(repr=False)
    """The bytes as received, unchanged."""
    width: int
    height: int
    provider: str
    query: str
    title: str
    """The result's title, or the pool image's caption."""
    phash: int
    """Perceptual hash, for deduplication against other rounds and evaluation sets."""
    sharpness: float

    def provenance(self) -> dict[str, Any]:
        """Everything but the bytes, for a sample's provenance."""
        return {
            "location": self.location,
            "provider": self.provider,
            "query": self.query,
            "title": self.title,
            "width": self.width,
            "height": self.height,
            "phash": f"{self.phash:016x}",
        }


@dataclass
class SearchStats:
    """Counts over the searches made with one searcher."""

    queries: int = 0
    hits: int = 0
    accepted: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for stage results and metrics."""
        return {
            "queries": self.queries,
            "hits": self.hits,
            "accepted": self.accepted,
            "failures": dict(sorted(self.failures.items())),
        }


def _check_request(query: str, limit: int) -> str:
    text = query.strip()
    if not text:
        raise ValueError("a search query must not be blank")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return text


class ImageSearch(ABC):
    """Finds images for a text query."""

    provider: ClassVar[str]

    def __init__(self, *, duplicate_distance: int = DUPLICATE_DISTANCE):
        self.stats = SearchStats()
        self.duplicate_distance = duplicate_distance

    async def aclose(self) -> None:
        """Releases what the searcher holds open (connections); it may be used again after."""

    @abstractmethod
    async def search(self, query: str, limit: int) -> list[Candidate]:
        """Up to `limit` gated candidates for `query`, best ranked first.

        Raises ValueError for a blank query or a limit below 1, and ToolError when the provider
        itself fails for good; results that cannot be fetched or fail the gate are only counted.
        """

    def _is_duplicate(self, value: int, accepted: list[Candidate]) -> bool:
        if any(hamming(value, other.phash) <= self.duplicate_distance for other in accepted):
            self.stats.failures[Failure.duplicate] += 1
            return True
        return False


@dataclass(frozen=True)
class Hit:
    """One result of a web search API, before download."""

    url: str
    title: str


@dataclass(frozen=True)
class ApiRequest:
    """The HTTP request a web provider makes for one query."""

    method: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class DownloadFailed(Exception):
    """One result could not be fetched; `reason` is its failure counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class WebImageSearch(ImageSearch):
    """Shared machinery of the web providers: query the API, then download and gate the results."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        hits_per_query: int = HITS_PER_QUERY,
        download_timeout: float = DOWNLOAD_TIMEOUT,
        api_timeout: float = API_TIMEOUT,
        max_concurrent_downloads: int = MAX_CONCURRENT_DOWNLOADS,
        api_retry: Retrying | None = None,
        download_retry: Retrying | None = None,
        allow_private_hosts: bool = False,
        network: GuardedNetwork | None = None,
        duplicate_distance: int = DUPLICATE_DISTANCE,
    ):
        """`allow_private_hosts` lets downloads reach loopback and private addresses (tests only);
        `network` replaces how downloads resolve names and connect (tests play DNS with it), and
        carries its own `allow_private`.
        """
        super().__init__(duplicate_distance=duplicate_distance)
        if hits_per_query < 1 or max_concurrent_downloads < 1:
            raise ValueError("hits_per_query and max_concurrent_downloads must be at least 1")
        if network is not None and allow_private_hosts:
            raise ValueError("give allow_private_hosts through the network, not beside it")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.thresholds = thresholds
        self.hits_per_query = hits_per_query
        self.download_timeout = download_timeout
        self.api_timeout = api_timeout
        self.max_concurrent_downloads = max_concurrent_downloads
        self._api_retry = api_retry or Retrying(API_RETRY)
        self._download_retry = download_retry or Retrying(DOWNLOAD_RETRY)
        self._network = network or GuardedNetwork(allow_private=allow_private_hosts)
        self._tls = verified_context()  # built here, once per process, not on the event loop
        self._clients: tuple[httpx2.AsyncClient, httpx2.AsyncClient] | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    @abstractmethod
    def _request(self, query: str) -> ApiRequest:
        """The API request for `query`."""

    @abstractmethod
    def _hits(self, body: Any) -> list[Hit]:
        """Result URLs and titles from the API's parsed JSON body, in ranking order."""

    def _http(self) -> tuple[httpx2.AsyncClient, httpx2.AsyncClient]:
        """The API and the download clients of the running event loop, shared by every search on it.

        A client per search would open fresh connections to the API for every query; both clients
        verify with the process's one TLS context (`dpe.tls`). The API is the
        configured service (in-cluster for SearXNG, maybe behind the environment's proxy), so only
        downloads go through the address guard.
        """
        loop = asyncio.get_running_loop()
        if self._clients is None or self._client_loop is not loop:
            settings: dict[str, Any] = {
                "headers": {"User-Agent": USER_AGENT},
                "follow_redirects": False,
                "timeout": self.download_timeout,
                "verify": self._tls,
            }
            self._clients = (
                httpx2.AsyncClient(limits=HTTP_LIMITS, **settings),
                httpx2.AsyncClient(transport=GuardedTransport(self._network, HTTP_LIMITS, self._tls), **settings),
            )
            self._client_loop = loop
        return self._clients

    async def aclose(self) -> None:
        """Closes the connections of the current event loop's clients."""
        if self._clients is not None and self._client_loop is asyncio.get_running_loop():
            for client in self._clients:
                await client.aclose()
        self._clients = None
        self._client_loop = None

    async def search(self, query: str, limit: int) -> list[Candidate]:
        text = _check_request(query, limit)
        self.stats.queries += 1
        api, downloads = self._http()
        hits = await self._api_retry.call(
            lambda: self._ask(api, text), subject=f"{self.provider} search at {self.base_url}"
        )
        self.stats.hits += len(hits)
        accepted = await self._download_first(downloads, text, hits, limit)
        self.stats.accepted += len(accepted)
        log.info("%s search %r: %d of %d results kept", self.provider, text, len(accepted), len(hits))
        return accepted

    def _scrub(self, text: str) -> str:
        return redact(text, [self._api_key])[:ERROR_TEXT_LIMIT]

    async def _ask(self, client: httpx2.AsyncClient, query: str) -> list[Hit]:
        request = self._request(query)
        try:
            response = await client.request(
                request.method,
                request.url,
                params=request.params,
                json=request.json,
                headers=request.headers,
                timeout=self.api_timeout,
            )
        except httpx2.TimeoutException:
            raise Transient("timeout") from None
        except httpx2.TransportError as error:
            raise Transient(f"connection failed ({type(error).__name__})") from None
        if is_transient_status(response.status_code):
            raise Transient.of_status(response.status_code, response.headers)
        if response.status_code >= 400:
            raise PermanentToolError(
                f"{self.provider} search at {self.base_url} refused the request: status "
                f"{response.status_code}: {self._scrub(response.text)}",
                status=response.status_code,
            )
        try:
            return self._hits(response.json())
        except (ValueError, TypeError, AttributeError) as error:
            raise ToolError(f"{self.provider} search at {self.base_url} sent an unusable body: {error}") from None

    async def _download_first(
        self, client: httpx2.AsyncClient, query: str, hits: list[Hit], limit: int
    ) -> list[Candidate]:
        """Fetch all hits concurrently; keep the first `limit` in ranking order that pass."""
        unique: list[Hit] = []
        seen_urls: set[str] = set()
        for hit in hits:
            if hit.url in seen_urls:
                self.stats.failures[Failure.duplicate] += 1
                continue
            seen_urls.add(hit.url)
            unique.append(hit)
        slots = asyncio.Semaphore(self.max_concurrent_downloads)
        tasks = [asyncio.create_task(self._fetch(client, slots, hit, query)) for hit in unique]
        accepted: list[Candidate] = []
        try:
            for task in tasks:
                outcome = await task
                if isinstance(outcome, str):
                    self.stats.failures[outcome] += 1
                elif not self._is_duplicate(outcome.phash, accepted):
                    accepted.append(outcome)
                    if len(accepted) == limit:
                        break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return accepted

    async def _fetch(
        self, client: httpx2.AsyncClient, slots: asyncio.Semaphore, hit: Hit, query: str
    ) -> Candidate | str:
        """The gated candidate for one hit, or the name of the reason it was dropped."""
        async with slots:
            try:
                data = await self._download_retry.call(
                    lambda: self._download(client, hit.url), subject=f"download of {hit.url}"
                )
            except DownloadFailed as failure:
                log.debug("dropped %s: %s", hit.url, failure)
                return failure.reason
            except ToolUnavailable as error:
                log.debug("dropped %s: %s", hit.url, error)
                return Failure.http_error
        verdict, image_hash = await run_ranked(gate_and_hash, data, self.thresholds)
        if image_hash is None:
            assert verdict.reason is not None
            log.debug("gate refused %s: %s", hit.url, verdict.detail)
            return verdict.reason
        return Candidate(
            location=hit.url,
            data=data,
            width=verdict.width,
            height=verdict.height,
            provider=self.provider,
            query=query,
            title=hit.title,
            phash=image_hash,
            sharpness=verdict.sharpness,
        )

    async def _download(self, client: httpx2.AsyncClient, url: str) -> bytes:
        """One attempt: follow redirects (each hop through the client's address guard), stream the
        body under the byte cap."""
        try:
            async with asyncio.timeout(self.download_timeout):
                for _ in range(MAX_REDIRECTS + 1):
                    parts = urlsplit(url)
                    if parts.scheme not in ("http", "https") or not parts.hostname:
                        raise DownloadFailed(Failure.invalid_url, url[:ERROR_TEXT_LIMIT])
                    async with client.stream("GET", url) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        return await self._body(response)
                raise DownloadFailed(Failure.http_error, f"more than {MAX_REDIRECTS} redirects")
        except BlockedDestination as refused:
            raise DownloadFailed(Failure.blocked_host, str(refused)) from None
        except TimeoutError:
            raise DownloadFailed(Failure.timeout, f"no complete answer within {self.download_timeout} s") from None
        except httpx2.TimeoutException:
            raise DownloadFailed(Failure.timeout) from None
        except (httpx2.HTTPError, httpx2.InvalidURL) as error:
            raise DownloadFailed(Failure.http_error, type(error).__name__) from None

    async def _body(self, response: httpx2.Response) -> bytes:
        status = response.status_code
        if is_transient_status(status):
            raise Transient.of_status(status, response.headers)
        if status != httpx2.codes.OK:
            raise DownloadFailed(Failure.http_error, f"status {status}")
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type and not content_type.startswith("image/") and content_type not in NON_IMAGE_TYPES_ALLOWED:
            raise DownloadFailed(GateReason.not_an_image, f"content type {content_type}")
        cap = self.thresholds.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise DownloadFailed(GateReason.too_large, f"declares {declared} bytes")
        received = bytearray()
        async for chunk in response.aiter_bytes(STREAM_CHUNK):
            received += chunk
            if len(received) > cap:
                raise DownloadFailed(GateReason.too_large, f"more than {cap} bytes")
        return bytes(received)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class SerperSearch(WebImageSearch):
    """A Serper-compatible image API: POST {base}/images with {"q", "num"} and an X-API-KEY header."""

    provider = "serper"

    def _request(self, query: str) -> ApiRequest:
        headers = {} if self._api_key is None else {"X-API-KEY": self._api_key}
        return ApiRequest(
            "POST", f"{self.base_url}/images", json={"q": query, "num": self.hits_per_query}, headers=headers
        )

    def _hits(self, body: Any) -> list[Hit]:
        images = body.get("images", [])
        if not isinstance(images, list):
            raise ValueError("'images' is not a list")
        hits = [
            Hit(item["imageUrl"], _text(item.get("title")))
            for item in images
            if isinstance(item, dict) and _text(item.get("imageUrl"))
        ]
        return hits[: self.hits_per_query]


class SearxngSearch(WebImageSearch):
    """A SearXNG instance's JSON API: GET {base}/search?q=...&categories=images&format=json.

    SearXNG itself has no keys; a key, when given, is sent as a bearer token for the proxy in front.
    """

    provider = "searxng"

    def _request(self, query: str) -> ApiRequest:
        headers = {} if self._api_key is None else {"Authorization": f"Bearer {self._api_key}"}
        params = {"q": query, "categories": "images", "format": "json"}
        return ApiRequest("GET", f"{self.base_url}/search", params=params, headers=headers)

    def _hits(self, body: Any) -> list[Hit]:
        results = body.get("results", [])
        if not isinstance(results, list):
            raise ValueError("'results' is not a list")
        hits = []
        for item in results:
            source = _text(item.get("img_src")) if isinstance(item, dict) else ""
            if source:
                hits.append(Hit(urljoin(self.base_url + "/", source), _text(item.get("title"))))
        return hits[: self.hits_per_query]


class PoolSearch(ImageSearch):
    """The indexed unlabeled image pool, ranked by BM25 over captions and file-name tokens.

    The index is loaded once; a search reads only the images it returns. Pool images were chosen by
    a person, so the gate is relaxed by default (`POOL_THRESHOLDS`) and refuses only broken or tiny
    ones. Entries the index marks as near-copies of earlier ones are never returned.
    """

    provider = "pool"

    def __init__(
        self,
        index: PoolIndex,
        images: ImageFiles,
        *,
        thresholds: Thresholds = POOL_THRESHOLDS,
        duplicate_distance: int = DUPLICATE_DISTANCE,
    ):
        super().__init__(duplicate_distance=duplicate_distance)
        self.index = index
        self.images = images
        self.thresholds = thresholds

    @classmethod
    def open(
        cls,
        ref: str,
        *,
        storage: Storage | None = None,
        store: ArtifactStore | None = None,
        thresholds: Thresholds = POOL_THRESHOLDS,
    ) -> PoolSearch:
        """The pool whose index `dpe pool index` wrote at `ref` (a file, or the folder holding it)."""
        index = load_index(ref, storage=storage, store=store)
        return cls(index, open_images(index.location, storage=storage, store=store), thresholds=thresholds)

    def _precheck(self, width: int, height: int, size: int, sharpness: float) -> str | None:
        """Refuse from the index's own measurements, before reading any bytes."""
        limits = self.thresholds
        if size < limits.min_bytes or max(width, height) < limits.min_side:
            return GateReason.too_small
        if size > limits.max_bytes:
            return GateReason.too_large
        if sharpness < limits.min_sharpness:
            return GateReason.blurry
        return None

    async def search(self, query: str, limit: int) -> list[Candidate]:
        text = _check_request(query, limit)
        self.stats.queries += 1
        ranked = self.index.rank(text)
        self.stats.hits += len(ranked)
        accepted: list[Candidate] = []
        for entry in ranked:
            if entry.duplicate_of is not None:
                continue
            reason = self._precheck(entry.width, entry.height, entry.size, entry.sharpness)
            if reason is not None:
                self.stats.failures[reason] += 1
                continue
            try:
                data = await asyncio.to_thread(self.images.read, entry.path)
            except (OSError, StoreError) as error:
                log.warning("pool image %s is unreadable: %s", entry.path, error)
                self.stats.failures[Failure.unreadable] += 1
                continue
            verdict = await run_ranked(self.thresholds.check, data)
            if not verdict.ok:
                assert verdict.reason is not None
                self.stats.failures[verdict.reason] += 1
                continue
            if self._is_duplicate(entry.phash, accepted):
                continue
            accepted.append(
                Candidate(
                    location=self.images.uri(entry.path),
                    data=data,
                    width=verdict.width,
                    height=verdict.height,
                    provider=self.provider,
                    query=text,
                    title=entry.caption,
                    phash=entry.phash,
                    sharpness=verdict.sharpness,
                )
            )
            if len(accepted) == limit:
                break
        self.stats.accepted += len(accepted)
        return accepted


def open_search(
    tool: SearchTool,
    *,
    pool: str | None = None,
    storage: Storage | None = None,
    store: ArtifactStore | None = None,
    env: Mapping[str, str] = os.environ,
) -> ImageSearch:
    """The searcher `tool` describes; `pool` is the run's `data.imagePool` for the pool provider.

    The API key is read from the tool's secret reference in `env` (see dpe.secrets).
    """
    if tool.provider == "pool":
        if pool is None:
            raise ValueError("search provider 'pool' needs the run's data.imagePool (indexed with `dpe pool index`)")
        return PoolSearch.open(pool, storage=storage, store=store)
    assert tool.base_url is not None
    api_key = None if tool.api_key_secret is None else resolve_secret(tool.api_key_secret, env)
    provider = SerperSearch if tool.provider == "serper" else SearxngSearch
    return provider(tool.base_url, api_key=api_key)
