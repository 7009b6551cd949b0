"""The simulated services, one copy per side in a child process: the OpenAI-compatible endpoint with
its quotas, the Serper-like search service, and the pictures they serve."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from dpe_testkit.agent_script import attached_digest
from dpe_testkit.openai_server import FakeOpenAIServer, ServerLimits, rate_limited, server_error
from dpe_testkit.pictures import encode, scene
from dpe_testkit.search_server import SearchServer

from benchmarks.agents_throughput.scenario import DOWNLOAD_S, ROLE_PROFILES, SEARCH_API_S, Scenario
from benchmarks.agents_throughput.scripted_models import ScriptedModels, queries_for
from dpe.agents import SeedItem
from dpe.generation import stable_seed
from dpe.llm import BURST_SECONDS
from dpe.taxonomy import QuestionFormat

PICTURE_SIZE = (128, 96)
LISTEN_BACKLOG = 256
"""Pending connections the fake endpoint accepts; the standard library's 5 drops bursts of SYNs.
Both fakes also set TCP_NODELAY: `http.server` writes headers and body separately, and Nagle's
algorithm against the client's delayed ACK adds 40 ms to every answer."""


class TokenWindow:
    """A tokens-per-window quota: admission needs the prompt's tokens, the reply's are billed after."""

    def __init__(self, limit: float, window_s: float, clock: Callable[[], float] = time.monotonic):
        self._capacity = float(limit)
        self._rate = limit / window_s
        self._level = self._capacity
        self._clock = clock
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now

    def admit(self, tokens: int) -> float:
        """Takes `tokens` and returns 0, or returns the seconds until they would fit."""
        self._refill()
        if self._level >= min(tokens, self._capacity):
            self._level -= tokens
            return 0.0
        return (min(tokens, self._capacity) - self._level) / self._rate

    def bill(self, tokens: int) -> None:
        self._refill()
        self._level -= tokens


class QuotaEndpoint(FakeOpenAIServer):
    """The fake OpenAI server with the limits real providers enforce: request rate and concurrency
    (the fake's own `ServerLimits`) plus a token rate, and a 503 every n-th request."""

    def __init__(self, script: ScriptedModels, scenario: Scenario):
        limits = scenario.limits
        window = max(scenario.seconds(limits.window_s), BURST_SECONDS)
        minutes = window / scenario.time_scale / 60
        super().__init__(
            script,
            latency=script.delay,
            usage=script.usage,
            limits=ServerLimits(
                max_concurrency=limits.max_concurrency,
                requests_per_window=max(1, round(limits.requests_per_minute * minutes)),
                window_seconds=window,
            ),
            models=tuple(f"model-{role}" for role in ROLE_PROFILES),
        )
        self._httpd.socket.listen(LISTEN_BACKLOG)
        self._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        self._tokens = TokenWindow(round(limits.tokens_per_minute * minutes), window)
        self._token_lock = threading.Lock()
        self._billed = 0
        self.fail_every(limits.server_error_every, server_error(503))

    @property
    def tokens_billed(self) -> int:
        """Prompt and completion tokens of every answered request so far."""
        with self._token_lock:
            return self._billed

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        prompt, _ = self.usage(body, "")
        with self._token_lock:
            wait_s = self._tokens.admit(prompt)
        if wait_s > 0:
            return self._render(body, rate_limited(round(wait_s, 3)))
        status, headers, payload = super()._chat(body)
        with self._token_lock:
            if status == 200:
                usage = json.loads(payload)["usage"]
                self._tokens.bill(usage["completion_tokens"])
                self._billed += usage["total_tokens"]
            else:
                self._tokens.bill(-prompt)
        return status, headers, payload


class InventedResults(dict[str, list[tuple[str, str]]]):
    """The search service's results table: a query not in the picture book gets fresh pictures."""

    def __init__(self, service: PictureSearch):
        super().__init__()
        self._service = service
        self._lock = threading.Lock()

    def get(self, query: str, default: Any = None) -> list[tuple[str, str]]:  # type: ignore[override]
        with self._lock:
            if query not in self:
                self[query] = self._service.publish(query, [drawn(number) for number in result_numbers(self._service.scenario, query)])
            return self[query]


class PictureSearch(SearchServer):
    """The fake Serper service: every query gets `results_per_query` pictures of its own, after the
    API's latency; each download takes the download latency."""

    def __init__(self, scenario: Scenario, book: PictureBook, originals: multiprocessing.SimpleQueue[str]):
        super().__init__()
        self.scenario = scenario
        self.originals = originals
        """Where the digests of pictures invented for queries the book lacks go, for the endpoint's selector."""
        self.results = InventedResults(self)
        for query, found in book.results.items():
            self.results[query] = self.publish(query, found, invented=False)

    def publish(self, query: str, found: Sequence[tuple[bytes, str]], invented: bool = True) -> list[tuple[str, str]]:
        """Serves the pictures and returns them as the query's (url, title) results; an invented
        picture's digest is announced before its query is answered, so no rating can precede it."""
        listed = []
        for rank, (data, digest) in enumerate(found, start=1):
            if invented:
                self.originals.put(digest)
            url = self.image(f"{stable_seed(query, rank):x}.png", data, delay=self.scenario.seconds(DOWNLOAD_S))
            listed.append((url, f"{query} {rank}"))
        return listed

    def _handler(self) -> type[Any]:
        base = super()._handler()
        service = self

        class Handler(base):  # type: ignore[misc, valid-type]
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                service._closing.wait(service.scenario.seconds(SEARCH_API_S))
                super().do_POST()

        return Handler


def picture(number: int) -> bytes:
    """A small seeded scene as PNG."""
    return encode(scene(number % 2**32, PICTURE_SIZE))


def drawn(number: int) -> tuple[bytes, str]:
    """A picture and the digest under which the scripted models recognise it."""
    data = picture(number)
    return data, attached_digest(data)


def result_numbers(scenario: Scenario, query: str) -> list[int]:
    return [stable_seed(scenario.seed, query, rank) for rank in range(1, scenario.results_per_query + 1)]


@dataclass(frozen=True)
class PictureBook:
    """The pictures a run needs, made once before either side starts (drawing and encoding them
    during the run would load the machine in a way real services do not): each seed's picture, and
    the results of the two queries each seed leads the planner to."""

    seeds: list[SeedItem]
    results: dict[str, list[tuple[bytes, str]]]
    seed_digests: list[str]


def picture_book(scenario: Scenario, seed_count: int) -> PictureBook:
    """Seed items (a question naming the seed's number, which steers the queries) and pictures."""
    seed_numbers = [stable_seed(scenario.seed, "seed", number) for number in range(seed_count)]
    queries = [query for number in range(seed_count) for query in queries_for(f"seed {number}")]
    numbers = seed_numbers + [n for query in queries for n in result_numbers(scenario, query)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        made = pool.map(drawn, numbers, chunksize=16)
    seeds = [
        SeedItem(f"seed-{number}", f"How many bars are taller than 30? (seed {number})", "3", made[number][0], QuestionFormat.numerical)
        for number in range(seed_count)
    ]
    per_query = scenario.results_per_query
    found = made[seed_count:]
    results = {query: found[i * per_query : (i + 1) * per_query] for i, query in enumerate(queries)}
    return PictureBook(seeds, results, [digest for _, digest in made[:seed_count]])


@dataclass(frozen=True)
class EndpointCounts:
    """What the endpoint saw: chat requests by status, tokens billed, and requests in flight over time."""

    statuses: dict[int, int]
    tokens: int
    in_flight_changes: list[tuple[float, int]]
    """(monotonic time, requests in flight from then on); the clock is the machine's, shared by processes."""

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


@dataclass(frozen=True)
class WorldAddress:
    endpoint_url: str
    search_url: str


def serve_endpoint(scenario: Scenario, book: PictureBook, originals: multiprocessing.SimpleQueue[str], control: Connection) -> None:
    """The endpoint's process: the fake models, answering "counts" and "stop" on `control`."""
    script = ScriptedModels(scenario, originals)
    script.originals.update(book.seed_digests)
    script.originals.update(digest for found in book.results.values() for _, digest in found)
    endpoint = QuotaEndpoint(script, scenario).start()
    control.send(endpoint.base_url)
    try:
        while (command := control.recv()) != "stop":  # EOFError when the parent is gone ends it too
            assert command == "counts", command
            control.send(EndpointCounts(dict(sorted(Counter(endpoint.statuses()).items())), endpoint.tokens_billed, list(endpoint.in_flight_changes)))
    finally:
        endpoint.close()


def serve_search(scenario: Scenario, book: PictureBook, originals: multiprocessing.SimpleQueue[str], control: Connection) -> None:
    """The search service's process: the API and the image downloads, until "stop" on `control`."""
    search = PictureSearch(scenario, book, originals).start()
    control.send(search.url)
    try:
        control.recv()
    except EOFError:
        pass
    finally:
        search.close()


class World:
    """A fresh endpoint and search service (fresh quotas, fresh script state) for one side.

    Each runs in a child process of its own: in the measured process their threads would compete
    with the side being measured for the interpreter lock, and in one process with each other,
    slowing both in a way no remote service does (a burst of downloads would delay the models'
    replies).
    """

    def __init__(self, scenario: Scenario, book: PictureBook):
        processes = multiprocessing.get_context("fork")
        originals: multiprocessing.SimpleQueue[str] = processes.SimpleQueue()
        self._controls: list[Connection] = []
        self._processes = []
        urls = []
        for name, target in (("fake-endpoint", serve_endpoint), ("fake-search", serve_search)):
            control, child = processes.Pipe()
            process = processes.Process(target=target, args=(scenario, book, originals, child), name=name, daemon=True)
            process.start()
            child.close()
            self._controls.append(control)
            self._processes.append(process)
            urls.append(control.recv())
        self.address = WorldAddress(*urls)

    def counts(self) -> EndpointCounts:
        self._controls[0].send("counts")
        counts: EndpointCounts = self._controls[0].recv()
        return counts

    def close(self) -> None:
        for control, process in zip(self._controls, self._processes, strict=True):
            control.send("stop")
            process.join(timeout=30)
            control.close()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
