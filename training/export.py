"""``saver export``: copy a run's artifact directory into place and write its model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from model.artifacts import read_json


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def model_card(artifact: Path) -> str:
    config = read_json(artifact / "config.json")
    cfg = config["model"]
    metrics = read_json(artifact / "metrics.json") if (artifact / "metrics.json").is_file() else {}
    cal = read_json(artifact / "calibration.json") if (artifact / "calibration.json").is_file() else {}
    task = cfg["task"]
    lines = [
        f"# {config.get('name')} {config.get('version')} — SAVER {task.upper()} model card",
        "",
        "## What it is",
        f"- Task: {'multimodal named entity recognition' if task == 'mner' else 'multimodal relation extraction'};"
        f" labels: {', '.join(cfg['labels'])}.",
        f"- Text encoder: `{cfg['encoder']}` (all-MiniLM-L6-v2, frozen) with LoRA adapters (rank {cfg['lora_rank']})"
        f" and a word-shape embedding; only adapters, heads, gate, evidence projections and the set transformer"
        f" are stored in `weights.safetensors` (fp16).",
        f"- Vision backbone at serving time: `{cfg['vision_backbone']}` (frozen); evidence channels read by this model:"
        f" {', '.join(cfg['evidence_channels'])}.",
        "",
        "## How vision was seen in training",
    ]
    style = metrics.get("evidence_style", "unknown")
    if task == "mner":
        lines += [
            "- The Twitter-2015/2017 images are not available to us. Each post's BLIP-2 caption stands in for its image"
            f" through the evidence-text channel, rewritten as `{style}`: the caption's five nearest ImageNet class"
            " names (by the base MiniLM encoder), phrased exactly as the service phrases the EfficientNet-Lite0 top-5"
            " tags of a real image (`a photo of tag1, tag2, ...`). The image-feature channel was never trained and is"
            " switched off in this model's config.",
            "- Consequence: at serving time vision evidence is only as good as EfficientNet's ImageNet tags; figures"
            " below are measured with caption-derived evidence, not real images.",
        ]
    else:
        lines += [
            "- MNRE provides no captions and the images are not available here (32 sample images only). The vision"
            " path (evidence projection, set transformer, vision head, whose last layer starts at zero) therefore saw"
            " evidence only for the posts whose image was present; for all other posts it received no training signal."
            " The gate's calibration below says how often it may activate.",
            "- To train it on real images: write a JSONL manifest (SPEC §7) with image paths, set `data.images` in"
            ' `training/configs/mre.json` to the image root, enable `"evidence_channels": ["image", "text"]`,'
            " and run `saver train`; evidence is then built with the same backbone and tags as the service uses.",
        ]
    lines += ["", "## Gate calibration (SPEC §3)"]
    if cal:
        lines.append(
            f"- Method {cal.get('method')}, α = {cal.get('alpha')}, δ = {cal.get('delta')}, harm ="
            f" {cal.get('harm_definition')}, n = {cal.get('n')} units from {cal.get('data', 'held-out data')}."
        )
        lines.append(
            f"- τ = {_fmt(cal.get('tau'))} (never activate: {cal.get('never_activate')}), coverage"
            f" {_fmt(cal.get('coverage'))}, empirical risk {_fmt(cal.get('empirical_risk'))}, bound {_fmt(cal.get('bound'))}."
            + (f" Reason: {cal['reason']}" if cal.get("reason") else "")
        )
    else:
        lines.append("- Not calibrated: the service uses τ = 0.5.")
    dev = metrics.get("dev", {})
    if dev:
        lines += [
            "",
            "## Dev figures"
            + (
                " (caption-derived evidence, not real images)"
                if task == "mner"
                else " (no image evidence exists for these posts, so the three vision modes coincide)"
            ),
            "",
            "| split | vision | P | R | F1 | activation rate (units) | requests activated | harm among activated | groundability AUROC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in ("never", "auto", "always"):
            for split, r in dev.get(mode, {}).items():
                g = r.get("gate", {})
                lines.append(
                    f"| {split} | {mode} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} |"
                    f" {_fmt(g.get('activation_rate'))} | {_fmt(g.get('requests_activated'))} |"
                    f" {_fmt(g.get('harm_rate_activated'))} | {_fmt(g.get('auroc_groundability'))} |"
                )
        if metrics.get("dev_note"):
            lines.append(f"\n{metrics['dev_note']}")
        lines.append(f"\nTraining time: {_fmt(dev.get('train_seconds'))} s on 2 CPU cores.")
    lines += [
        "",
        "## Limits",
        "- English tweets from 2015–2018; other domains untested.",
        "- Uncased encoder: casing reaches the model only through the word-shape embedding.",
        "- Dev figures are on the public valid splits; the test splits were never used.",
        "",
    ]
    return "\n".join(lines)


def export(run: Path, out: Path, onnx: bool = False, quantize: bool = False) -> None:
    src = run / "artifact" if (run / "artifact" / "config.json").is_file() else run
    if src.resolve() != out.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "labels.json", "weights.safetensors", "calibration.json", "metrics.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
    (out / "MODEL_CARD.md").write_text(model_card(out))
    if onnx:
        export_onnx(out, quantize)
    print(json.dumps({"exported": str(out)}))


def export_onnx(artifact: Path, quantize: bool) -> None:
    """Graphs of the model as loaded from ``artifact`` (fp16-stored weights included), so their key matches
    what the service computes and it uses them instead of building its own."""
    from model.artifacts import load_artifacts
    from model.onnx_export import export_graphs
    from model.vision import build_backbone

    model, _ = load_artifacts(artifact)
    export_graphs(model, build_backbone(model.cfg.vision_backbone), artifact / "onnx", quantize=quantize)
