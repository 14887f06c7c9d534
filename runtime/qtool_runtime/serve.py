"""HTTP JSON serving of one artifact (Starlette + uvicorn) with request batching.

POST /answer takes {"question", "context"} or a list of them; GET /health says which artifact answers.
Requests arriving within `max_wait_ms` of each other run together, up to `max_batch` questions, in one
worker thread (onnxruntime already uses every core per run; two runs at once would only contend).
Bad input is always a 4xx with {"error": "..."}; a 500 means a bug.

A run-time configuration graph chooses its configuration per batch: an item may name a menu entry
("config") or a budget ("budget_ms"); the others run full, or, with `latency_target_ms`, the most accurate
menu entry whose predicted time for all queued work (this batch and what waits behind it) meets the target:
full when idle, cheaper under load. Every answer says which configuration produced it.

Settings are checked against bounds.BOUNDS before the artifact opens. On SIGTERM (or Ctrl-C) the server stops
taking connections, gives requests in flight `drain_s` seconds to finish, and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import deque
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import bounds
from .contract import MenuEntry
from .errors import KitError, OptionError, shown
from .kit import Answer, Artifact, ConfigError, InputError, Windows, check_text
from .menu import choose

MAX_BODY_BYTES = 1 << 20  # 1 MiB: about 200 SQuAD paragraphs
INFER_THREAD = "qtool-infer"  # the batcher's one inference thread
DRAIN_S = 10.0  # after SIGTERM, requests in flight get this long (a batch waits at most bounds.MAX_WAIT_MS) to finish
TAIL_WINDOW = 100  # recent requests whose latency the target is held on
TAIL_MIN_JOBS = 20  # fewer than this: no p99 yet
MAX_PRESSURE = 16.0
MAX_QUESTIONS = 64  # per request


class RequestError(Exception):
    """Bad input from a client: an HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class _Job:
    windows: list[Windows]
    future: asyncio.Future
    entries: list[MenuEntry | None] = field(default_factory=list)  # per question: named by the request, or None

    def lengths(self) -> list[int]:
        return [len(ids) for item in self.windows for ids in item.input_ids]


@dataclass
class Stats:
    requests: int = 0
    questions: int = 0
    batches: int = 0
    largest_batch: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # questions per batch -> how many batches
    configs: dict[str, int] = field(default_factory=dict)  # questions answered per configuration

    def to_dict(self) -> dict:
        return {"requests": self.requests, "questions": self.questions, "batches": self.batches,
                "largest_batch": self.largest_batch, "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "configs": dict(self.configs)}


class Batcher:
    """Collect jobs for up to `max_wait_ms` (or until `max_batch` questions) and answer them in one run."""

    def __init__(self, artifact: Artifact, max_batch: int, max_wait_ms: float,
                 latency_target_ms: float | None = None) -> None:
        bounds.check_all(max_batch=max_batch, max_wait_ms=max_wait_ms, latency_target_ms=latency_target_ms)
        if latency_target_ms is not None and not artifact.menu:
            raise ConfigError(f"--latency-target-ms needs a run-time configuration graph (export --config runtime); "
                              f"{artifact.name} runs one configuration")
        self.artifact = artifact
        self.latency_target_ms = latency_target_ms
        # observed batch time over the menu's prediction (moving average): the menu is timed one window at a time on
        # an idle machine; a server batches windows (cheaper) and shares the cores with its clients (dearer)
        self.slowdown = 1.0
        # the target is on request latency, whose tail (HTTP, tokenizing, clients sharing the cores) no run prediction
        # sees: while the recent p99 is above the target, `pressure` tightens the budget; below 0.8x it relaxes
        self.pressure = 1.0
        self.latencies: deque[float] = deque(maxlen=TAIL_WINDOW)  # ms from submit to answer, the latest jobs
        self._waiting: set[_Job] = set()  # submitted, not yet taken into a batch: the work queued behind it
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = Stats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=INFER_THREAD)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # never wait here for a batch past the drain time: onnxruntime cannot be interrupted, and waiting would hold
        # the shutdown (and SIGTERM) for as long as the batch takes; serve() ends the process instead
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, windows: list[Windows], entries: list[MenuEntry | None] | None = None,
                     started: float | None = None) -> list[Answer]:
        """Answer `windows`; `entries[i]` is the configuration question i named (None: the server chooses);
        `started` (the event loop's clock): when the request arrived, so its latency includes reading and windowing."""
        loop = asyncio.get_running_loop()
        future, started = loop.create_future(), loop.time() if started is None else started
        job = _Job(windows, future, entries or [None] * len(windows))
        self._waiting.add(job)
        await self._queue.put(job)
        answers = await future
        self.latencies.append((loop.time() - started) * 1e3)
        return answers

    def budget_ms(self) -> float:
        """The latency target as a budget for predicted run time: divided by `slowdown` and by `pressure`,
        which moves with the recent p99 of request latency (per batch: x p99/target, at most x1.2, above the target;
        /1.02 below 0.8x of it)."""
        if len(self.latencies) >= TAIL_MIN_JOBS:
            p99 = float(np.percentile(list(self.latencies), 99))
            if p99 > self.latency_target_ms:
                self.pressure = min(MAX_PRESSURE, self.pressure * min(1.2, p99 / self.latency_target_ms))
            elif p99 < 0.8 * self.latency_target_ms:
                self.pressure = max(1.0, self.pressure / 1.02)
        return self.latency_target_ms / (self.slowdown * self.pressure)

    def plan(self, jobs: list[_Job]) -> dict[str, tuple[MenuEntry | None, list[tuple[int, int]]]]:
        """Group the batch's questions by configuration: label -> (entry, [(job, question)]). Questions that named
        none run the menu's first entry (full), or under a latency target the most accurate entry whose predicted
        time for this batch and all work waiting behind it meets the budget (`budget_ms`)."""
        default = None
        if self.latency_target_ms is not None:
            queued = [n for j in [*jobs, *list(self._waiting)] for n in j.lengths()]
            default = choose(self.artifact.menu, self.artifact.times, queued, self.budget_ms(),
                             label=self.artifact.label)
        groups: dict[str, tuple[MenuEntry | None, list[tuple[int, int]]]] = {}
        for j, job in enumerate(jobs):
            for q, named in enumerate(job.entries):
                entry = named or default or self.artifact.entry(None)
                groups.setdefault(self.artifact.label(entry), (entry, []))[1].append((j, q))
        return groups

    def answer_jobs(self, jobs: list[_Job], groups: dict) -> list[list[Answer]]:
        """Run the batch as `plan` grouped it (in the event loop), one graph run per configuration (worker thread)."""
        out: list[list[Answer | None]] = [[None] * len(j.windows) for j in jobs]
        for label, (entry, members) in groups.items():
            prepared = [jobs[j].windows[q] for j, q in members]
            started = time.perf_counter()
            answers = self.artifact.run(prepared, entry)
            if self.latency_target_ms is not None:
                self.observe(entry, prepared, (time.perf_counter() - started) * 1e3)
            for (j, q), answer in zip(members, answers):
                out[j][q] = answer
            self.stats.configs[label] = self.stats.configs.get(label, 0) + len(members)
        return out

    def observe(self, entry: MenuEntry, prepared: list[Windows], ms: float, weight: float = 0.2) -> None:
        """Move `slowdown` towards this run's observed / predicted time (bounded: one odd run cannot swing it)."""
        predicted = self.artifact.times.predict(self.artifact.label(entry),
                                                [len(ids) for item in prepared for ids in item.input_ids])
        if predicted > 0:
            self.slowdown = min(8.0, max(0.25, (1 - weight) * self.slowdown + weight * ms / predicted))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            idle_since = loop.time()
            job = carry or await self._queue.get()
            if self.latency_target_ms is not None and loop.time() - idle_since > self.latency_target_ms / 1e3:
                # idle for longer than the target: the recorded tail no longer describes the load
                self.pressure = 1.0
                self.latencies.clear()
            self._waiting.discard(job)
            carry = None
            jobs, count = [job], len(job.windows)
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if count + len(nxt.windows) > self.max_batch:
                    carry = nxt  # starts the next batch
                    break
                self._waiting.discard(nxt)
                jobs.append(nxt)
                count += len(nxt.windows)
            try:
                groups = self.plan(jobs)  # here, in the event loop, where the queue and the latencies change
                answers = await loop.run_in_executor(self._executor, self.answer_jobs, jobs, groups)
            except Exception as exc:  # a bug, not bad input: every waiting request gets it (a 500)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.questions += count
            self.stats.largest_batch = max(self.stats.largest_batch, count)
            self.stats.sizes[count] = self.stats.sizes.get(count, 0) + 1
            for j, answered in zip(jobs, answers):
                if not j.future.done():
                    j.future.set_result(answered)


@dataclass(frozen=True)
class Item:
    """One question of a request, and the configuration or budget it asks for (run-time configuration graphs)."""

    question: str
    context: str
    config: object = None  # as sent: contract.parse_config reads it (a 422 when it is not a configuration)
    budget_ms: float | None = None


def parse_payload(body: bytes, max_questions: int = MAX_QUESTIONS) -> tuple[list[Item], bool]:
    """Validate a request body: ({"question", "context"[, "config" | "budget_ms"]} or a list of them) ->
    (items, was_a_list)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestError(400, "the body nests JSON too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    many = isinstance(data, list)
    items = data if many else [data]
    if many and not items:
        raise RequestError(422, "the list of questions is empty")
    if len(items) > max_questions:
        raise RequestError(413, f"{len(items)} questions in one request; at most {max_questions}")
    pairs = []
    for i, item in enumerate(items):
        where = f"item {i}: " if many else ""
        if not isinstance(item, dict):
            raise RequestError(422, f'{where}expected an object {{"question": str, "context": str}}, '
                                    f"got {type(item).__name__}")
        for key in ("question", "context"):
            if key not in item:
                raise RequestError(422, f"{where}field {key!r} is missing")
            if not isinstance(item[key], str):
                raise RequestError(422, f"{where}field {key!r} must be a string, got {type(item[key]).__name__}")
            if not item[key].strip():
                raise RequestError(422, f"{where}field {key!r} is empty")
            try:
                check_text(key, item[key])
            except InputError as exc:
                raise RequestError(422, f"{where}field {key!r}: {exc}") from None
        config, budget = item.get("config"), item.get("budget_ms")
        try:
            budget = bounds.check("budget_ms", budget)
        except OptionError:
            raise RequestError(422, f"{where}field 'budget_ms' must be {bounds.BOUNDS['budget_ms'].describe()}, "
                                    f"got {shown(budget, 40)}") from None
        if config is not None and budget is not None:
            raise RequestError(422, f"{where}name a 'config' or a 'budget_ms', not both")
        pairs.append(Item(item["question"], item["context"], config, budget))
    return pairs, many


async def read_body(request, max_body_bytes: int) -> bytes:
    """The request body, refused (413) past `max_body_bytes` whether or not it declares its length."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 19):  # int() also reads '²' and '٣'
            raise RequestError(400, f"Content-Length {shown(declared, 40)} is not a number")
        if int(declared) > max_body_bytes:
            raise RequestError(413, f"the body is {declared} bytes; at most {max_body_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():  # also bounds chunked bodies that declare no length
        size += len(chunk)
        if size > max_body_bytes:
            raise RequestError(413, f"the body exceeds {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def prepare_items(artifact: Artifact, items: list[Item], many: bool) -> tuple[list[Windows], list]:
    """Each item's windows and menu entry (named, chosen by its budget, or None: the server's choice); a bad
    item is a 422 naming it."""
    windows, entries = [], []
    for i, item in enumerate(items):
        try:
            windows.append(artifact.windows(item.question, item.context))
            entries.append(artifact.choose(windows[-1:], item.budget_ms) if item.budget_ms is not None
                           else artifact.entry(item.config) if item.config is not None else None)
        except KitError as exc:  # InputError, ConfigError, OptionError: the item, not the server
            raise RequestError(422, f"item {i}: {exc}" if many else str(exc)) from exc
    return windows, entries


def create_app(artifact: Artifact, *, max_batch: int = 8, max_wait_ms: float = 5.0,
               max_body_bytes: int = MAX_BODY_BYTES, max_questions: int = MAX_QUESTIONS,
               latency_target_ms: float | None = None):
    """The Starlette application serving `artifact`; `app.state.batcher.stats` counts batches.

    `latency_target_ms` (run-time configuration graphs): the menu is timed on this machine first. Settings outside
    bounds.BOUNDS are an OptionError."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    bounds.check_all(max_body_bytes=max_body_bytes)
    batcher = Batcher(artifact, max_batch, max_wait_ms, latency_target_ms)
    if artifact.menu and artifact.times is None:
        artifact.measure_menu()  # budgets and the latency target are predicted from this machine's timings
    started = time.time()

    def error(status: int, message: str) -> JSONResponse:
        # a message quoting the request may hold lone surrogates ("\ud800"), which UTF-8 cannot carry: escape them
        return JSONResponse({"error": message.encode("utf-8", "backslashreplace").decode("utf-8")}, status_code=status)

    async def answer(request: Request) -> JSONResponse:
        arrived = asyncio.get_running_loop().time()
        try:
            items, many = parse_payload(await read_body(request, max_body_bytes), max_questions)
            windows, entries = prepare_items(artifact, items, many)
        except RequestError as exc:
            return error(exc.status, str(exc))
        except ClientDisconnect:
            return error(400, "the client disconnected before sending the whole body")
        batcher.stats.requests += 1
        try:
            answers = await batcher.submit(windows, entries, started=arrived)
        except asyncio.CancelledError:  # shutting down and past the drain time: say so (uvicorn would send a 500)
            return error(503, "the server is shutting down; send the request again")
        out = [a.to_dict() for a in answers]
        return JSONResponse(out if many else out[0])

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", **artifact.describe(), "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                             "latency_target_ms": latency_target_ms, "slowdown": round(batcher.slowdown, 3),
                             "pressure": round(batcher.pressure, 3),
                             "menu_times": artifact.times.to_dict() if artifact.times else None,
                             "max_body_bytes": max_body_bytes, "uptime_s": round(time.time() - started, 1),
                             "stats": batcher.stats.to_dict()})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail or "error")

    @asynccontextmanager
    async def lifespan(app) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    app = Starlette(routes=[Route("/answer", answer, methods=["POST"]), Route("/health", health, methods=["GET"])],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.batcher = batcher
    return app


def make_server(artifact: Artifact, host: str = "127.0.0.1", port: int = 8000, *, drain_s: float = DRAIN_S,
                **app_options):
    """A uvicorn server (not started): `.run()` blocks; tests run it in a thread and set `.should_exit`, which is
    what SIGTERM does. Shutting down, requests still in flight after `drain_s` seconds are cancelled: without that
    bound uvicorn waits for them forever, and SIGTERM would never stop a server whose batch never closes."""
    import uvicorn

    bounds.check("port", port, optional=False)
    config = uvicorn.Config(create_app(artifact, **app_options), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=drain_s)
    return uvicorn.Server(config)


class ServerThread:
    """Run a server in a background thread on loopback: `with ServerThread(artifact) as url: ...`."""

    def __init__(self, artifact: Artifact, host: str = "127.0.0.1", port: int = 0, **app_options) -> None:
        import socket

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = make_server(artifact, host, port, **app_options)
        self.thread = threading.Thread(target=self.server.run, name="qtool-serve", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(folder: str, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 8, max_wait_ms: float = 5.0,
          max_body_bytes: int = MAX_BODY_BYTES, threads: int | None = None, latency_target_ms: float | None = None,
          engine: str | None = None) -> None:
    """Open `folder` (checked) on `engine` (default: the manifest's runtime) and serve it until SIGTERM or Ctrl-C;
    every setting is checked before any work."""
    bounds.check_all(port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes,
                     threads=threads, latency_target_ms=latency_target_ms)
    artifact = Artifact.open(folder, threads=threads, engine=engine)
    make_server(artifact, host, port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes,
                latency_target_ms=latency_target_ms).run()
    _end_past_a_running_batch()


def _end_past_a_running_batch() -> None:
    """After the drain time, a batch still computing has nowhere to send its answers (its requests got a 503) and
    cannot be interrupted; the interpreter would wait for its thread at exit, so the process ends here instead."""
    if any(t.name.startswith(INFER_THREAD) and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def answer_json(folder: str, question: str, context: str, threads: int | None = None, *, config: object = None,
                budget_ms: float | None = None, engine: str | None = None) -> str:
    """One answer as JSON text (for `qtool answer`), with the artifact and configuration it came from."""
    bounds.check_all(threads=threads, budget_ms=budget_ms)
    artifact = Artifact.open(folder, threads=threads, engine=engine)
    answer = artifact.answer(question, context, config=config, budget_ms=budget_ms)
    return json.dumps({**answer.to_dict(), "artifact": artifact.name}, indent=2)
