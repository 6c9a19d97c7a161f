"""``saver train | calibrate | evaluate | export``: parse arguments and call the workflow, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train a model from a config (training/configs/*.json)")
    p.add_argument("--config", type=Path)
    p.add_argument("--out", type=Path, help="run folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="cap optimizer steps per epoch (smoke runs)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: this rank's GPU if any)"
    )
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast dtype (fp16 needs CUDA)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its checkpoint")
    p.add_argument(
        "--stop-after", type=int, default=0, metavar="STEPS", help="checkpoint and stop after STEPS"
    )
    p.add_argument(
        "--nproc", type=int, default=0, help="run under `torchrun --standalone --nproc_per_node NPROC` (DDP)"
    )
    p.add_argument(
        "--reuse-checkpoint",
        action="store_true",
        help="skip training: refit the gate, recalibrate and re-evaluate OUT/best (same config and splits)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "calibrate",
        help="calibrate the gate threshold on held-out posts (SPEC §3); they must be used for nothing else",
    )
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument(
        "--data", nargs="+", required=True, help="held-out files; each is a group that τ must hold in"
    )
    p.add_argument("--captions", nargs="*", default=[])
    p.add_argument("--groundability")
    p.add_argument("--images", help="folder of the posts' real images")
    p.add_argument("--evidence", choices=["pseudo_tags", "caption"], default="pseudo_tags")
    p.add_argument("--alpha", type=float, default=0.10)
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--method", choices=["bonferroni", "fixed_sequence"], default="fixed_sequence")
    p.add_argument("--harm", choices=["forced_vision_wrong", "not_groundable"], default="forced_vision_wrong")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("evaluate", help="evaluate artifacts on a data file (SPEC §5)")
    p.add_argument("task", choices=["mner", "mre"])
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--captions")
    p.add_argument("--groundability")
    p.add_argument("--images", help="folder of the posts' real images (used through the image backbone)")
    p.add_argument(
        "--evidence",
        choices=["pseudo_tags", "caption"],
        default="pseudo_tags",
        help="how captions are turned into evidence text",
    )
    p.add_argument("--vision", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--predictions", type=Path, help="also write each post's answer here (JSONL)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write the artifact directory (and model card, ONNX graphs)")
    p.add_argument("--run", type=Path, required=True, help="run folder of `saver train` (or an artifact dir)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write ONNX graphs (text path, vision tiers) to OUT/onnx; large, so not for committing",
    )
    p.add_argument("--quantize", action="store_true", help="with --onnx: also an int8 text graph")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "export-graphs",
        help="export every ONNX graph the torch-free ONNX worker serves an artifact directory from",
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        action="append",
        help="artifact directory (repeatable; default: artifacts/mner and artifacts/mre)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle root; serve with SAVER_ONNX_CACHE_DIR=OUT")
    p.add_argument("--quantize", action="store_true", help="also an int8 text graph (SAVER_ONNX_QUANTIZE)")
    p.set_defaults(func=cmd_export_graphs)


_OVERRIDES = {"epochs": "epochs", "max_steps": "max_steps", "seed": "seed", "precision": "precision",
              "grad_accum": "grad_accum"}  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    from training.workflow import Launch, train

    overrides = {key: v for attr, key in _OVERRIDES.items() if (v := getattr(args, attr)) is not None}
    if args.resume is not None:
        if args.config or overrides or (args.out and args.out != args.resume):
            raise SystemExit("--resume RUN_DIR continues RUN_DIR's own config: drop --config/--out/overrides")
        args.out = args.resume
    elif args.config is None or args.out is None:
        raise SystemExit("saver train needs --config and --out (or --resume RUN_DIR)")
    if args.nproc:
        _run_under_torchrun(args)
        return
    launch = Launch(device=args.device, resume=args.resume is not None, stop_after=args.stop_after)
    metrics = train(args.config, args.out, overrides, reuse_checkpoint=args.reuse_checkpoint, launch=launch)
    if metrics:  # ranks other than 0 return nothing
        print(json.dumps(metrics, indent=2))


def _run_under_torchrun(args: argparse.Namespace) -> None:
    """``saver train --nproc N ...`` = ``torchrun --standalone --nproc_per_node N -m saver train ...``."""
    import os
    import subprocess
    import sys

    if "WORLD_SIZE" in os.environ:
        raise SystemExit("--nproc inside torchrun: launch with one or the other")
    argv = ["train", "--out", str(args.out), "--device", args.device, "--stop-after", str(args.stop_after)]
    if args.resume is not None:
        argv += ["--resume", str(args.resume)]
    else:
        argv += ["--config", str(args.config)]
    for attr in _OVERRIDES:
        if (value := getattr(args, attr)) is not None:
            argv += [f"--{attr.replace('_', '-')}", str(value)]
    if args.reuse_checkpoint:
        argv.append("--reuse-checkpoint")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
    ]
    code = subprocess.call([*torchrun, "-m", "saver", *argv])
    if code:
        raise SystemExit(code)


def _data_spec(args: argparse.Namespace, captions: list[str]):  # type: ignore[no-untyped-def]
    from training.workflow import DataSpec

    return DataSpec(
        train=[],
        dev=[],
        captions=captions,
        groundability=getattr(args, "groundability", None),
        images=args.images,
        evidence_style=getattr(args, "evidence", "pseudo_tags"),
    )


def cmd_calibrate(args: argparse.Namespace) -> None:
    from model.artifacts import load_artifacts
    from training.calibrate import CalibrationSpec, calibrate
    from training.workflow import build_evidence, dataset_name, load_examples

    model, _ = load_artifacts(args.artifacts)
    spec = _data_spec(args, args.captions)
    parts = {dataset_name(path): load_examples(model.cfg.task, [path], spec) for path in args.data}
    evidence = build_evidence(model, [e for posts in parts.values() for e in posts], spec)
    cal = CalibrationSpec(alpha=args.alpha, delta=args.delta, method=args.method, harm=args.harm)
    record = calibrate(model, parts, evidence, cal)
    record["data"] = ", ".join(args.data)
    (args.artifacts / "calibration.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model.artifacts import load_artifacts, threshold_from_calibration
    from training.workflow import build_evidence, evaluate, load_examples

    model, info = load_artifacts(args.artifacts)
    if model.cfg.task != args.task:
        raise SystemExit(f"{args.artifacts} holds a {model.cfg.task} model, not {args.task}")
    spec = _data_spec(args, [args.captions] if args.captions else [])
    examples = load_examples(args.task, [args.data], spec)
    evidence = build_evidence(model, examples, spec)
    tau = threshold_from_calibration(info.calibration)
    report = evaluate(model, examples, evidence, args.vision, tau, args.predictions)
    report["vision"] = args.vision
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: report[k] for k in ("task", "n_examples", "precision", "recall", "f1", "gate")}, indent=2
        )
    )


def cmd_export_graphs(args: argparse.Namespace) -> None:
    from model.onnx_stages import build_artifact_bundle

    for directory in args.artifacts or [Path("artifacts/mner"), Path("artifacts/mre")]:
        bundle = build_artifact_bundle(directory, args.out, quantize=args.quantize)
        print(json.dumps({"artifacts": str(directory), "task": bundle.task, "bundle": str(bundle.path)}))


def cmd_export(args: argparse.Namespace) -> None:
    from training.export import export

    if args.quantize and not args.onnx:
        raise SystemExit("--quantize needs --onnx")
    export(args.run, args.out, onnx=args.onnx, quantize=args.quantize)
