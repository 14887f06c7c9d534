"""The run-time configuration graph (#18): one graph whose keep counts are an input.

It must equal each single-configuration graph (same kept tokens, logits within the export tolerance), quantize
once (static INT8 calibrated across its menu and scored at every entry), and let the kit and the server choose
the configuration per request, by name, by budget, or under a latency target. Graphs come from the session's
trained MiniLM (conftest), exported here with a menu of the fixture's reduced configuration and a smaller one.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REDUCED
from qtool_runtime import Artifact, ConfigError, MenuEntry, MenuTimes
from qtool_runtime.contract import KEEP_INPUT, check_fields
from qtool_runtime.menu import by_accuracy, choose
from qtool_runtime.serve import ServerThread
from toolchain.artifact import manifest as manifests
from toolchain.data import squad
from toolchain.cli.commands import main
from toolchain.graph.export import DEFAULT_ATOL, ExportError, export_configs
from toolchain.graph.runtime import Protocol, kept_agreement, onnx_session, predict_onnx
from toolchain.core.settings import ExportSettings, VerifySettings
from conftest import JUNK

SMALL = "120,100,80,60,40,20"


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory, trained_dir) -> Path:
    """The run-time graph of the reference model as a last stage on train's first 1,000 questions leaves it: its
    record says so (what `qtool train --limit 1000` writes), so the menu's scoring must leave those questions out."""
    model = tmp_path_factory.mktemp("model") / "stage-on-1000"
    shutil.copytree(trained_dir, model)
    (model / "qtool_train.json").write_text(json.dumps({"args": {"train_file": "train", "limit": 1000}}))
    root = tmp_path_factory.mktemp("runtime") / "minilm"
    (folder,) = export_configs(model, ["runtime"], root, settings=ExportSettings(samples=8), menu=[REDUCED, SMALL])
    return folder


@pytest.fixture(scope="module")
def long_questions(squad_dir) -> list[squad.SquadExample]:
    return squad.load_squad("dev", limit=6, offset=250, neighbours=1)  # contexts of several windows


def kit_source(folder) -> str:
    """The model folder a run-time artifact was exported from (its manifest says)."""
    from toolchain.artifact import manifest as manifests

    return manifests.load(folder).source_model


def test_manifest_records_menu_and_validation(runtime_dir):
    manifest = manifests.load(runtime_dir)
    assert manifest.is_runtime and manifest.interface.inputs[-1] == KEEP_INPUT
    labels = [c.label for c in manifest.menu_configs()]
    assert labels == ["full", REDUCED, SMALL], "full comes first: what a server runs when idle"
    checked = manifest.validation["configs"]
    assert set(checked) == set(labels)
    assert all(c["max_abs_diff"] <= DEFAULT_ATOL for c in checked.values())
    assert all(min(c["kept_agreement"] or [1.0]) == 1.0 for c in checked.values())
    assert manifest.menu[2].macs_ratio < manifest.menu[1].macs_ratio < manifest.menu[0].macs_ratio == 1.0
    assert manifest.feeding == {"batchable": True, "pad_to_seq_len": False}


@pytest.mark.parametrize("protocol", [Protocol.UNPADDED, Protocol.BUCKETED])
def test_equals_single_configuration_graphs(runtime_dir, exported_root, trained_dir, long_questions, protocol):
    """At the full and the reduced configuration, the run-time graph keeps the same tokens as that configuration's
    own graph and its logits agree within the export tolerance, on windows of real running text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained_dir, local_files_only=True)
    features = squad.featurize(long_questions, tokenizer, max_length=384, doc_stride=128)
    assert (features.attention_mask.sum(1) == 384).mean() > 0.5, "the slice must hold full windows"
    runtime = onnx_session(runtime_dir / "model.onnx")
    real = features.attention_mask.astype(bool)
    for config, folder in (("full", "fp32-full"), (REDUCED, "fp32-" + REDUCED.replace(",", "-"))):
        keep = [384] * 6 if config == "full" else [int(k) for k in config.split(",")]
        got = predict_onnx(runtime, features, protocol=protocol, keep=keep)
        want = predict_onnx(onnx_session(exported_root / folder / "model.onnx"), features, protocol=protocol)
        assert np.abs(got.start_logits - want.start_logits)[real].max() <= DEFAULT_ATOL
        assert np.abs(got.end_logits - want.end_logits)[real].max() <= DEFAULT_ATOL
        if want.kept is not None:
            assert kept_agreement(want, got, features.attention_mask) == [1.0] * 6


def test_kit_runs_the_named_entry(runtime_dir, exported_root, long_questions):
    kit = Artifact.open(runtime_dir)
    own = Artifact.open(exported_root / ("fp32-" + REDUCED.replace(",", "-")))
    for e in long_questions[:3]:
        named = kit.answer(e.question, e.context, config=REDUCED)
        alone = own.answer(e.question, e.context)
        assert (named.text, named.start) == (alone.text, alone.start)
        assert named.score == pytest.approx(alone.score, abs=2 * DEFAULT_ATOL)
        assert named.config == REDUCED and kit.answer(e.question, e.context).config == "full"
    assert kit.answer(e.question, e.context, config=[int(k) for k in SMALL.split(",")]).config == SMALL
    with pytest.raises(ConfigError, match="not on the menu"):
        kit.answer(e.question, e.context, config="200,100,100,50,20,10")
    with pytest.raises(ConfigError, match="increases"):
        kit.answer(e.question, e.context, config=[100, 200, 100, 50, 20, 10])
    with pytest.raises(ConfigError, match="runs one configuration"):
        own.answer(e.question, e.context, config="full")
    with pytest.raises(ConfigError, match="budget needs a run-time"):
        own.answer(e.question, e.context, budget_ms=50.0)
    assert own.answer(e.question, e.context, config=REDUCED).config == REDUCED  # its own configuration is fine
    assert [m["label"] for m in kit.describe()["menu"]] == ["full", REDUCED, SMALL]


def test_budget_picks_the_most_accurate_entry_that_fits(runtime_dir, long_questions):
    kit = Artifact.open(runtime_dir)
    times = kit.measure_menu(rounds=3)
    e = long_questions[0]
    lengths = [len(ids) for ids in kit.windows(e.question, e.context).input_ids]
    full = times.predict("full", lengths)
    assert kit.answer(e.question, e.context, budget_ms=full * 10).config == "full"
    fastest = min(kit.menu, key=lambda m: times.predict(kit.label(m), lengths))
    assert kit.answer(e.question, e.context, budget_ms=1e-3).config == kit.label(fastest)
    with pytest.raises(ConfigError, match="not both"):
        kit.answer(e.question, e.context, config="full", budget_ms=5.0)


def test_choose_ranks_by_recorded_f1_then_by_cost():
    """menu.choose on a hand-made timing table: the rule, not the clock."""
    full, mid, small = (MenuEntry((k,) * 2, f1=f1, macs_ratio=r) for k, f1, r in
                        ((384, {"p": 80.0}, 1.0), (300, {"p": 81.0}, 0.8), (100, {"p": 60.0}, 0.3)))
    times = MenuTimes((192, 384), {full.label: (10.0, 20.0), mid.label: (9.0, 16.0), small.label: (5.0, 8.0)})
    # the full entry (the menu's first) leads: a reduced entry's F1 above it is its scoring slice's noise;
    # then recorded F1 decides, not MACs
    assert by_accuracy([full, small, mid]) == [full, mid, small]
    assert choose([full, mid, small], times, [384, 384], budget_ms=40) == full
    assert choose([full, mid, small], times, [384, 384], budget_ms=35) == mid
    assert choose([full, mid, small], times, [384, 384], budget_ms=31) == small
    assert choose([full, mid, small], times, [384] * 10, budget_ms=1) == small  # nothing fits: the fastest
    assert times.predict(full.label, [96, 288]) == pytest.approx(5.0 + 15.0)
    unranked = [MenuEntry(e.keep, macs_ratio=e.macs_ratio) for e in (full, small, mid)]
    assert [e.keep[0] for e in by_accuracy(unranked)] == [384, 300, 100]


def post(url: str, body) -> tuple[int, object]:
    request = urllib.request.Request(url + "/answer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_holds_a_latency_target(runtime_dir, long_questions, dev_examples):
    """Idle: full. Queued work whose full-model time would pass the target: a cheaper entry. Named entries and
    budgets are honoured; every answer says which configuration produced it."""
    kit = Artifact.open(runtime_dir)
    times = kit.measure_menu(rounds=3)
    target = 1.5 * times.predict("full", [384])
    with ServerThread(kit, max_batch=16, max_wait_ms=50, latency_target_ms=target) as url:
        short = dev_examples[0]
        status, answer = post(url, {"question": short.question, "context": short.context})
        assert status == 200 and answer["config"] == "full"
        status, answers = post(url, [{"question": short.question, "context": short.context, "config": SMALL},
                                     {"question": short.question, "context": short.context}])
        assert [a["config"] for a in answers] == [SMALL, "full"]
        body = [{"question": e.question, "context": e.context} for e in long_questions]
        results: list = []
        clients = [threading.Thread(target=lambda: results.append(post(url, body))) for _ in range(2)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        configs = {a["config"] for status, answers in results for a in answers}
        assert all(status == 200 for status, _ in results)
        assert configs and "full" not in configs, f"under load the server must run cheaper entries, ran {configs}"
        assert post(url, {"question": short.question, "context": short.context, "config": "1,1"})[0] == 422
        assert post(url, {"question": short.question, "context": short.context, "budget_ms": -1})[0] == 422
        health = json.loads(urllib.request.urlopen(url + "/health").read())
        assert health["latency_target_ms"] == target and health["menu_times"]["lengths"]
        assert sum(health["stats"]["configs"].values()) == health["stats"]["questions"]


def test_latency_target_needs_a_menu(exported_root):
    from qtool_runtime.serve import create_app

    with pytest.raises(ConfigError, match="run-time configuration graph"):
        create_app(Artifact.open(exported_root / "fp32-full"), latency_target_ms=50.0)


def test_static_int8_is_calibrated_and_scored_across_the_menu(runtime_dir, long_questions, tmp_path):
    from toolchain.core.settings import QuantizeSettings
    from toolchain.quantize.quantize import quantize_artifact

    dest = quantize_artifact(runtime_dir, tmp_path / "int8-runtime",
                             QuantizeSettings(samples=16, tune_questions=24, tolerance=100.0, recipes=("static-fp32-out",),
                                              timing_batches=(1, 2)), log=lambda _: None)
    manifest = manifests.load(dest)
    assert manifest.is_runtime and manifest.precision == "int8" and manifest.quantization["mode"] == "static"
    tuning = manifest.quantization["tuning"]
    assert tuning["configs"] == ["full", REDUCED, SMALL]
    scored = tuning["trials"][0]["f1_by_protocol"]
    assert set(scored) == {f"{p}@{c}" for p in ("unpadded", "bucketed") for c in tuning["configs"]}
    kit = Artifact.open(dest)
    e = long_questions[0]
    assert kit.answer(e.question, e.context, config=SMALL).config == SMALL


def test_cli_export_refuses_a_runtime_graph_without_a_menu(trained_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--model", str(trained_dir), "--config", "runtime", "--out", str(tmp_path / "g")])
    assert result.exit_code != 0 and "--menu" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["export", "--model", str(trained_dir), "--config", "full", "--menu", REDUCED,
                                  "--out", str(tmp_path / "g")])
    assert result.exit_code != 0 and "--config runtime" in result.output
    with pytest.raises(ExportError, match="skip different layers"):
        export_configs(trained_dir, ["runtime"], tmp_path / "g", menu=["300,skip,200,150,100,50", REDUCED])
    assert not (tmp_path / "g" / "fp32-runtime").exists()


def test_contract_refuses_a_bad_menu(runtime_dir):
    data = json.loads((runtime_dir / "manifest.json").read_text())

    def problem(m: dict) -> str | None:
        try:
            check_fields(m, lambda message: (_ for _ in ()).throw(ValueError(message)))
        except ValueError as exc:
            return str(exc)
        return None

    assert problem(data) is None
    assert "non-empty" in problem({**data, "menu": []})
    full = data["menu"][0]
    assert "keep counts" in problem({**data, "menu": [full, {"keep": [384] * 5}]})
    assert "increases" in problem({**data, "menu": [full, {"keep": [100, 200, 100, 50, 20, 10]}]})
    assert "first entry" in problem({**data, "menu": data["menu"][1:]})
    assert "f1 must map" in problem({**data, "menu": [{**full, "f1": {"paragraphs": True}}]})
    assert "macs_ratio" in problem({**data, "menu": [{**full, "macs_ratio": "cheap"}]})
    plain = {**data, "interface": {**data["interface"], "inputs": data["interface"]["inputs"][:-1]}}
    assert "only a run-time configuration graph" in problem(plain)


def test_menu_is_scored_into_the_manifest(runtime_dir, exported_root, tmp_path):
    """`qtool menu`: F1 per workload on held-out train and ms per window for every entry, and the kit then ranks
    entries by that F1."""
    from qtool_runtime.menu import by_accuracy
    from toolchain.evaluate.menu import MenuError, score_menu

    copy = tmp_path / "fp32-runtime"
    shutil.copytree(runtime_dir, copy)
    scored = score_menu(copy, questions=6, rounds=1, log=lambda _: None)
    assert scored.menu_scored["squad_file"] == "train" and len(scored.menu) == 3
    assert scored.menu_scored["left_out_trained"] == 1000  # the model's last stage trained on train's first 1,000
    kit = Artifact.open(copy)
    from toolchain.data.splits import search_examples, trained_questions

    seen = trained_questions(kit_source(copy))
    for entry, kit_entry in zip(scored.menu, kit.menu):
        assert set(entry.f1) == {squad.workload_name(0), squad.workload_name(squad.DOCUMENT_NEIGHBOURS)}
        assert entry.ms > 0
        for n in (0, squad.DOCUMENT_NEIGHBOURS):  # the recorded F1 is the kit's own answers' on the same questions
            examples = search_examples(6, 0, n, exclude=seen)
            answers = kit.answer_batch([(e.question, e.context) for e in examples], config=kit_entry)
            scores = squad.squad_scores({e.id: a.text for e, a in zip(examples, answers)}, examples)
            assert entry.f1[squad.workload_name(n)] == pytest.approx(scores["f1"], abs=0.01)
    assert [e.keep for e in by_accuracy(kit.menu)] == [e.keep for e in scored.menu[:1] + sorted(
        scored.menu[1:], key=lambda e: -e.mean_f1)]  # the full entry first, whatever 6 questions say
    with pytest.raises(MenuError, match="one configuration"):
        score_menu(exported_root / "fp32-full", questions=2)


def test_server_corrects_predictions_with_observed_batches(runtime_dir):
    """The latency target is met on predicted time scaled by what batches really took (hand-made timing table)."""
    from qtool_runtime.kit import Windows
    from qtool_runtime.serve import Batcher, _Job

    kit = Artifact.open(runtime_dir)
    full, reduced, small = (kit.label(e) for e in kit.menu)
    kit.times = MenuTimes((384,), {full: (10.0,), reduced: (8.0,), small: (4.0,)})
    batcher = Batcher(kit, max_batch=8, max_wait_ms=5.0, latency_target_ms=35.0)
    window = np.ones(384, dtype=np.int64)
    item = Windows("q", "c", [window] * 3, [window * 0] * 3, [np.zeros((384, 2), np.int64)] * 3)
    job = _Job([item], None, [None])
    assert list(batcher.plan([job])) == ["full"]  # 3 full windows: 30 ms predicted, within 35
    for _ in range(20):
        batcher.observe(kit.menu[0], [item], ms=60.0)  # runs take twice the prediction
    assert batcher.slowdown == pytest.approx(2.0, rel=0.05)
    assert list(batcher.plan([job])) == [small]  # 35 / 2: only the smallest entry's 12 ms fits
    named = _Job([item], None, [kit.entry(reduced)])
    assert list(batcher.plan([named])) == [reduced], "a named entry is honoured whatever the load"


def test_verify_reports_every_menu_entry(runtime_dir, tmp_path):
    """verify scores and times a run-time graph once per menu entry (rows <folder>@<configuration>)."""
    from toolchain.evaluate.verify import verify_artifacts

    settings = VerifySettings(limit=4, batch_sizes=(1,), rounds=1, workload_windows=4, torch_configs="none",
                              report_dir=tmp_path / "report")
    report = verify_artifacts(runtime_dir, settings, show_progress=False, log=lambda _: None)
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == [f"fp32-runtime@{c}" for c in ("full", REDUCED, SMALL)]
    assert [r["config"] for r in rows.values()] == ["full", REDUCED, SMALL]
    assert rows[f"fp32-runtime@{SMALL}"]["flops_ratio"] < rows["fp32-runtime@full"]["flops_ratio"] == 1.0
    assert all(r["latency_ms"]["real_b1"] > 0 for r in rows.values())
    assert (tmp_path / "report" / "report.md").is_file()


# --- configuration requests: one strict parser, never a silent fallback to full ----------------------------------

BAD_CONFIGS = ["abc", "", "FULL", " full", "212.0,194,189,96,81,51", REDUCED + ",", "300,250,200,150,120", ["x"],
               [[300], 250, 200, 150, 120, 100], [float("nan"), 250, 200, 150, 120, 100], "\ud800",
               [300, 250, 200, 150, 120, 51.9], [300, 250, 200, 150, 120, 100.0], [float("inf"), 194, 189, 96, 81, 51],
               float("inf"), True, 0, {"keep": [384] * 6}, [True] * 6, [10**400] * 6, "200,100,100,50,20,10"]


def test_bad_configurations_are_config_errors_never_full(runtime_dir, long_questions):
    kit = Artifact.open(runtime_dir)
    e = long_questions[0]
    for config in BAD_CONFIGS:
        with pytest.raises(ConfigError) as caught:
            kit.answer(e.question, e.context, config=config)
        assert "\n" not in str(caught.value), config
    reduced = [int(k) for k in REDUCED.split(",")]
    for config, label in ((None, "full"), ("full", "full"), ([384] * 6, "full"), (REDUCED, REDUCED), (reduced, REDUCED),
                          (tuple(reduced), REDUCED), (" " + REDUCED.replace(",", ", "), REDUCED), (kit.menu[2], SMALL)):
        assert kit.label(kit.entry(config)) == label, config


def test_cli_refuses_a_bad_config_in_one_line(runtime_dir, capsys):
    """qtool answer and qtool-runtime answer: exit 1 and one `Error:` line (the graph is opened each time)."""
    from qtool_runtime.__main__ import main as kit_main

    ask = ["--question", "Who won?", "--context", "Denver won the game."]
    for config in ("abc", "", "212.0,194,189,96,81,51", REDUCED + ","):
        result = CliRunner().invoke(main, ["answer", str(runtime_dir), *ask, "--config", config])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.startswith("Error: configuration ")
    for config in ("FULL", "300,250,200,150,120,51.9"):
        assert kit_main(["answer", str(runtime_dir), *ask, f"--config={config}"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("Error: configuration ")
    assert kit_main(["answer", str(runtime_dir), *ask, "--config", REDUCED]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == REDUCED


@pytest.fixture(scope="module")
def config_server(runtime_dir):
    """The run-time graph served with hand-made menu timings (no timing here), answering at once (no batch wait)."""
    kit = Artifact.open(runtime_dir)
    kit.times = MenuTimes((384,), {kit.label(e): (5.0 / (i + 1),) for i, e in enumerate(kit.menu)})
    with ServerThread(kit, max_batch=8, max_wait_ms=0) as url:
        yield kit, url


def raw_post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/answer", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_answers_422_for_a_bad_config_and_keeps_serving(config_server):
    """Including what used to be a 500 (Infinity, 1e400: an OverflowError) or a silent 'full' (the rest)."""
    kit, url = config_server
    good = {"question": "Who won?", "context": "Denver won the game."}
    raw = [b"[Infinity,194,189,96,81,51]", b"1e400", b"[NaN,250,200,150,120,100]", b'"\\ud800"',
           b"[300,250,200,150,120,51.9]", b'[["x"]]', b'"abc"', b"[300,250,200,150,120," + b"9" * 400 + b"]"]
    for config in raw:
        status, body = raw_post(url, b'{"question": "Who won?", "context": "Denver won the game.", "config": ' + config + b"}")
        assert status == 422 and "configuration" in body["error"], (config, body)
        status, body = post(url, {**good, "config": SMALL})
        assert status == 200 and body["config"] == SMALL
    status, body = post(url, [{**good, "config": REDUCED}, {**good, "config": "abc"}])
    assert status == 422 and body["error"].startswith("item 1: configuration 'abc'")
    assert json.loads(urllib.request.urlopen(url + "/health").read())["status"] == "ok"


INVALID = object()


def intended(config: object, layers: int = 6, seq_len: int = 384) -> object:
    """What a configuration request means by the rules written out plainly (an oracle for parse_config): 'full',
    a tuple of counts (None: skip), or None when it is not a configuration."""
    if config is None or (isinstance(config, str) and config == "full"):
        return "full"
    if isinstance(config, str):
        parts = [p.strip() for p in config.split(",")]
        values = [None if p == "skip" else int(p) if p.isascii() and p.isdigit() and len(p) < 100 else INVALID for p in parts]
    elif isinstance(config, (list, tuple)):
        values = [None if v is None or (isinstance(v, str) and v == "skip") else v if type(v) is int else INVALID
                  for v in config]
    else:
        return None
    if len(values) != layers or any(v is INVALID or (v is not None and not 1 <= v <= seq_len) for v in values):
        return None
    return tuple(values)


COUNTS = st.sampled_from([384, 300, 250, 200, 150, 120, 100, 80, 60, 40, 20, 51, 1, 0, 385, -1, 10**30])
ITEMS = COUNTS | st.sampled_from(["skip", None, 51.0, 51.9, True, float("nan"), float("inf"), "300", [300], {}])
CONFIGS = st.one_of(
    st.sampled_from([None, "full", REDUCED, SMALL, [384] * 6, [int(k) for k in SMALL.split(",")], REDUCED.replace(",", ", ")]),
    st.lists(ITEMS, min_size=5, max_size=7),
    st.lists(COUNTS.map(str) | st.sampled_from(["skip", " skip ", "212.0", "", "FULL", "x", "\u0663", "+5"]),
             min_size=5, max_size=7).map(",".join),
    st.text(max_size=30), JUNK)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(config=CONFIGS)
def test_parse_config_reads_exactly_the_intended_configuration(config):
    from qtool_runtime.contract import parse_config

    want = intended(config)
    try:
        got = parse_config(config, 6, 384)
    except ConfigError as exc:
        assert want is None and "\n" not in str(exc), (config, exc)
        return
    assert want == ("full" if got is None else got), config


@settings(max_examples=60, derandomize=True, deadline=None)
@given(config=CONFIGS)
def test_the_server_answers_the_requested_configuration_or_a_422(config_server, config):
    """Generated junk as the "config" field: never a 500, and a 200 only for a configuration on the menu, answered
    with exactly that configuration (never a silent full)."""
    kit, url = config_server
    want = intended(config)
    on_menu = {e.keep: kit.label(e) for e in kit.menu}
    expected = "full" if want == "full" else on_menu.get(want)
    status, body = post(url, {"question": "Who won?", "context": "Denver won the game.", "config": config})
    if expected is None:
        assert status == 422 and body["error"], (config, status, body)
    else:
        assert status == 200 and body["config"] == expected, (config, status, body)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(body=JUNK | st.fixed_dictionaries({"question": JUNK | st.just("Who won?"), "context": st.just("Denver won."),
                                          "budget_ms": JUNK | st.floats(0, 10**4)}))
def test_junk_bodies_are_never_a_500(config_server, body):
    kit, url = config_server
    status, answer = post(url, body)
    assert status in (200, 400, 413, 422), (body, status, answer)
    assert status != 200 or answer["config"] in {kit.label(e) for e in kit.menu}
