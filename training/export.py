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
    lines += [
        "",
        *gate_section(metrics, task),
        "",
        *calibration_section(cal),
        "",
        *check_section(metrics, cal),
    ]
    dev = metrics.get("dev", {})
    if dev:
        lines += [
            "",
            "## Dev figures"
            + (
                " (caption-derived evidence, not real images)"
                if task == "mner"
                else " (image evidence exists for only a few posts here, so the vision modes barely differ)"
            ),
            "",
            "Whole valid splits (selection, calibration and check parts together; `auto` at the calibrated τ)."
            " Posts fetching images = share of posts with at least one activated unit (`always`: every post).",
            "",
            "| split | vision | P | R | F1 | posts fetching images | units activated | harm among activated |"
            " groundability AUROC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in ("never", "auto", "always"):
            for split, r in dev.get(mode, {}).items():
                g = r.get("gate", {})
                lines.append(
                    f"| {split} | {mode} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} |"
                    f" {_fmt(g.get('requests_activated'))} | {_fmt(g.get('units_activated'))} |"
                    f" {_fmt(g.get('harm_rate_activated'))} | {_fmt(g.get('auroc_groundability'))} |"
                )
        held = metrics.get("dev_held_out") or {}
        if held:
            lines += [
                "",
                "The same on the calibration and check parts only (posts that no choice of checkpoint or gate read):",
                "",
                "| split | vision | P | R | F1 | posts fetching images |",
                "|---|---|---|---|---|---|",
            ]
            for mode in ("never", "auto", "always"):
                for split, r in held.get(mode, {}).items():
                    lines.append(
                        f"| {split} | {mode} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} |"
                        f" {_fmt(r['gate'].get('requests_activated'))} |"
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


def gate_section(metrics: dict[str, Any], task: str) -> list[str]:
    lines = ["## The gate"]
    fit = metrics.get("gate_fit") or {}
    if fit:
        lines.append(
            f"- Refitted on the frozen text features after training; target `{fit['chosen']}`, chosen on the"
            f" selection part of dev by a rule fixed beforehand: {fit['rule']}."
        )
        lines += [
            "",
            "| target | dataset (selection part) | gate AUROC | type-prior AUROC | auto F1 | posts fetching |",
        ]
        lines.append("|---|---|---|---|---|---|")
        for target, report in fit.get("candidates", {}).items():
            for name, d in report["datasets"].items():
                lines.append(
                    f"| {target} | {name} | {_fmt(d['auroc']['gate'])} | {_fmt(d['auroc']['type_prior'])} |"
                    f" {_fmt(d['auto_f1'])} | {_fmt(d['requests_activated'])} |"
                )
    elif task == "mre":
        lines.append(
            "- Trained jointly with the model on the utility target (no separate fit). What it can and cannot be"
            " calibrated on: MNRE has no groundability annotation, so the gate cannot be judged against"
            " groundability; and only a few dozen MNRE posts have an image here (no captions), so the harm of"
            " activating a pair (its answer with vision on is wrong) is, for nearly every calibration pair, the"
            " harm of its text-only fallback. The calibration below is therefore a statement about the text"
            " answers of high-gate pairs, not about vision; with real images (a manifest, SPEC §7) the same"
            " command calibrates it on vision."
        )
    else:
        lines.append("- Trained jointly with the model (no separate fit).")
    auroc = metrics.get("gate_auroc") or {}
    if auroc:
        lines += ["", "Against groundability on the annotated gold entities of the whole valid splits:", ""]
        lines += ["| split | entities | gate AUROC | entity-type prior AUROC |", "|---|---|---|---|"]
        for name, a in auroc.items():
            lines.append(f"| {name} | {a['n']} | {_fmt(a['gate'])} | {_fmt(a['type_prior'])} |")
        for name, a in (metrics.get("gate_auroc_held_out") or {}).items():
            lines.append(
                f"| {name}, calibration + check parts only | {a['n']} | {_fmt(a['gate'])} | {_fmt(a['type_prior'])} |"
            )
    return lines


def calibration_section(cal: dict[str, Any]) -> list[str]:
    lines = ["## Gate calibration (SPEC §3)"]
    if not cal:
        return [*lines, "- Not calibrated: the service uses τ = 0.5."]
    split = cal.get("split", {})
    lines.append(
        f"- Method {cal.get('method')} (fixed in the training config before calibration ran), α = {cal.get('alpha')},"
        f" δ = {cal.get('delta')}, harm = {cal.get('harm_definition')}, n = {cal.get('n')} eligible units"
        f" ({cal.get('eligibility', 'n/a')}); evidence: {cal.get('evidence', 'n/a')}."
    )
    if split:
        parts = "; ".join(
            f"{d}: " + ", ".join(f"{p} {v['posts']}" for p, v in by_part.items())
            for d, by_part in split.get("parts", {}).items()
        )
        lines.append(f"- Posts: {split.get('rule')} (seed {split.get('seed')}). {parts}.")
    if cal.get("per_dataset"):
        lines.append(
            "- τ had to be certified on each dataset separately (an intersection-union test at the method's"
            " level), so the guarantee holds for every dataset at once and not only for their mixture."
        )
    lines.append(
        "- Harm is judged per unit (a candidate span's or pair's own label after vision), as in the paper;"
        " the decoder's choice among overlapping spans is not part of it. Clopper–Pearson treats units as"
        " independent draws, while units of one post share their text and images: the bound is exact for"
        " posts drawn independently with one unit each, and somewhat optimistic with several."
    )
    if cal.get("scan_start_tau") is not None:
        lines.append(
            f"- The fixed-sequence scan started at τ = {_fmt(cal['scan_start_tau'])}: thresholds above it activate"
            " too few calibration units to be certified even with zero harms (decided from the scores alone)."
        )
    lines.append(
        f"- τ = {_fmt(cal.get('tau'))} (never activate: {cal.get('never_activate')}), coverage"
        f" {_fmt(cal.get('coverage'))}, empirical risk {_fmt(cal.get('empirical_risk'))}, bound {_fmt(cal.get('bound'))}."
        + (f" Reason: {cal['reason']}" if cal.get("reason") else "")
    )
    stopped = cal.get("never_activate")
    for name, g in (cal.get("groups") or {}).items():
        where = f"at τ = {_fmt(g.get('tau'))}" + (", where the scan stopped" if stopped else "")
        lines.append(
            f"  - {name} {where}: {int(g['n_activated'])}/{int(g['n'])} units above it, harm {_fmt(g['risk'])},"
            f" bound {_fmt(g['bound'])}"
        )
    if cal.get("never_activate"):
        lines.append("- No threshold was certified: `auto` never consults images; `always` still can.")
    return lines


def check_section(metrics: dict[str, Any], cal: dict[str, Any]) -> list[str]:
    check = metrics.get("check") or {}
    lines = ["## Check split: realised harm among activated units"]
    if not check:
        return [*lines, "- No check split was held out."]
    level = check.get("interval_level", 0.95)
    lines += [
        f"Posts used for nothing else; `auto` at τ = {_fmt(check.get('tau'))}; harm = {check.get('harm_definition')};"
        f" {level:.0%} Clopper–Pearson interval; target: harm ≤ α = {check.get('alpha')}.",
        "",
        "| dataset | posts | units activated | harmful | harm rate | interval | entity posts activated |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in check.items():
        if not isinstance(r, dict):
            continue
        interval = r.get("interval")
        shown = "n/a" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
        share = r["entity_posts_activated"] / r["entity_posts"] if r.get("entity_posts") else None
        lines.append(
            f"| {name} | {r['posts']} | {r['units_activated']} | {r['harmful_activated']} | {_fmt(r['harm_rate'])} |"
            f" {shown} | {r['entity_posts_activated']}/{r['entity_posts']} ({_fmt(share)}) |"
        )
    return lines


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
    """The graph bundle of ``artifact`` into ``artifact/onnx``, keyed by the hash of its files, so the
    service (with or without torch) serves from it instead of building its own."""
    from model.onnx_stages import build_artifact_bundle

    build_artifact_bundle(artifact, artifact / "onnx", quantize=quantize)
