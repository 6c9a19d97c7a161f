"""How much of the dev entities the knowledge index knows: the measure to take before training on it.

    python -m bench.knowledge_coverage [--index DIR] [--data ../shared/data] [-k 5] [--out runs/knowledge_coverage]

For each gold mention in the MNER valid files (Twitter-2015 OTHER counted as MISC), per entity type:
- the share whose text exactly matches some passage title of each source, and of any source ("union");
- the share "found": a passage with that exact title is among the BM25 top k when the mention itself is
  the query (a lower bound on what the textual expert can see: the post as query adds context words).
Matching ignores case, a leading ``#``/``@`` and whitespace runs on both sides, and a trailing
parenthetical on titles ("Paris (Texas)" matches "Paris"). Without ``--index`` the default index is
found or built (`saver index default`). Only aggregate shares are printed and written; no post text.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from knowledge import KnowledgeIndex
from knowledge.default_index import DEFAULT_CACHE, ensure_default_index
from training.data.bio import bio_to_spans
from training.data.readers import read_umt

DATASETS = {"twitter2015": "mner/twitter2015/valid.txt", "twitter2017": "mner/twitter2017/valid.txt"}
TYPES = ("PER", "LOC", "ORG", "MISC")
_PAREN = re.compile(r"\s*\([^)]*\)\s*$")
_SPACE = re.compile(r"\s+")


def normalise_title(title: str) -> str:
    return _SPACE.sub(" ", _PAREN.sub("", title)).strip().casefold()


def normalise_mention(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lstrip("#@").strip().casefold()


def mentions(path: Path) -> list[tuple[str, str]]:
    """(mention text, type) for every gold entity of a UMT file."""
    out = []
    for example in read_umt(path, {"OTHER": "MISC"}):
        for start, end, entity_type in bio_to_spans(example.tags):
            out.append((" ".join(example.tokens[start:end]), entity_type))
    return out


def titles_by_source(index: KnowledgeIndex) -> dict[str, set[str]]:
    titles: dict[str, set[str]] = defaultdict(set)
    for doc in range(len(index)):
        p = index.passage(doc)
        titles[p.source].add(normalise_title(p.title))
    return dict(titles)


def coverage(index: KnowledgeIndex, gold: list[tuple[str, str]], k: int) -> dict[str, dict[str, float]]:
    """{row: {type or "all": percent}}; rows are each source, "union" and "found in top-k"."""
    titles = titles_by_source(index)
    union = set().union(*titles.values())
    hit_rows: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    found_cache: dict[str, bool] = {}
    for text, entity_type in gold:
        key = normalise_mention(text)
        if key not in found_cache:
            found_cache[key] = any(normalise_title(h.passage.title) == key for h in index.search(key, k))
        flags = {source: key in t for source, t in sorted(titles.items())}
        flags["union"] = key in union
        flags[f"union, found in BM25 top-{k}"] = found_cache[key]
        for row, flag in flags.items():
            hit_rows[row][entity_type].append(flag)
            hit_rows[row]["all"].append(flag)
    return {
        row: {t: 100.0 * sum(v) / len(v) for t, v in sorted(by_type.items())}
        for row, by_type in hit_rows.items()
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Index {results['index_identity'][:16]} ({results['passages']:,} passages). Share of gold valid "
        "mentions (%) whose text is a passage title:",
        "",
        "| dataset | row | mentions | all | " + " | ".join(TYPES) + " |",
        "|---|---|---:|---:|" + "---:|" * len(TYPES),
    ]
    for name, ds in results["datasets"].items():
        for row, shares in ds["coverage"].items():
            cells = " | ".join(f"{shares.get(t, 0.0):.1f}" for t in TYPES)
            lines.append(f"| {name} | {row} | {ds['mentions']:,} | {shares['all']:.1f} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.knowledge_coverage", description=__doc__)
    p.add_argument("--index", type=Path, help="index folder (default: the default index)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the default index is cached")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("runs/knowledge_coverage"))
    args = p.parse_args(argv)
    index = KnowledgeIndex.load(args.index or ensure_default_index(args.cache))
    results: dict[str, Any] = {
        "index_identity": index.identity,
        "passages": len(index),
        "k": args.k,
        "datasets": {},
    }
    for name, rel in DATASETS.items():
        gold = mentions(args.data / rel)
        results["datasets"][name] = {
            "mentions": len(gold),
            "per_type": {t: sum(1 for _, g in gold if g == t) for t in TYPES},
            "coverage": coverage(index, gold, args.k),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "coverage.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
