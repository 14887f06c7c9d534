"""The deployment kit from the toolchain's CLI: answer, serve."""

from __future__ import annotations


import click

from qtool_runtime.bounds import click_type as bounded  # the kit's one bounds table for operational flags
from qtool_runtime.contract import ENGINES
from .app import run, main


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
        context = run(read_text_file, context_file)
    click.echo(run(answer_json, artifact, question, context, threads=threads, config=config, budget_ms=budget_ms,
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

    run(run_server, artifact, host, port, max_batch=max_batch, max_wait_ms=max_wait_ms,
         max_body_bytes=max_body_bytes, threads=threads, latency_target_ms=latency_target_ms, engine=engine)
