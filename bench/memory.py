"""``saver bench memory``: one worker's resident memory after warm-up and its time to ready, per backend,
in one run on the same posts.

Arms (each a fresh ``saver serve``, one worker, the shipped artifacts):
- ``onnx-lean``: the ONNX backend from graphs exported ahead of time (``saver export-graphs``), with torch
  and transformers made unimportable (bench/torch_blocker), as in the CPU image;
- ``onnx-first-start``: the ONNX backend with an empty graph cache, so torch is imported to build the
  graphs first (what every start did before the graphs were exported ahead of time);
- ``onnx-torch-installed``: the exported graphs with torch importable (the `make serve` venv);
- ``torch``: the torch backend.
Each gets the same posts after ``/readyz``: text-only ``/mner`` and ``/mre``, then ``/mner`` with vision
forced on JPEGs from a local CDN stand-in. RSS is ``VmRSS`` of the process tree (the worker and its
parent), read after warm-up and after the posts; ``VmHWM`` is the peak.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.cdn import CdnConfig, CdnServer
from bench.service_process import REPO, _descendants, peak_rss_mb, start_service

log = logging.getLogger(__name__)

BLOCKER = REPO / "bench" / "torch_blocker"
POSTS = [
    "Barack Obama spoke in Chicago on Monday",
    "RT @nytimes : Taylor Swift performs in London tonight 🎤 https://t.co/x",
    "Kevin Durant joins the Golden State Warriors tonight in #Oakland @warriors 🏀",
    "Manchester United beat Arsenal at Old Trafford as Ronaldo scored twice in the second half",
    "Happy birthday to my best friend @jess ! see you in Paris next week #travel",
    "Apple and Google shares fall as the Nasdaq closes lower on Friday",
]
ARMS = ("onnx-lean", "onnx-first-start", "onnx-torch-installed", "torch")


def rss_mb(pid: int) -> float:
    """Current resident memory (VmRSS) of ``pid`` and its descendants, in MiB."""
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def arm_env(arm: str, graphs: Path, scratch: Path) -> dict[str, str]:
    env = {
        "SAVER_BACKEND": "torch" if arm == "torch" else "onnx",
        "SAVER_MNER_ARTIFACTS": str(REPO / "artifacts/mner"),
        "SAVER_MRE_ARTIFACTS": str(REPO / "artifacts/mre"),
        "SAVER_WORKERS": "1",
        "SAVER_FAKE_MODEL": "false",
        "SAVER_ALLOW_LOOPBACK": "true",
        "SAVER_LOG_LEVEL": "WARNING",
        "SAVER_ONNX_CACHE_DIR": str(scratch / "empty-cache" if arm == "onnx-first-start" else graphs),
    }
    if arm == "onnx-lean":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BLOCKER), os.environ.get("PYTHONPATH", "")) if p)
    return env


def drive(base_url: str, cdn: CdnServer, rounds: int) -> int:
    sent = 0
    with httpx.Client(base_url=base_url, timeout=120) as http:
        for r in range(rounds):
            for i, text in enumerate(POSTS):
                http.post("/mner", json={"text": text, "options": {"vision": "never"}}).raise_for_status()
                words = text.split()
                body = {"text": text, "head": {"text": words[0]}, "tail": {"text": words[-1]}}
                http.post("/mre", json=body).raise_for_status()
                urls = [f"{cdn.base_url}/img/{r}-{i}/{k}.jpg" for k in range(2)]
                forced = {"text": text, "image_urls": urls, "options": {"vision": "always"}}
                http.post("/mner", json=forced).raise_for_status()
                sent += 3
    return sent


def run_arm(arm: str, graphs: Path, scratch: Path, cdn: CdnServer, rounds: int) -> dict[str, Any]:
    started = time.monotonic()
    service = start_service(arm_env(arm, graphs, scratch), scratch / f"{arm}.log", ready_timeout_s=600)
    try:
        ready_s = time.monotonic() - started
        time.sleep(1.0)
        after_warmup = rss_mb(service.pid)
        sent = drive(service.base_url, cdn, rounds)
        time.sleep(1.0)
        return {
            "arm": arm,
            "ready_s": round(ready_s, 2),
            "rss_after_warmup_mib": round(after_warmup, 1),
            "rss_after_posts_mib": round(rss_mb(service.pid), 1),
            "peak_rss_mib": round(peak_rss_mb(service.pid) or 0.0, 1),
            "posts": sent,
            "processes": len(_descendants(service.pid)),
        }
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saver bench memory", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--graphs", type=Path, default=REPO / ".cache/onnx", help="exported graphs (built if missing)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="passes over the posts per arm")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    export = [sys.executable, "-m", "saver.cli", "export-graphs", "--out", str(args.graphs)]
    subprocess.run(export, cwd=REPO, check=True, capture_output=True)  # found, not rebuilt, when present
    rows = []
    with CdnServer(CdnConfig(latency_ms=5.0, jitter_ms=1.0, n_images=4)) as cdn:
        for arm in args.arms:
            scratch = args.out / "work"
            scratch.mkdir(parents=True, exist_ok=True)
            rows.append(run_arm(arm, args.graphs, scratch, cdn, args.rounds))
            log.info("%s", json.dumps(rows[-1]))
    report = {"command": "saver bench memory " + " ".join(argv or sys.argv[1:]), "arms": rows}
    (args.out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
