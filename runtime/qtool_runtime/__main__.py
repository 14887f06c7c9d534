"""`qtool-runtime answer|serve`: the kit's two commands without the toolchain (argparse, no click)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bounds import argparse_action
from .contract import ENGINES
from .errors import one_line_errors
from .kit import read_text_file


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status: 0, 1 after one `Error:` line, 2 for a bad flag (argparse's usage error)."""
    parser = argparse.ArgumentParser(prog="qtool-runtime", description="Answer questions from a qtool artifact.")
    sub = parser.add_subparsers(dest="command", required=True)
    ans = sub.add_parser("answer", help="answer one question, print JSON")
    ans.add_argument("artifact")
    ans.add_argument("--question", required=True)
    ctx = ans.add_mutually_exclusive_group(required=True)
    ctx.add_argument("--context")
    ctx.add_argument("--context-file", type=Path)
    ans.add_argument("--threads", action=argparse_action("threads"), default=None, help="onnxruntime intra-op threads")
    ans.add_argument("--engine", choices=ENGINES, default=None, help="runtime to run on (default: the manifest's)")
    ans.add_argument("--config", default=None, help="run-time configuration graphs: the menu entry to run")
    ans.add_argument("--budget-ms", action=argparse_action("budget_ms"), default=None,
                     help="run-time configuration graphs: the most accurate entry predicted to answer within this time")
    srv = sub.add_parser("serve", help="serve POST /answer and GET /health over HTTP")
    srv.add_argument("artifact")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", action=argparse_action("port"), default=8000)
    srv.add_argument("--max-batch", action=argparse_action("max_batch"), default=8, help="most questions run together")
    srv.add_argument("--max-wait-ms", action=argparse_action("max_wait_ms"), default=5.0,
                     help="how long a request waits for others to share its batch")
    srv.add_argument("--max-body-bytes", action=argparse_action("max_body_bytes"), default=1 << 20,
                     help="larger request bodies get 413")
    srv.add_argument("--threads", action=argparse_action("threads"), default=None, help="onnxruntime intra-op threads")
    srv.add_argument("--engine", choices=ENGINES, default=None, help="runtime to run on (default: the manifest's)")
    srv.add_argument("--latency-target-ms", action=argparse_action("latency_target_ms"), default=None,
                     help="run-time configuration graphs: per batch, the most accurate entry predicted to meet this")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its usage and one error line (2), or the help (0)
        return exc.code if isinstance(exc.code, int) else 2
    from .serve import answer_json, serve

    try:
        if args.command == "answer":
            context = args.context if args.context is not None else read_text_file(args.context_file)
            print(answer_json(args.artifact, args.question, context, threads=args.threads, config=args.config,
                              budget_ms=args.budget_ms, engine=args.engine))
        else:
            serve(args.artifact, args.host, args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                  max_body_bytes=args.max_body_bytes, threads=args.threads, latency_target_ms=args.latency_target_ms,
                  engine=args.engine)
    except one_line_errors() as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
