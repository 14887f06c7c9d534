"""The kit's HTTP server over real loopback HTTP: answers, batching, concurrent clients, 4xx for bad input; the CLI."""

from __future__ import annotations

import http.client
import json
import os
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
from toolchain import squad
from toolchain.cli import main

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
