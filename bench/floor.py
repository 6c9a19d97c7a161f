"""``saver bench floor``: the text path measured against the hardware floor, in one run on the same posts.

    saver bench floor --out runs/floor [--posts FILE] [--max-posts 300] [--flame docs/img/text_path_flame.svg]

**The floor** is the artifact's own MiniLM with its LoRA deltas merged, exported alone (token ids in, last
hidden states out) and run by the same ONNX Runtime with the same session options and intra-op threads as
the service (``model.onnx_pipeline.make_session``), on the same posts tokenised by the service's code.
Against it, on those posts:

- **text graph**: the project's text graph alone (encoder, span units, gate, text scores), on ready feeds;
- **text stage**: ``OnnxPipeline.encode_text`` (tokenisation, feeds, graph, ``from_graph``);
- **service c=1**: a started ``saver serve``, text-only ``POST /mner`` (``vision: never``), one client;
- **service c=8**: the same with 8 clients, in posts/s, against the floor's best batched posts/s (batch
  sizes 1–16 of length-sorted posts).

Floor, graph, stage and service c=1 run in blocks (all posts through one arm, then the next), cycled over
``--rounds``: ONNX Runtime's spinning intra-op threads of one session would otherwise steal from the other's.
``--flame`` records the service under c=1 load with py-spy into an SVG flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch import nn

from bench.service_process import ServiceProcess, peak_rss_mb, start_service
from bench.workload import read_umt_words
from model.artifacts import load_artifacts, threshold_from_calibration
from model.base import SaverBase
from model.lora import merge_lora
from model.onnx_export import DEFAULT_CACHE_DIR, GraphDir, text_graph_key
from model.onnx_pipeline import OnnxPipeline, available_cpus, make_session, onnx_pipeline

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POSTS = REPO / ".." / "shared" / "data" / "mner" / "twitter2017" / "valid.txt"
FLOOR_GRAPH = "floor.onnx"


class EncoderFloor(nn.Module):
    """The model's encoder and nothing else: LoRA merged, as in the text graph, last hidden states out."""

    def __init__(self, model: SaverBase) -> None:
        super().__init__()
        self.bert = copy.deepcopy(model.encoder.bert).eval()
        merge_lora(self.bert)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, H)


def ensure_floor_graph(model: SaverBase, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The floor graph of this model's weights, exported into the ONNX cache once."""
    key = text_graph_key(model)
    graphs = GraphDir(cache_dir / f"floor-{key}")
    found = graphs.graph(FLOOR_GRAPH, key)
    if found is not None:
        return found
    graphs.path.mkdir(parents=True, exist_ok=True)
    enc = model.encoder.prepare([["Alice", "met", "Bob", "in", "Paris"]])
    axes = {0: "batch", 1: "subwords"}
    path = graphs.path / FLOOR_GRAPH
    with torch.no_grad():
        torch.onnx.export(
            EncoderFloor(model),
            (enc.input_ids, enc.attention_mask),
            str(path),
            dynamo=False,  # the same exporter and opset as the text graph
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
            opset_version=17,
        )
    graphs.record(FLOOR_GRAPH, key)
    return path


def floor_feeds(model: SaverBase, posts: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    enc = model.encoder.prepare([list(p) for p in posts])
    return {"input_ids": enc.input_ids.numpy(), "attention_mask": enc.attention_mask.numpy()}


def timed_block(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[float]:
    """Milliseconds per item, all items through ``fn`` back to back."""
    out = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - started) * 1000.0)
    return out


def stats(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, float)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90))}


def batched_posts_per_s(
    run: Callable[[dict[str, np.ndarray]], Any], batches: list[dict[str, np.ndarray]], n: int
) -> float:
    started = time.perf_counter()
    for feeds in batches:
        run(feeds)
    return n / (time.perf_counter() - started)


async def closed_loop(base_url: str, texts: Sequence[str], clients: int, seconds: float) -> dict[str, float]:
    """Text-only /mner from ``clients`` clients for ``seconds``: answered posts/s and failures."""
    end = time.perf_counter() + seconds
    done = failed = 0
    cursor = iter(range(10**9))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal done, failed
            while time.perf_counter() < end:
                text = texts[next(cursor) % len(texts)]
                r = await client.post("/mner", json={"text": text, "options": {"vision": "never"}})
                done, failed = (done + 1, failed) if r.status_code == 200 else (done, failed + 1)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        took = time.perf_counter() - started
    return {"posts_per_s": done / took, "answered": done, "failed": failed, "seconds": took}


def record_flame(pid: int, path: Path, seconds: float, load: Callable[[], Any]) -> dict[str, Any]:
    """py-spy on the service while ``load`` runs; the SVG lands at ``path``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--pid", str(pid), "--rate", "100", "--duration", str(int(seconds)),
           "--format", "flamegraph", "--output", str(path), "--nonblocking"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # py-spy attaches
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and proc.poll() is None:
        load()
    output = proc.communicate(timeout=60)[0].decode(errors="replace")
    if path.exists():  # the SVG's title is the command line: no local paths or pids in a committed file
        path.write_text(path.read_text().replace(f"{spy} record --pid {pid}", "py-spy record --pid PID"))
    return {"command": " ".join(cmd), "exit": proc.returncode, "bytes": path.stat().st_size if path.exists() else 0,
            "log": output[-500:]}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    model, info = load_artifacts(args.artifacts)
    floor_path = ensure_floor_graph(model, args.cache_dir)
    pipeline = onnx_pipeline(
        model, info, threshold=threshold_from_calibration(info.calibration), artifacts=args.artifacts,
        cache_dir=args.cache_dir, threads=threads, release_encoder=False,
    )  # fmt: skip
    assert isinstance(pipeline, OnnxPipeline)
    floor = make_session(floor_path, threads)  # the service's session options and threads
    posts = [words for _, words in read_umt_words(args.posts)][: args.max_posts]
    texts = [" ".join(words) for words in posts]
    f_feeds = [floor_feeds(model, [p]) for p in posts]
    g_feeds = [pipeline.text_feeds([list(p)], None)[0] for p in posts]
    subwords = [int(f["attention_mask"].sum()) for f in f_feeds]

    def floor_one(feeds: dict[str, np.ndarray]) -> Any:
        return floor.run(None, feeds)

    def graph_one(feeds: dict[str, np.ndarray]) -> Any:
        return pipeline.text_session.run(None, feeds)

    env = {"SAVER_BACKEND": "onnx", "SAVER_MNER_ARTIFACTS": str(Path(args.artifacts).resolve()), "SAVER_WORKERS": "1",
           "SAVER_ONNX_THREADS": str(threads), "SAVER_LOG_LEVEL": "WARNING", "SAVER_FAKE_MODEL": "false"}  # fmt: skip
    service: ServiceProcess = start_service(env, args.out / "service.log", args.ready_timeout)
    arms: dict[str, list[float]] = {"floor": [], "text_graph": [], "text_stage": [], "service_c1": []}
    server_total: list[float] = []
    try:
        http = httpx.Client(base_url=service.base_url, timeout=30.0)

        def post_one(text: str) -> Any:
            r = http.post("/mner", json={"text": text, "options": {"vision": "never"}})
            r.raise_for_status()
            server_total.append(float(r.json()["timings_ms"]["total"]))

        for fn, items in (
            (floor_one, f_feeds),
            (graph_one, g_feeds),
            (pipeline.encode_text, texts),
            (post_one, texts),
        ):
            timed_block(fn, items[:20])  # warm-up of every arm
        server_total.clear()
        for r in range(args.rounds):
            arms["floor"] += timed_block(floor_one, f_feeds)
            arms["text_graph"] += timed_block(graph_one, g_feeds)
            arms["text_stage"] += timed_block(pipeline.encode_text, texts)
            arms["service_c1"] += timed_block(post_one, texts)
            log.info("round %d/%d: floor P50 %.2f ms", r + 1, args.rounds, np.median(arms["floor"]))
        order = sorted(range(len(posts)), key=lambda i: subwords[i])
        floor_batched: dict[str, float] = {}
        for size in args.batch_sizes:
            batches = [
                floor_feeds(model, [posts[i] for i in order[k : k + size]])
                for k in range(0, len(order), size)
            ]
            floor_batched[str(size)] = max(
                batched_posts_per_s(floor_one, batches, len(posts)) for _ in range(2)
            )
        c8 = asyncio.run(closed_loop(service.base_url, texts, args.concurrency, args.c8_seconds))
        flame = None
        if args.flame is not None:
            cycle = iter(range(10**9))
            flame = record_flame(
                service.pid, args.flame, args.flame_seconds, lambda: post_one(texts[next(cycle) % len(texts)])
            )
        rss = peak_rss_mb(service.pid)
        http.close()
    finally:
        service.stop()
    summary = {name: stats(ms) for name, ms in arms.items()}
    f50, f90 = summary["floor"]["p50_ms"], summary["floor"]["p90_ms"]
    best_batch = max(floor_batched, key=lambda k: floor_batched[k])
    ratios = {
        "text_graph_p50": summary["text_graph"]["p50_ms"] / f50,
        "span_part_of_graph": summary["text_graph"]["p50_ms"] / f50 - 1.0,
        "text_stage_p50": summary["text_stage"]["p50_ms"] / f50,
        "service_c1_p50": summary["service_c1"]["p50_ms"] / f50,
        "service_c1_p90": summary["service_c1"]["p90_ms"] / f90,
        "service_c8_vs_floor_best_batched": c8["posts_per_s"] / floor_batched[best_batch],
    }
    return {
        "arms": summary,
        "server_side_total_p50_ms": float(np.median(server_total)) if server_total else None,
        "floor_batched_posts_per_s": floor_batched,
        "floor_best_batch_size": int(best_batch),
        "service_c8": c8,
        "ratios": ratios,
        "service_peak_rss_mb": rss,
        "flame": flame,
        "config": {
            "command": "saver bench floor " + " ".join(args.argv),
            "posts": str(args.posts), "n_posts": len(posts), "mean_subwords": float(np.mean(subwords)),
            "rounds": args.rounds, "intra_op_threads": threads, "concurrency": args.concurrency,
            "artifacts": str(args.artifacts), "floor_graph": str(floor_path), "text_graph": str(pipeline.text_graph),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    a, r, cfg = report["arms"], report["ratios"], report["config"]
    lines = [
        f"# Text path against the floor ({cfg['n_posts']} posts, {cfg['mean_subwords']:.1f} subwords on average, "
        f"{cfg['intra_op_threads']} intra-op threads, {cfg['rounds']} rounds)",
        "",
        "| arm | P50 ms | P90 ms | P50 / floor |",
        "|---|---:|---:|---:|",
    ]
    for name in ("floor", "text_graph", "text_stage", "service_c1"):
        lines.append(
            f"| {name} | {a[name]['p50_ms']:.2f} | {a[name]['p90_ms']:.2f} | {a[name]['p50_ms'] / a['floor']['p50_ms']:.2f}x |"
        )
    batched = ", ".join(f"{k}: {v:.1f}" for k, v in report["floor_batched_posts_per_s"].items())
    lines += [
        "",
        f"- span/gate/score part of the text graph: {r['span_part_of_graph']:.1%} of the encoder's time",
        f"- service c=1 P90 / floor P90: {r['service_c1_p90']:.2f}x; server-side total P50 {report['server_side_total_p50_ms']:.2f} ms",
        f"- service c={cfg['concurrency']}: {report['service_c8']['posts_per_s']:.1f} posts/s = "
        f"{r['service_c8_vs_floor_best_batched']:.2f}x the floor's best batched posts/s "
        f"({report['floor_batched_posts_per_s'][str(report['floor_best_batch_size'])]:.1f} at batch {report['floor_best_batch_size']})",
        f"- floor posts/s by batch size: {batched}",
        f"- service peak RSS: {report['service_peak_rss_mb']:.0f} MiB; load average at the end {cfg['loadavg']}",
        f"- command: `{cfg['command']}`",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="saver bench floor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (floor.json, floor.md, service.log)"
    )
    p.add_argument("--posts", type=Path, default=DEFAULT_POSTS, help="UMT-format posts")
    p.add_argument("--max-posts", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3, help="blocks per arm")
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "mner")
    p.add_argument("--cache-dir", type=Path, default=REPO / DEFAULT_CACHE_DIR, help="ONNX graph cache")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the service's, all usable CPUs)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--c8-seconds", type=float, default=20.0, help="seconds of the concurrent run")
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    p.add_argument("--flame", type=Path, help="write a py-spy flame graph of the service's text path here")
    p.add_argument("--flame-seconds", type=float, default=15.0)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floor.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "floor.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main(sys.argv[1:])
