"""Scale of the knowledge index: build time, size on disk, load time, query latency and peak memory.

    python -m bench.knowledge_index --sizes 10000,100000,1000000 --queries 500 --out runs/knowledge_index

Synthetic passages (a fixed-seed Zipf draw over 50,000 made-up words: 2-word titles, `--words` words of
text) stand in for a user's own corpus such as a Wikipedia abstracts dump; queries are post-length
(`--query-words`) draws from the same distribution, so most share words with many passages, as real
posts do. Each size runs in its own child process, so its peak RSS is its own. Everything is written
under `--out` (git-ignored runs/): the 1M index is over half a gigabyte. Corpus and index are deleted
after each size unless `--keep`. The process lowers its own priority (nice 10): the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "el", "or", "is", "um"]
VOCAB_SIZE = 50_000


def synthetic_vocabulary(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < VOCAB_SIZE:
        n = int(rng.integers(2, 5))
        words.setdefault("".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n)), None)
    return list(words)


def _zipf_probabilities(n: int, exponent: float = 1.05) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def write_synthetic_corpus(path: Path, n: int, words: int, seed: int) -> None:
    vocab = np.asarray(synthetic_vocabulary(seed), dtype=object)
    p = _zipf_probabilities(len(vocab))
    rng = np.random.default_rng(seed + 1)
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            draws = vocab[rng.choice(len(vocab), size=(m, words + 2), p=p)]
            for i in range(m):
                row = draws[i]
                title = f"{row[0].capitalize()} {row[1].capitalize()}"
                text = " ".join(row[2:])
                out.write(
                    json.dumps(
                        {"id": f"syn:{start + i}", "title": title, "text": text, "source": "synthetic"}
                    )
                    + "\n"
                )


def synthetic_queries(n: int, words: int, seed: int) -> list[str]:
    vocab = synthetic_vocabulary(seed)
    p = _zipf_probabilities(len(vocab))
    rng = np.random.default_rng(seed + 2)
    return [" ".join(vocab[i] for i in rng.choice(len(vocab), size=words, p=p)) for _ in range(n)]


def measure_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One size, in this process (the parent runs each size in a fresh child)."""
    from knowledge import KnowledgeIndex, build_index

    work = Path(args.out) / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus, folder = work / "corpus.jsonl", work / "index"
    t = time.perf_counter()
    write_synthetic_corpus(corpus, n, args.words, args.seed)
    generate_s = time.perf_counter() - t
    t = time.perf_counter()
    manifest = build_index([corpus], folder)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    KnowledgeIndex.load(folder, verify=True).close()
    load_verified_s = time.perf_counter() - t
    t = time.perf_counter()
    index = KnowledgeIndex.load(folder, verify=False)
    load_s = time.perf_counter() - t
    queries = synthetic_queries(args.queries, args.query_words, args.seed)
    index.search_many(queries[:20], args.k)  # page in the mapped arrays the queries touch
    latencies = []
    for q in queries:
        t = time.perf_counter()
        index.search(q, args.k)
        latencies.append(1000 * (time.perf_counter() - t))
    index.close()
    result = {
        "passages": n,
        "vocabulary": manifest.vocabulary,
        "corpus_mb": corpus.stat().st_size / 1e6,
        "generate_s": generate_s,
        "build_s": build_s,
        "index_mb": sum(f.bytes for f in manifest.files.values()) / 1e6,
        "load_s": load_s,
        "load_verified_s": load_verified_s,
        "query_p50_ms": float(np.percentile(latencies, 50)),
        "query_p90_ms": float(np.percentile(latencies, 90)),
        "query_p99_ms": float(np.percentile(latencies, 99)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Synthetic passages of {args.words} words, queries of {args.query_words} words, k = {args.k}, "
        f"{args.queries} queries, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, nice 10.",
        "",
        "| passages | build s | index MB | load s | load + verify s | query P50 ms | P90 ms | P99 ms | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['passages']:,} | {r['build_s']:.1f} | {r['index_mb']:.1f} | {r['load_s']:.2f} | "
            f"{r['load_verified_s']:.2f} | {r['query_p50_ms']:.2f} | {r['query_p90_ms']:.2f} | "
            f"{r['query_p99_ms']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.knowledge_index", description=__doc__)
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated passage counts")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--query-words", type=int, default=15)
    p.add_argument("--words", type=int, default=40, help="words per passage text")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/knowledge_index"))
    p.add_argument("--keep", action="store_true", help="keep each size's corpus and index")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: measure one size, print JSON
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    os.nice(10)
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args)))
        return []
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    passthrough = [f"--queries={args.queries}", f"--query-words={args.query_words}", f"--words={args.words}"]
    passthrough += [f"-k={args.k}", f"--seed={args.seed}", f"--out={args.out}"] + (
        ["--keep"] if args.keep else []
    )
    for n in (int(s) for s in args.sizes.split(",")):
        child = subprocess.run(
            [sys.executable, "-m", "bench.knowledge_index", f"--one={n}", *passthrough],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows, args))
    print(markdown(rows, args))
    return rows


if __name__ == "__main__":
    main()
