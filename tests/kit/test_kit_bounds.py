"""The kit's guards on what it is given: the one bounds table for operational flags (argparse, click and the
library share it), the graph reader that lets the kit check a manifest against its graph, and the contract's
field checks under generated junk."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qtool_runtime import Artifact, OptionError
from qtool_runtime.__main__ import main as kit_main
from qtool_runtime.bounds import BOUNDS, MAX_WAIT_MS, check, usable_cores
from qtool_runtime.contract import check_fields, full_up_to_problem
from qtool_runtime.graphfacts import GraphFormatError, read_graph_facts
from toolchain.cli.commands import main as qtool

from conftest import JUNK

# --- the bounds table --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_every_bound_refuses_what_lies_outside_and_names_the_flag(name):
    bound = BOUNDS[name]
    assert check(name, None) is None and check(name, bound.upper) == bound.upper
    if not bound.low_open:
        assert check(name, bound.low) == bound.low
    outside = [bound.low if bound.low_open else bound.low - 1, bound.upper + 1, float("nan"), float("inf"),
               -float("inf"), True, "8", [1], 10**400]
    if bound.kind is int:
        outside.append(float(bound.upper))  # a float is not a count of threads or bytes
    for value in outside:
        with pytest.raises(OptionError) as caught:
            check(name, value)
        message = str(caught.value)
        assert message.startswith(f"{bound.flag} must be ") and "\n" not in message and bound.describe() in message


def test_threads_are_bounded_by_the_cores_this_process_may_use():
    assert BOUNDS["threads"].upper == usable_cores() >= 1
    with pytest.raises(OptionError, match=rf"^--threads must be an integer in 1..{usable_cores()} "):
        check("threads", 100_000)
    assert BOUNDS["max_wait_ms"].upper == MAX_WAIT_MS and math.isfinite(MAX_WAIT_MS)


def test_the_kit_api_checks_its_settings_before_any_work(tmp_path):
    """Library callers get the same bounds: an OptionError (a ValueError) before the folder is even looked at."""
    from qtool_runtime.serve import answer_json

    missing = tmp_path / "no-artifact"
    for kwargs in (dict(threads=100_000), dict(threads=0), dict(batch_size=0), dict(batch_size=1.5)):
        with pytest.raises(OptionError):
            Artifact.open(missing, **kwargs)
    with pytest.raises(OptionError, match="^--budget-ms"):
        answer_json(str(missing), "Who?", "Denver won.", budget_ms=float("inf"))
    with pytest.raises(OptionError, match="^--threads"):
        answer_json(str(missing), "Who?", "Denver won.", threads=10**6)
    assert issubclass(OptionError, ValueError)


FLAG_CASES = [  # (command, flag, value): each once in qtool-runtime (argparse) and once in qtool (click)
    ("answer", "--threads", "100000"), ("answer", "--threads", "-1"), ("answer", "--budget-ms", "nan"),
    ("answer", "--budget-ms", "1e400"), ("serve", "--max-batch", "0"), ("serve", "--max-wait-ms", "-1"),
    ("serve", "--max-wait-ms", "1e308"), ("serve", "--max-wait-ms", "inf"), ("serve", "--threads", "-1"),
    ("serve", "--max-body-bytes", "0"), ("serve", "--latency-target-ms", "inf"), ("serve", "--latency-target-ms", "0"),
    ("serve", "--port", "70000"),
]


def _args(command: str, folder: Path, flag: str, value: str) -> list[str]:
    question = ["--question", "Who?", "--context", "Denver won."] if command == "answer" else []
    return [command, str(folder), *question, f"{flag}={value}"]


@pytest.mark.parametrize("command,flag,value", FLAG_CASES)
def test_qtool_runtime_refuses_out_of_bounds_flags_in_one_line(command, flag, value, tmp_path, capsys):
    """argparse's usage error (exit 2): the error line names the flag and its range; no traceback, no work."""
    assert kit_main(_args(command, tmp_path, flag, value)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"qtool-runtime {command}: error: {flag} must be ") and "Traceback" not in "".join(err)
    name = flag.removeprefix("--").replace("-", "_")
    assert BOUNDS[name].describe() in err[-1]


@pytest.mark.parametrize("command,flag,value", FLAG_CASES + [("fit-latency", "--threads", "0")])
def test_qtool_refuses_out_of_bounds_flags_in_one_line(command, flag, value, tmp_path):
    """click's usage error (exit 2) from the same table."""
    args = (["fit-latency", str(tmp_path), "--out", str(tmp_path / "m.json"), f"{flag}={value}"]
            if command == "fit-latency" else _args(command, tmp_path, flag, value))
    result = CliRunner().invoke(qtool, args)
    name = flag.removeprefix("--").replace("-", "_")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (f"Error: Invalid value for '{flag}': must be "
                                                      f"{BOUNDS[name].describe()}, got {value!r}")


def test_the_installed_script_passes_the_exit_status():
    """`qtool-runtime` is a [project.scripts] entry: main() returns the status the wrapper exits with."""
    script = Path(sys.executable).with_name("qtool-runtime")
    out = subprocess.run([str(script), "answer", "x", "--question", "q", "--context", "c", "--threads", "100000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--threads must be an integer in 1.." in out.stderr
    out = subprocess.run([str(script), "answer", "/no/such/artifact", "--question", "q", "--context", "c"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == ["Error: no such artifact folder: /no/such/artifact"]


# --- reading the graph -------------------------------------------------------------------------------------------


def _table(name: str, rows: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros((rows, 4), np.float32), name)  # raw_data, as exporters write weights


def routed_model(threshold: int | None, *, opset: int = 24, raw: bool = False) -> onnx.ModelProto:
    """A tiny graph shaped like toolchain.graph.route's: If(LessOrEqual(longest, threshold)) over two branches that hold
    embedding tables (the reduced branch's word table smaller, to see that the smallest wins); None: no routing."""
    def branch(prefix: str, vocab: int) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", ["x"], [f"{prefix}y"])], prefix,
                                 [], [helper.make_tensor_value_info(f"{prefix}y", TensorProto.FLOAT, None)],
                                 initializer=[_table(f"{prefix}model.bert.embeddings.word_embeddings.weight", vocab),
                                              _table(f"{prefix}model.bert.embeddings.position_embeddings.weight", 512)])
    inits = [helper.make_tensor("route_threshold", TensorProto.INT64, [1],
                                np.array([threshold or 0], np.int64).tobytes() if raw else [threshold or 0], raw=raw)]
    nodes = [helper.make_node("LessOrEqual", ["n", "route_threshold"], ["short"]),
             helper.make_node("If", ["short"], ["y"], then_branch=branch("full/", 30522),
                              else_branch=branch("reduced/", 30000))]
    if threshold is None:  # an If whose condition is not a LessOrEqual on a constant: not a route
        nodes[0] = helper.make_node("Not", ["flag"], ["short"])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("com.microsoft", 1),
                                                   helper.make_opsetid("", opset)])


@pytest.mark.parametrize("threshold,raw", [(100, False), (224, True), (None, False)])
def test_graph_facts_are_read_from_the_protobuf_as_onnx_writes_it(threshold, raw, tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(routed_model(threshold, raw=raw), str(path))
    facts = read_graph_facts(path)
    assert facts.opset == 24 and facts.route_threshold == (threshold or 0)
    assert facts.vocab_rows == 30000 and facts.position_rows == 512  # found inside the If branches


def test_graph_facts_refuse_bytes_that_are_not_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(routed_model(100), str(path))
    data = path.read_bytes()
    for name, content in (("empty", b""), ("cut", data[: len(data) // 2]), ("text", b"not a graph at all\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(GraphFormatError, match="is not an ONNX model this kit can read"):
            read_graph_facts(tmp_path / name)


# --- the contract's field checks under junk ---------------------------------------------------------------------

MANIFEST = {  # a routed run-of-the-mill reduced graph's manifest, as the toolchain writes it (files aside)
    "format": "qtool-artifact/2", "graph": "model.onnx", "precision": "int8", "opset": 24, "max_positions": 512,
    "doc_stride": 128, "max_answer_length": 30, "quantization": {"mode": "static"},
    "length_config": {"keep": [300, 250, 200, 150, 120, 100], "seq_len": 384, "rule": "cap", "variant": "match",
                      "full_up_to": 224},
    "feeding": {"batchable": True, "pad_to_seq_len": False},
    "interface": {"inputs": ["input_ids", "attention_mask", "token_type_ids"],
                  "outputs": ["start_logits", "end_logits", *(f"kept_{i}" for i in range(6))]},
}
RUNTIME = {**MANIFEST, "format": "qtool-artifact/1", "precision": "fp32", "opset": 18, "quantization": None,
           "length_config": {"keep": [384] * 6, "seq_len": 384, "rule": "cap", "variant": "qtool"},
           "interface": {"inputs": ["input_ids", "attention_mask", "token_type_ids", "keep_counts"],
                         "outputs": MANIFEST["interface"]["outputs"]},
           "menu": [{"keep": [384] * 6, "f1": {"paragraphs": 80.0}, "ms": 9.5, "macs_ratio": 1.0},
                    {"keep": [300, 250, 200, 150, 120, 100], "f1": {}, "ms": None, "macs_ratio": 0.6}]}


class Refused(Exception):
    pass


def refuse(message: str):
    raise Refused(message)


def _paths(obj: object, prefix: tuple = ()):
    """Every key path into a JSON value (the value's own path first)."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def test_the_example_manifests_pass():
    check_fields(copy.deepcopy(MANIFEST), refuse)
    check_fields(copy.deepcopy(RUNTIME), refuse)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(base=st.sampled_from([MANIFEST, RUNTIME]), data=st.data(), value=JUNK, delete=st.booleans())
def test_check_fields_refuses_junk_in_one_line_and_never_crashes(base, data, value, delete):
    """Any field (at any depth) replaced by generated junk, or removed: check_fields passes it or calls `fail`
    with one line, never a TypeError or KeyError (which the kit would show as a traceback)."""
    manifest = copy.deepcopy(base)
    path = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        check_fields(manifest, refuse)
    except Refused as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("threshold", ["224", 224.5, True, False, 0.0, -1, 384, 10**30, [224], None])
def test_full_up_to_is_a_token_count_below_seq_len_or_refused(threshold):
    """One validator for kit and toolchain: no string, float or bool passes as a threshold."""
    assert full_up_to_problem(threshold, [300, 250, 200, 150, 120, 100], 384, "cap", "match")
    assert full_up_to_problem(224, [300, 250, 200, 150, 120, 100], 384, "cap", "match") is None
    manifest = json.loads(json.dumps(MANIFEST))
    manifest["length_config"]["full_up_to"] = threshold
    with pytest.raises(Refused, match="full_up_to"):
        check_fields(manifest, refuse)
