"""The kit's HTTP server over real loopback HTTP: answers, batching, concurrent clients, 4xx for bad input; the CLI."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from qtool_runtime import Artifact
from qtool_runtime.serve import ServerThread
from toolchain.data import squad
from toolchain.cli.commands import main

MAX_BODY = 100_000


@pytest.fixture(scope="module")
def reduced_dir(exported_root) -> Path:
    return next(p for p in sorted(exported_root.iterdir()) if p.name.startswith("fp32-") and p.name != "fp32-full")


@pytest.fixture(scope="module")
def kit(reduced_dir) -> Artifact:
    return Artifact.open(reduced_dir)


@pytest.fixture(scope="module")
def questions(squad_dir) -> list[squad.SquadExample]:
    return squad.load_squad("dev", limit=16, offset=250)  # contexts longer than one window


@pytest.fixture(scope="module")
def url(kit):
    with ServerThread(kit, max_batch=8, max_wait_ms=30, max_body_bytes=MAX_BODY) as base:
        yield base


def request(url: str, path: str, body: object = None, *, raw: bytes | None = None, method: str | None = None):
    """(status, parsed JSON) of one request; errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def same(got: dict, want) -> bool:
    return (got["text"], got["start"], got["end"]) == (want.text, want.start, want.end) and \
        got["score"] == pytest.approx(want.score, abs=1e-3)


def test_health_names_the_artifact(url, kit, reduced_dir):
    status, body = request(url, "/health")
    manifest = json.loads((reduced_dir / "manifest.json").read_text())
    assert status == 200 and body["status"] == "ok"
    assert body["artifact"] == reduced_dir.name and body["precision"] == manifest["precision"]
    assert body["length_config"]["keep"] == manifest["length_config"]["keep"]
    assert body["length_config"]["seq_len"] == manifest["length_config"]["seq_len"]
    assert body["max_batch"] == 8


def test_answers_one_and_many(url, kit, questions):
    e = questions[0]
    status, body = request(url, "/answer", {"question": e.question, "context": e.context})
    assert status == 200 and same(body, kit.answer(e.question, e.context))
    assert e.context[body["start"]: body["end"]] == body["text"] != ""
    items = [{"question": q.question, "context": q.context} for q in questions[:5]]
    status, body = request(url, "/answer", items)
    assert status == 200 and isinstance(body, list) and len(body) == 5
    for got, want in zip(body, kit.answer_batch([(q.question, q.context) for q in questions[:5]])):
        assert same(got, want)


def test_bad_input_is_a_clear_4xx(url, questions):
    ctx = questions[0].context
    cases = [
        (dict(raw=b'{"question": "x", '), 400, "not valid JSON"),
        (dict(raw=b"\xff\xfe"), 400, "not valid JSON"),
        (dict(body={"context": ctx}), 422, "'question' is missing"),
        (dict(body={"question": "Who?"}), 422, "'context' is missing"),
        (dict(body={"question": 3, "context": ctx}), 422, "'question' must be a string, got int"),
        (dict(body={"question": "Who?", "context": ["a"]}), 422, "'context' must be a string, got list"),
        (dict(body={"question": "  ", "context": ctx}), 422, "'question' is empty"),
        (dict(body={"question": "Who?", "context": ""}), 422, "'context' is empty"),
        (dict(body=[]), 422, "list of questions is empty"),
        (dict(body=[{"question": "Who?", "context": ctx}, "no"]), 422, "item 1: expected an object"),
        (dict(body="just a string"), 422, "expected an object"),
        (dict(body={"question": "word " * 300, "context": ctx}), 422, "may have at most"),
        (dict(body=[{"question": "Who?", "context": "x"}] * 65), 413, "at most 64"),
        (dict(body={"question": "Who?", "context": "word " * (MAX_BODY // 4)}), 413, f"at most {MAX_BODY}"),
        # JSON escapes of a lone surrogate decode to a str no tokenizer can take
        (dict(raw=b'{"question": "\\ud800 who?", "context": "Denver won."}'), 422, "not valid Unicode"),
        (dict(raw=b'{"question": "Who?", "context": "Denver \\udfff won."}'), 422, "'context': the context is not valid"),
        (dict(raw=b"[" * 50_000 + b"]" * 50_000), 400, "nests JSON too deeply"),  # under the size limit
    ]
    for kwargs, status, message in cases:
        got_status, body = request(url, "/answer", **kwargs)
        assert (got_status, message in body.get("error", "")) == (status, True), (kwargs.get("body", "raw"), body)
    assert request(url, "/answer", method="GET")[0] == 405
    status, body = request(url, "/nowhere")
    assert status == 404 and "error" in body
    # a chunked body declares no length: the limit still holds while reading
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"x" * 10_000 for _ in range(MAX_BODY // 10_000 + 2))
    conn.request("POST", "/answer", body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds" in json.loads(resp.read())["error"]
    conn.close()
    assert request(url, "/health")[0] == 200  # still serving


def test_concurrent_clients_are_batched_and_answer_as_alone(url, kit, questions):
    """16 threads at once: each gets the single-request answer, and the server ran them in shared batches."""
    alone = [kit.answer(q.question, q.context) for q in questions]
    before = request(url, "/health")[1]["stats"]

    def ask(i: int):
        q = questions[i % len(questions)]
        return i, request(url, "/answer", {"question": q.question, "context": q.context})

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(32)))
    assert time.monotonic() - t0 < 120
    for i, (status, body) in results:
        assert status == 200 and same(body, alone[i % len(questions)])
    stats = request(url, "/health")[1]["stats"]
    assert stats["questions"] - before["questions"] == 32
    assert stats["batches"] - before["batches"] < 32, "concurrent requests must share batches"
    assert 1 < stats["largest_batch"] <= 8


def test_cli_answer(reduced_dir, kit, questions, tmp_path):
    e = questions[3]
    want = kit.answer(e.question, e.context)
    result = CliRunner().invoke(main, ["answer", str(reduced_dir), "--question", e.question, "--context", e.context])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert same(got, want) and got["artifact"] == reduced_dir.name
    (tmp_path / "ctx.txt").write_text(e.context, encoding="utf-8")
    result = CliRunner().invoke(main, ["answer", str(reduced_dir), "--question", e.question, "--context-file", str(tmp_path / "ctx.txt")])
    assert result.exit_code == 0 and same(json.loads(result.output), want)
    result = CliRunner().invoke(main, ["answer", str(reduced_dir), "--question", " ", "--context", e.context])
    assert result.exit_code == 1 and result.output.strip() == "Error: the question is empty"
    result = CliRunner().invoke(main, ["answer", str(reduced_dir), "--question", "Who?"])
    assert result.exit_code == 2 and "--context" in result.output
    result = CliRunner().invoke(main, ["answer", str(tmp_path), "--question", "Who?", "--context", "x"])
    assert result.exit_code == 1 and "is not a qtool artifact" in result.output


def test_cli_serve_subprocess(reduced_dir, kit, questions):
    """`qtool serve` in its own process on a free loopback port, stopped at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    qtool = Path(sys.executable).with_name("qtool")
    proc = subprocess.Popen([str(qtool), "serve", str(reduced_dir), "--port", str(port), "--max-batch", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                status, body = request(url, "/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "qtool serve did not come up within 60 s"
                time.sleep(0.2)
        assert status == 200 and body["max_batch"] == 4 and body["artifact"] == reduced_dir.name
        e = questions[5]
        status, got = request(url, "/answer", {"question": e.question, "context": e.context})
        assert status == 200 and same(got, kit.answer(e.question, e.context))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def raw_request(url: str, head: bytes) -> int:
    """The status line's code for raw request bytes (headers a client library would refuse to send)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head)
        return int(conn.recv(4096).split(b" ", 2)[1])


def test_request_headers_never_make_a_500(url):
    """Content-Length values str.isdigit() accepts but int() does not ('²'), or longer than int() reads: a 4xx."""
    for declared in (b"\xb2", b"9" * 5000, b"-1", b"1e3"):
        status = raw_request(url, b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: " + declared + b"\r\nConnection: close\r\n\r\n{}")
        assert 400 <= status < 500, (declared[:10], status)
    status, body = request(url, "/answer", raw=b'{"question": "Who?", "context": "Denver won.", "x": ' + b"9" * 5000 + b"}")
    assert status == 400 and "not valid JSON" in body["error"]  # int() refuses 4300+ digits with a ValueError
    assert request(url, "/health")[0] == 200


def test_budget_out_of_bounds_is_a_422_naming_the_range(url, questions):
    e = questions[0]
    for budget in (-1, 0, "5", True, 1e9, [5]):
        status, body = request(url, "/answer", {"question": e.question, "context": e.context, "budget_ms": budget})
        assert status == 422 and "'budget_ms' must be a finite number above 0 and at most 3600000" in body["error"], body
    for raw in (b"NaN", b"Infinity", b"1e400"):  # Python's json reads these; the bound refuses them
        status, body = request(url, "/answer", raw=b'{"question": "Who?", "context": "Denver won.", "budget_ms": ' + raw + b"}")
        assert status == 422 and "budget_ms" in body["error"], (raw, body)
    assert request(url, "/answer", {"question": e.question, "context": e.context})[0] == 200


def test_library_server_settings_are_checked_against_the_bounds_table(kit):
    from qtool_runtime import OptionError
    from qtool_runtime.serve import create_app, serve

    bad = [dict(max_batch=0), dict(max_batch=10**6), dict(max_wait_ms=-1), dict(max_wait_ms=float("nan")),
           dict(max_wait_ms=1e308), dict(max_body_bytes=0), dict(latency_target_ms=float("inf"))]
    for options in bad:
        flag = "--" + next(iter(options)).replace("_", "-")
        with pytest.raises(OptionError, match=f"^{flag} must be "):
            create_app(kit, **options)
        with pytest.raises(OptionError, match=f"^{flag} must be "):  # before the (missing) artifact is opened
            serve("/no/such/artifact", **options)
    with pytest.raises(OptionError, match="^--threads must be an integer in 1.."):
        serve("/no/such/artifact", threads=-1)
    with pytest.raises(OptionError, match="^--port must be"):
        serve("/no/such/artifact", port=70000)


def serve_process(folder: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """`qtool-runtime serve` (the installed script) on a free loopback port, once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).with_name("qtool-runtime")
    proc = subprocess.Popen([str(script), "serve", str(folder), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            request(url, "/health")
            return proc, url
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, "qtool-runtime serve did not come up within 60 s"
            time.sleep(0.2)


def test_sigterm_stops_the_server_with_a_request_in_flight(reduced_dir, questions):
    """A lone request waits the longest a batch may wait (10 s) for company; SIGTERM then ends the server once it is
    answered, within the drain time. (Before the bounds, --max-wait-ms 1e308 left it, and the server, waiting forever.)"""
    from qtool_runtime.serve import DRAIN_S

    proc, url = serve_process(reduced_dir, "--max-wait-ms", "10000")
    e = questions[0]
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(request, url, "/answer", {"question": e.question, "context": e.context})
            time.sleep(1.0)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=DRAIN_S + 20)
            assert time.monotonic() - t0 < DRAIN_S + 5
            assert pending.result(timeout=5)[0] == 200
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM  # uvicorn re-raises the signal after its shutdown


def test_requests_past_the_drain_time_get_a_503_and_the_server_stops(kit, questions):
    """Shutting down (what SIGTERM does: should_exit), a request still waiting after `drain_s` is cancelled with a
    503, and the server thread ends; uvicorn alone would wait for it forever."""
    e = questions[0]
    server = ServerThread(kit, max_wait_ms=10_000, drain_s=0.5)
    base = server.__enter__()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(request, base, "/answer", {"question": e.question, "context": e.context})
        time.sleep(0.5)
        t0 = time.monotonic()
        server.__exit__(None, None, None)
        assert not server.thread.is_alive() and time.monotonic() - t0 < 5
        status, body = pending.result(timeout=10)
    assert status == 503 and "shutting down" in body["error"]
