"""The one console command: ``saver serve | predict | train | calibrate | evaluate | export | bench | index``.

Subcommands import their package lazily, so ``saver serve`` never imports the training stack.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from service.cli import serve

        serve(argv[1:])
        return
    if argv and argv[0] == "predict":
        from service.predict import predict

        predict(argv[1:])
        return
    if argv and argv[0] == "bench":
        from bench.cli import main as bench_main

        bench_main(argv[1:])
        return
    if argv and argv[0] == "index":
        from knowledge.cli import main as index_main

        index_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="saver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (see `saver serve --help`)")
    sub.add_parser("predict", help="run a JSONL file of posts offline (see `saver predict --help`)")
    sub.add_parser("bench", help="benchmark the service (see `saver bench --help`)")
    sub.add_parser("index", help="build and query knowledge indexes (see `saver index --help`)")
    from training.cli import add_subcommands

    add_subcommands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("SAVER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args.func(args)


if __name__ == "__main__":
    main()
