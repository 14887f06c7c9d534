"""Commands that write graphs: export, quantize, standard, route, menu."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.length import VARIANTS
from ..evaluate.standard import NNCF_CALIB_SAMPLES
from ..core.settings import ExportSettings, QuantizeSettings
from .app import CONFIG_HELP, POSITIVE, ROOT_HELP, VARIANT_HELP, run, main
from ..artifact.manifest import load
from qtool_runtime.contract import Precision


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--config", "configs", multiple=True, required=True, help=CONFIG_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact root, e.g. graphs/minilm." + ROOT_HELP)
@click.option("--squad", "squad_file", default=ExportSettings.squad_file, show_default=True, help="SQuAD JSON for validation windows.")
@click.option("--samples", default=ExportSettings.samples, show_default=True, type=POSITIVE, help="Questions used to validate each graph against PyTorch.")
@click.option("--seq-len", default=ExportSettings.seq_len, show_default=True, type=click.IntRange(min=2), help="Sequence length the configurations are stated for (at most the model's positions).")
@click.option("--doc-stride", type=POSITIVE, default=None, help="Window overlap in tokens (default: min(128, seq-len/2)); recorded in the manifest.")
@click.option("--opset", default=ExportSettings.opset, show_default=True, type=click.IntRange(min=1))
@click.option("--atol", default=ExportSettings.atol, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Largest logit difference ONNX vs PyTorch allowed.")
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help=VARIANT_HELP)
@click.option("--menu", "menu", multiple=True, help="With --config runtime: a configuration the run-time graph is meant "
              "to run (repeatable; full is always on the menu). Each is validated against PyTorch.")
def export(model_dir, configs, out, squad_file, samples, seq_len, doc_stride, opset, atol, variant,
           menu) -> None:
    """Export one validated ONNX graph per configuration into OUT/fp32-<config>/.

    --config runtime writes OUT/fp32-runtime/: one graph whose keep counts are an input, so a deployment
    chooses the configuration per request (qtool answer --config/--budget-ms, qtool serve --latency-target-ms)."""
    from ..graph.export import export_configs

    settings = ExportSettings(squad_file=squad_file, samples=samples, seq_len=seq_len, doc_stride=doc_stride,
                              variant=variant, opset=opset, atol=atol)
    folders = run(export_configs, model_dir, configs, out, settings=settings, menu=menu)
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
@click.option("--calib", default=QuantizeSettings.calib, show_default=True, help="'squad' (shipped, offline) or a SQuAD JSON path.")
@click.option("--samples", default=QuantizeSettings.samples, show_default=True, type=POSITIVE, help="Calibration windows (static recipes).")
@click.option("--calib-neighbours", default=QuantizeSettings.calib_neighbours, show_default=True, type=click.IntRange(min=0),
              help="Take half the calibration windows from contexts widened by this many neighbouring paragraphs on each "
                   "side (full windows of running text, the document workload); needs a SQuAD file with whole articles, "
                   "e.g. --calib ../shared/squad/train-v1.1.json.")
@click.option("--tolerance", default=QuantizeSettings.tolerance, show_default=True, type=click.FloatRange(min=0), help="Largest F1 drop vs the FP32 graph a recipe may cost.")
@click.option("--tune-questions", default=QuantizeSettings.tune_questions, show_default=True, type=POSITIVE, help="Held-out SQuAD train questions each recipe is scored on (never dev).")
@click.option("--recipe", "recipe_names", multiple=True, help="Try only these recipes (default: every onnxruntime recipe); the fastest within tolerance wins. "
                   "static-openvino (with --no-tune) writes the static INT8 graph for OpenVINO Runtime (openvino extra).")
@click.option("--no-tune", is_flag=True, help="Take the first --recipe given (default: static-fp32-out, batch-invariant "
              "static INT8 that lost the least F1 on the reference model) without scoring or timing it.")
@click.option("--plain-ort", is_flag=True, help="Baseline instead: onnxruntime quantize_static with defaults, to ort-int8-<config>/.")
def quantize(path, calib, samples, calib_neighbours, tolerance, tune_questions, recipe_names, no_tune, plain_ort) -> None:
    """INT8 quantization (Intel Neural Compressor) of PATH: one fp32-* artifact or a root of them."""

    from ..artifact.artifact import find_artifacts
    from ..quantize.recipes import QuantizationError, recipes_for
    from ..quantize.quantize import check_destination, int8_destination, quantize_artifact, quantize_plain_ort

    try:
        recipes_for(recipe_names, tune=not no_tune)  # unknown names are a usage error, before any work
    except QuantizationError as exc:
        raise click.BadParameter(str(exc), param_hint="--recipe") from exc
    settings = QuantizeSettings(calib=calib, samples=samples, calib_neighbours=calib_neighbours, tolerance=tolerance,
                                tune_questions=tune_questions, recipes=tuple(recipe_names), tune=not no_tune)

    def sources():
        found = [f for f in find_artifacts(path) if load(f, check_graph=False).precision == Precision.FP32]
        if not found:
            raise QuantizationError(f"{path} holds no FP32 artifacts to quantize")
        for src in found:  # every destination before the first artifact's minutes of work
            check_destination(src, int8_destination(src, plain_ort=plain_ort))
        return found

    for src in run(sources):
        click.echo(f"quantizing {src}")
        if plain_ort:
            dest = run(quantize_plain_ort, src, int8_destination(src, plain_ort=True), calib=calib, samples=samples)
        else:
            dest = run(quantize_artifact, src, settings=settings, log=click.echo)
        click.echo(f"wrote {dest}")


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
    from ..evaluate.standard import build_standard

    run(build_standard, model_dir, out, openvino=openvino, calib_samples=calib_samples, log=click.echo)


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
    from ..graph.route import route_artifacts

    folder = run(route_artifacts, full_dir, reduced_dir, out, full_up_to=full_up_to, rounds=rounds, log=click.echo)
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
    from ..evaluate.menu import score_menu

    run(score_menu, artifact, questions=questions, offset=offset, neighbours=neighbours, log=click.echo)
    click.echo(f"recorded the menu's F1 and ms in {Path(artifact) / 'manifest.json'}")
