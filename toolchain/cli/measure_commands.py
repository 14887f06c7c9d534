"""Commands that measure artifacts: verify, bench."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.windows import PROTOCOLS
from ..core.settings import BenchSettings, QuantizeSettings, TorchReference, VerifySettings
from qtool_runtime.bounds import click_type as bounded  # the kit's one bounds table for operational flags
from qtool_runtime.contract import ENGINES
from .app import NEIGHBOURS_HELP, POSITIVE, ROOT_HELP, run, main


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
    from ..evaluate.report import format_table
    from ..evaluate.verify import verify_artifacts

    settings = _verify_settings(protocols=tuple(dict.fromkeys(protocols)), **options)
    report = run(verify_artifacts, path, settings, model_dir=model_dir, log=click.echo)
    click.echo(format_table(report))
    click.echo(f"report: {Path(report['report_dir']) / 'report.md'}")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, required=True, help="Reduced configuration(s) to ship (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact root, e.g. graphs/minilm." + ROOT_HELP)
@click.option("--calib-samples", default=QuantizeSettings.samples, show_default=True, type=POSITIVE, help="Calibration windows of every static recipe: qtool's and (c)'s.")
@click.option("--tolerance", default=QuantizeSettings.tolerance, show_default=True, type=click.FloatRange(min=0), help="Largest F1 drop a quantization recipe may cost.")
@click.option("--tune-questions", default=QuantizeSettings.tune_questions, show_default=True, type=POSITIVE, help="Held-out SQuAD train questions per recipe.")
@click.option("--no-standard", is_flag=True, help="Skip the standard recipe (optimum export + fusions + dynamic INT8).")
@_verify_options
def bench(model_dir, configs, out, calib_samples, tolerance, tune_questions, no_standard, **options) -> None:
    """The whole benchmark in one run: qtool's graphs and the standard recipe's, from one checkpoint, side by side."""
    from ..evaluate.bench import run_bench
    from ..evaluate.report import format_table

    quantize = QuantizeSettings(samples=calib_samples, tolerance=tolerance, tune_questions=tune_questions)
    report = run(run_bench, model_dir, configs, out, _verify_settings(**options),
                 BenchSettings(quantize=quantize, standard=not no_standard), log=click.echo)
    click.echo(format_table(report))
    click.echo(f"report: {Path(report['report_dir']) / 'report.md'}")
