"""``saver index build | default | search | info``: parse arguments, call the package, print.

Errors of this package print one line on stderr and exit with status 2 (no traceback: a bad corpus line
or a damaged index is the user's to fix, and the message says where)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from knowledge.build import build_index
from knowledge.default_index import DEFAULT_CACHE, ensure_default_index
from knowledge.errors import KnowledgeError
from knowledge.index import KnowledgeIndex
from knowledge.manifest import Bm25Settings, SourceInfo


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="saver index", description="build and query knowledge indexes (SPEC §8)")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build an index from passage JSONL files")
    b.add_argument(
        "--corpus",
        type=Path,
        action="append",
        required=True,
        help='JSONL of {"id","title","text","source"}; repeatable',
    )
    b.add_argument("--out", type=Path, required=True, help="index folder (replaced if it holds an index)")
    b.add_argument(
        "--licence",
        action="append",
        default=[],
        metavar="SOURCE=TEXT",
        help="licence of the passages whose source is SOURCE, recorded in the manifest; repeatable",
    )
    b.add_argument("--k1", type=float, default=Bm25Settings.k1)
    b.add_argument("--b", type=float, default=Bm25Settings.b)
    b.set_defaults(func=cmd_build)

    d = sub.add_parser("default", help="find or build the default index; prints its folder")
    d.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    d.add_argument("--rebuild", action="store_true", help="build even if a sound cached index is there")
    d.set_defaults(func=cmd_default)

    s = sub.add_parser("search", help="query an index")
    s.add_argument("--index", type=Path, required=True)
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--json", action="store_true", help="one JSON object per hit")
    s.add_argument("query", nargs="+", help="query words (joined with spaces)")
    s.set_defaults(func=cmd_search)

    i = sub.add_parser("info", help="print an index's manifest summary")
    i.add_argument("--index", type=Path, required=True)
    i.set_defaults(func=cmd_info)
    return p


def cmd_build(args: argparse.Namespace) -> None:
    licences: dict[str, SourceInfo] = {}
    for item in args.licence:
        source, sep, text = item.partition("=")
        if not sep or not source or not text:
            raise SystemExit(f"--licence expects SOURCE=TEXT, got {item!r}")
        licences[source] = SourceInfo(licence=text)
    m = build_index(args.corpus, args.out, sources=licences, settings=Bm25Settings(k1=args.k1, b=args.b))
    print(f"{args.out}: {m.passages} passages from {len(m.sources)} source(s), identity {m.identity}")


def cmd_default(args: argparse.Namespace) -> None:
    print(ensure_default_index(args.cache, rebuild=args.rebuild))


def cmd_search(args: argparse.Namespace) -> None:
    index = KnowledgeIndex.load(args.index)
    for hit in index.search(" ".join(args.query), args.k):
        p = hit.passage
        if args.json:
            print(
                json.dumps(
                    {
                        "rank": hit.rank,
                        "score": round(hit.score, 4),
                        "id": p.id,
                        "title": p.title,
                        "source": p.source,
                        "text": p.text,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            snippet = p.text if len(p.text) <= 100 else p.text[:99] + "…"
            print(f"{hit.rank + 1:>2}  {hit.score:7.3f}  [{p.source}] {p.title} ({p.id})\n      {snippet}")


def cmd_info(args: argparse.Namespace) -> None:
    m = KnowledgeIndex.load(args.index).manifest
    size = sum(f.bytes for f in m.files.values())
    print(
        f"identity   {m.identity}\npassages   {m.passages:,}\ntokens     {m.vocabulary:,}\nbytes      {size:,}"
    )
    print(
        f"builder    {m.builder_version} (bm25s {m.bm25s_version}, {m.tokenizer}, k1={m.bm25.k1} b={m.bm25.b})"
    )
    for name, s in sorted(m.sources.items()):
        print(f"source     {name}: {s.passages:,} passages, licence {s.licence}")
        if s.credit:
            print(f"           {s.credit}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=os.environ.get("SAVER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every build step at DEBUG
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KnowledgeError as exc:
        print(f"saver index: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
