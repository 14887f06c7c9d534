"""HTTP JSON serving of one artifact (Starlette + uvicorn) with request batching.

POST /answer takes {"question", "context"} or a list of them; GET /health says which artifact answers.
Requests arriving within `max_wait_ms` of each other run together, up to `max_batch` questions, in one
worker thread (onnxruntime already uses every core per run; two runs at once would only contend).
Bad input is always a 4xx with {"error": "..."}; a 500 means a bug.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .kit import Answer, Artifact, InputError, Windows, check_text

MAX_BODY_BYTES = 1 << 20  # 1 MiB: about 200 SQuAD paragraphs
MAX_QUESTIONS = 64  # per request


class RequestError(Exception):
    """Bad input from a client: an HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    windows: list[Windows]
    future: asyncio.Future


@dataclass
class Stats:
    requests: int = 0
    questions: int = 0
    batches: int = 0
    largest_batch: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # questions per batch -> how many batches

    def to_dict(self) -> dict:
        return {"requests": self.requests, "questions": self.questions, "batches": self.batches,
                "largest_batch": self.largest_batch, "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class Batcher:
    """Collect jobs for up to `max_wait_ms` (or until `max_batch` questions) and answer them in one run."""

    def __init__(self, artifact: Artifact, max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be positive and max_wait_ms not negative, got {max_batch}, {max_wait_ms}")
        self.artifact = artifact
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = Stats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qtool-infer")

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
        self._executor.shutdown(wait=True)

    async def submit(self, windows: list[Windows]) -> list[Answer]:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(windows, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            job = carry or await self._queue.get()
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
                jobs.append(nxt)
                count += len(nxt.windows)
            prepared = [w for j in jobs for w in j.windows]
            try:
                answers = await loop.run_in_executor(self._executor, self.artifact.run, prepared)
            except Exception as exc:  # a bug, not bad input: every waiting request gets it (a 500)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.questions += count
            self.stats.largest_batch = max(self.stats.largest_batch, count)
            self.stats.sizes[count] = self.stats.sizes.get(count, 0) + 1
            lo = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(answers[lo: lo + len(j.windows)])
                lo += len(j.windows)


def parse_payload(body: bytes, max_questions: int = MAX_QUESTIONS) -> tuple[list[tuple[str, str]], bool]:
    """Validate a request body: ({"question", "context"} or a list of them) -> (pairs, was_a_list)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise RequestError(400, "the body nests JSON too deeply") from None
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
        pairs.append((item["question"], item["context"]))
    return pairs, many


def create_app(artifact: Artifact, *, max_batch: int = 8, max_wait_ms: float = 5.0,
               max_body_bytes: int = MAX_BODY_BYTES, max_questions: int = MAX_QUESTIONS):
    """The Starlette application serving `artifact`; `app.state.batcher.stats` counts batches."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = Batcher(artifact, max_batch, max_wait_ms)
    started = time.time()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, f"Content-Length {declared!r} is not a number")
            if int(declared) > max_body_bytes:
                raise RequestError(413, f"the body is {declared} bytes; at most {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds chunked bodies that declare no length
            size += len(chunk)
            if size > max_body_bytes:
                raise RequestError(413, f"the body exceeds {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def answer(request: Request) -> JSONResponse:
        try:
            pairs, many = parse_payload(await read_body(request), max_questions)
            windows = []
            for i, (q, c) in enumerate(pairs):
                try:
                    windows.append(artifact.windows(q, c))
                except InputError as exc:
                    raise RequestError(422, f"item {i}: {exc}" if many else str(exc)) from exc
        except RequestError as exc:
            return error(exc.status, str(exc))
        except ClientDisconnect:
            return error(400, "the client disconnected before sending the whole body")
        batcher.stats.requests += 1
        answers = await batcher.submit(windows)
        out = [a.to_dict() for a in answers]
        return JSONResponse(out if many else out[0])

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", **artifact.describe(), "max_batch": max_batch, "max_wait_ms": max_wait_ms,
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


def make_server(artifact: Artifact, host: str = "127.0.0.1", port: int = 8000, **app_options):
    """A uvicorn server (not started): `.run()` blocks; tests run it in a thread and set `.should_exit`."""
    import uvicorn

    config = uvicorn.Config(create_app(artifact, **app_options), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="on")
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
          max_body_bytes: int = MAX_BODY_BYTES, threads: int | None = None) -> None:
    """Open `folder` (checked) and serve it until interrupted."""
    artifact = Artifact.open(folder, threads=threads)
    make_server(artifact, host, port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes).run()


def answer_json(folder: str, question: str, context: str, threads: int | None = None) -> str:
    """One answer as JSON text (for `qtool answer`), with the artifact it came from."""
    artifact = Artifact.open(folder, threads=threads)
    return json.dumps({**artifact.answer(question, context).to_dict(), "artifact": artifact.name}, indent=2)
