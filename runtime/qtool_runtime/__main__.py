"""`qtool-runtime answer|serve`: the kit's two commands without the toolchain (argparse, no click)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import one_line_errors
from .kit import read_text_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qtool-runtime", description="Answer questions from a qtool artifact.")
    sub = parser.add_subparsers(dest="command", required=True)
    ans = sub.add_parser("answer", help="answer one question, print JSON")
    ans.add_argument("artifact")
    ans.add_argument("--question", required=True)
    ctx = ans.add_mutually_exclusive_group(required=True)
    ctx.add_argument("--context")
    ctx.add_argument("--context-file", type=Path)
    ans.add_argument("--threads", type=int, default=None)
    ans.add_argument("--config", default=None, help="run-time configuration graphs: the menu entry to run")
    ans.add_argument("--budget-ms", type=float, default=None,
                     help="run-time configuration graphs: the most accurate entry predicted to answer within this time")
    srv = sub.add_parser("serve", help="serve POST /answer and GET /health over HTTP")
    srv.add_argument("artifact")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-batch", type=int, default=8)
    srv.add_argument("--max-wait-ms", type=float, default=5.0)
    srv.add_argument("--max-body-bytes", type=int, default=1 << 20)
    srv.add_argument("--threads", type=int, default=None)
    srv.add_argument("--latency-target-ms", type=float, default=None,
                     help="run-time configuration graphs: per batch, the most accurate entry predicted to meet this")
    args = parser.parse_args(argv)
    from .serve import answer_json, serve

    try:
        if args.command == "answer":
            context = args.context if args.context is not None else read_text_file(args.context_file)
            print(answer_json(args.artifact, args.question, context, threads=args.threads, config=args.config,
                              budget_ms=args.budget_ms))
        else:
            serve(args.artifact, args.host, args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                  max_body_bytes=args.max_body_bytes, threads=args.threads, latency_target_ms=args.latency_target_ms)
    except one_line_errors() as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
