"""``saver bench``: SAVER's latency and FLOPs savings, side by side, against one warm service.

    saver bench --posts FILE --duration S --concurrency N --modes text,always,saver --out DIR
    saver bench ... --rate 20                       # open loop: fixed arrival rate instead of concurrency
    saver bench ... --service-env SAVER_BACKEND=onnx --service-env SAVER_MICROBATCH=true
    saver bench ... --target http://host:8000 [--service-pid PID]     # an already running service
    saver bench ... --batch-size 32                 # also each mode through POST /v1/mner:batch
    saver bench floor --out DIR [--flame F.svg]     # the text path against the bare encoder (bench/floor.py)
    saver bench feature-cache --out DIR             # training's image-feature cache per epoch (bench/feature_cache.py)
    saver bench memory --out DIR                   # one worker's RSS and time to ready per backend

Starts a CDN stand-in on 127.0.0.1 (real-size JPEGs, 80 ± 20 ms to first byte) and, unless ``--target``
is given, ``saver serve``; replays the posts (1–4 images each) in short rounds cycling the modes
``text`` (vision never), ``always`` and ``saver`` (auto); then counts FLOPs offline and writes
``DIR/bench.json``, ``DIR/bench.md``, ``DIR/latency_cdf.png`` and ``DIR/samples.jsonl``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
from itertools import zip_longest
from pathlib import Path
from typing import Any

import httpx

from bench.cdn import CdnConfig, CdnServer
from bench.load import LoadConfig, plan_rounds, run_load
from bench.report import ModeRun, Sample, markdown, plot_cdf, ratios, summarise
from bench.service_process import ServiceProcess, parse_env, peak_rss_mb, start_service
from bench.workload import BATCH_SUFFIX, VISION_OF_MODE, Post, Replay, load_posts, vision_of

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
DEFAULT_POSTS = SHARED / "mner" / "twitter2017" / "valid.txt"
DEFAULT_IMAGES = SHARED / "images"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="saver bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--posts", type=Path, help=f"UMT-format posts (default: {DEFAULT_POSTS} when present)")
    p.add_argument("--max-posts", type=int, help="use only the first N posts")
    p.add_argument(
        "--images-per-post",
        default="1-4",
        help="images per post: a range LOW-HIGH (uniform, seeded) or one number",
    )
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds over all modes")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    p.add_argument("--round", type=float, default=3.0, help="seconds per interleaved round")
    p.add_argument("--concurrency", type=int, default=4, help="closed-loop clients")
    p.add_argument("--rate", type=float, help="open loop: requests per second (replaces --concurrency)")
    p.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson", help="open-loop arrivals")
    p.add_argument("--modes", default="text,always,saver", help="comma-separated, from text,always,saver")
    p.add_argument(
        "--batch-size", type=int, default=0,
        help="also send each mode's posts N at a time through POST /v1/mner:batch (modes <mode>_batch), "
        "interleaved with the single-post rounds at the same concurrency",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seeds images per post, CDN latency, arrivals")
    p.add_argument("--vision-budget-ms", type=int, help="per-request vision budget (default: the server's)")
    p.add_argument("--timeout", type=float, default=30.0, help="client-side seconds per request")
    g = p.add_argument_group("service")
    g.add_argument("--target", help="benchmark this running service instead of starting one")
    g.add_argument("--service-pid", type=int, help="with --target: its pid, to read its peak RSS")
    g.add_argument(
        "--service-env", action="append", default=[], metavar="SAVER_KEY=VALUE",
        help="extra setting for the started service (repeat), e.g. SAVER_BACKEND=onnx",
    )  # fmt: skip
    g.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for /readyz")
    g = p.add_argument_group("CDN stand-in")
    g.add_argument("--cdn-latency-ms", type=float, default=80.0, help="mean time to first byte")
    g.add_argument("--cdn-jitter-ms", type=float, default=20.0, help="its standard deviation")
    g.add_argument("--cdn-images", type=int, default=16, help="distinct JPEGs served")
    g.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES,
        help="folder of real photos to serve, resized to 1024x768 (generated photos when absent)",
    )  # fmt: skip
    g = p.add_argument_group("FLOPs")
    g.add_argument("--flops", choices=("on", "off"), default="on", help="count GFLOPs per request")
    g.add_argument("--flops-max-texts", type=int, default=300, help="texts FLOP-counted exactly; rest fitted")
    g.add_argument(
        "--artifacts", type=Path, help="MNER artifacts for the FLOP table (default: the service's)"
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.mode_list or any(m not in VISION_OF_MODE for m in args.mode_list):
        p.error(f"--modes must be a comma-separated subset of {','.join(VISION_OF_MODE)}")
    if args.batch_size < 0 or args.batch_size > 256:
        p.error("--batch-size must be within 0..256 (the service's cap is SAVER_BATCH_MAX_ITEMS)")
    if args.batch_size:
        args.mode_list = [m for mode in args.mode_list for m in (mode, mode + BATCH_SUFFIX)]
    if args.duration <= 0 or args.round <= 0 or args.warmup < 0 or args.concurrency < 1:
        p.error("--duration and --round must be > 0, --warmup >= 0, --concurrency >= 1")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be > 0")
    if args.posts is None:
        if not DEFAULT_POSTS.is_file():
            p.error(f"--posts is required ({DEFAULT_POSTS} not found)")
        args.posts = DEFAULT_POSTS
    try:
        args.env = parse_env(args.service_env)
    except ValueError as exc:
        p.error(str(exc))
    if args.target and args.env:
        p.error("--service-env applies only to a service the bench starts (not with --target)")
    return args


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def service_models(base_url: str) -> list[dict[str, Any]]:
    try:
        models = httpx.get(f"{base_url}/v1/models", timeout=10).json().get("models", [])
    except (httpx.HTTPError, ValueError):
        return []
    keep = ("task", "name", "version", "trained", "threshold", "backbones")
    return [{k: m.get(k) for k in keep} for m in models]


def reference_artifacts(args: argparse.Namespace) -> Path:
    if args.artifacts is not None:
        return Path(args.artifacts)
    configured = Path(
        args.env.get("SAVER_MNER_ARTIFACTS") or os.environ.get("SAVER_MNER_ARTIFACTS") or "artifacts/mner"
    )
    return configured if configured.is_absolute() else REPO / configured  # the started service runs in REPO


def add_gflops(args: argparse.Namespace, cdn: CdnServer, samples: dict[str, list[Sample]]) -> dict[str, Any]:
    """Fill each answered sample's ``gflops``; return how it was done (for the report)."""
    import io

    from PIL import Image

    from bench.flops import load_reference_pipeline, measure_table, measure_texts

    pipeline, model = load_reference_pipeline(reference_artifacts(args))
    probes = [Image.open(io.BytesIO(body)).convert("RGB") for body in cdn.pool[:4]]
    while len(probes) < 4:  # a pool of fewer than 4 photos: repeat them (FLOPs do not depend on pixels)
        probes.append(probes[len(probes) % len(cdn.pool)])
    table = measure_table(pipeline, probes, model)
    log.info("FLOP table measured; counting post texts (at most %d)", args.flops_max_texts)
    answered = [s for mode in args.mode_list for s in samples[mode] if s.ok]
    # Every mode replays the same posts from the start: taking the modes' texts in turn measures the
    # posts that all modes sent first, so a cap on measured texts treats the modes alike.
    in_turn = (s.text for group in zip_longest(*(samples[m] for m in args.mode_list)) for s in group if s)
    measure_texts(pipeline, table, in_turn, args.flops_max_texts)
    exact = 0
    for s in answered:
        flops, measured = table.request_flops(s.text, s.units_activated, s.images_fetched, s.images_selected)
        s.gflops = flops / 1e9
        exact += measured
    return {
        "method": (
            f"torch FlopCounterMode on {model}: text exact for {exact}/{len(answered)} requests "
            f"({len(table.text)} distinct texts, the rest fitted on word count); stage table per image / unit"
        ),
        "table": table.describe(),
        "requests_text_exact": exact,
    }


def write_outputs(
    args: argparse.Namespace, report: dict[str, Any], samples: dict[str, list[Sample]], title: str
) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "bench.md").write_text(markdown(report, args.mode_list))
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        for mode in args.mode_list:
            for s in samples[mode]:
                f.write(json.dumps(dataclasses.asdict(s), ensure_ascii=False) + "\n")
    plot_cdf({m: samples[m] for m in args.mode_list}, out / "latency_cdf.png", title)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[Sample]]]:
    low, _, high = args.images_per_post.partition("-")
    posts: list[Post] = load_posts(
        args.posts, seed=args.seed, limit=args.max_posts, min_images=int(low), max_images=int(high or low)
    )
    cdn_config = CdnConfig(
        latency_ms=args.cdn_latency_ms,
        jitter_ms=args.cdn_jitter_ms,
        n_images=args.cdn_images,
        image_dir=args.images,
        seed=args.seed,
    )
    load = LoadConfig(
        modes=args.mode_list,
        duration_s=args.duration,
        round_s=args.round,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        rate=args.rate,
        arrivals=args.arrivals,
        timeout_s=args.timeout,
        seed=args.seed,
        batch_size=max(1, args.batch_size),
    )
    machine = machine_info()
    machine["loadavg_before"] = loadavg()
    service: ServiceProcess | None = None
    with CdnServer(cdn_config) as cdn:
        log.info("CDN at %s: %s", cdn.base_url, cdn.source)
        try:
            if args.target:
                base_url, pid, how = args.target.rstrip("/"), args.service_pid, f"targeted at {args.target}"
            else:
                service = start_service(args.env, args.out / "service.log", args.ready_timeout)
                base_url, pid = service.base_url, service.pid
                how = "started by the bench" + (
                    f" with {' '.join(f'{k}={v}' for k, v in args.env.items())}" if args.env else ""
                )
            models = service_models(base_url)
            rss_ready = peak_rss_mb(pid) if pid else None
            replay = Replay(posts, cdn.base_url, args.vision_budget_ms)
            samples, runs = asyncio.run(
                run_load(
                    base_url,
                    replay,
                    load,
                    rss_mb=(lambda: peak_rss_mb(pid)) if pid else (lambda: None),
                    cdn_requests=lambda: cdn.stats().requests,
                )
            )
        finally:
            if service is not None:
                service.stop()
        machine["loadavg_after"] = loadavg()
        flops = (
            add_gflops(args, cdn, samples) if args.flops == "on" else {"method": "not counted (--flops off)"}
        )
        cdn_info = cdn.describe()
    mner = next((m for m in models if m.get("task") == "mner"), {})
    service_info = {
        "model": f"{mner.get('name', '?')} {mner.get('version', '')}".strip(),
        "trained": mner.get("trained"),
        "how": how,
        "peak_rss_mb_when_ready": rss_ready,
        "models": models,
    }
    report = build_report(args, posts, load, samples, runs, machine, cdn_info, service_info, flops)
    return report, samples


def build_report(
    args: argparse.Namespace,
    posts: list[Post],
    load: LoadConfig,
    samples: dict[str, list[Sample]],
    runs: dict[str, ModeRun],
    machine: dict[str, Any],
    cdn_info: dict[str, Any],
    service_info: dict[str, Any],
    flops: dict[str, Any],
) -> dict[str, Any]:
    summary = {mode: summarise(samples[mode], runs[mode]) for mode in args.mode_list}
    rounds = plan_rounds(args.mode_list, args.duration, args.round)
    report: dict[str, Any] = {
        **summary,
        "ratios": ratios(summary),
        "config": {
            "command": "saver bench " + shlex.join(args.argv),
            "posts": str(args.posts),
            "n_posts": len(posts),
            "images_per_post": sum(p.n_images for p in posts) / len(posts),
            "modes": {m: vision_of(m) for m in args.mode_list},
            "batch_size": args.batch_size or None,
            "load": load.describe(),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "round_s": rounds[0][1],
            "rounds": len(rounds),
            "seed": args.seed,
            "vision_budget_ms": args.vision_budget_ms,
            "service_env": args.env,
        },
        "service": service_info,
        "cdn": cdn_info,
        "flops": flops,
        "machine": machine,
    }
    return report


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "memory":  # `saver bench memory`: RSS and time to ready per backend
        from bench.memory import main as memory_main

        memory_main(argv[1:])
        return
    if argv and argv[0] == "floor":  # `saver bench floor`: the text path against the bare encoder
        from bench.floor import main as floor_main

        floor_main(argv[1:])
        return
    if argv and argv[0] == "feature-cache":  # `saver bench feature-cache`: training's image-feature cache
        from bench.feature_cache import main as feature_cache_main

        feature_cache_main(argv[1:])
        return
    logging.basicConfig(
        level=os.environ.get("SAVER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the log
    args = parse_args(argv)
    report, samples = run(args)
    title = f"{report['service']['model']}, {report['config']['load']}"
    write_outputs(args, report, samples, title)
    print((args.out / "bench.md").read_text())


if __name__ == "__main__":
    main()
