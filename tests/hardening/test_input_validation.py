"""Bad request bodies through the HTTP API: each gets a 4xx in the one error shape, naming the field.

Rows of the table in docs/robustness.md ("Input"); the parametrize ids are the row names.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.schemas import MAX_TEXT_CHARS
from tests.hardening.helpers import GROUNDABLE, assert_error
from tests.service.apphelpers import running_app

MRE_TEXT = "Kevin Durant joins the Warriors in Oakland"  # 42 characters, 7 words


def _mre(head: dict[str, Any], tail: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"text": MRE_TEXT, "head": head, "tail": tail, **extra}


# (id, endpoint, body: a dict sent as JSON or raw bytes, status, error code, field at fault or None)
REJECTED: list[tuple[str, str, Any, int, str, str | None]] = [
    # malformed or non-object JSON
    ("json-truncated", "/mner", b'{"text": "Kevin', 422, "invalid_json", None),
    ("json-trailing-comma", "/mner", b'{"text": "Kevin",}', 422, "invalid_json", None),
    ("json-single-quotes", "/mner", b"{'text': 'Kevin'}", 422, "invalid_json", None),
    ("json-nan-literal", "/mner", b'{"text": "Kevin", "options": {"vision_budget_ms": NaN}}', 422,
     "validation_error", "options.vision_budget_ms"),
    ("json-array", "/mner", b"[1, 2]", 422, "validation_error", "body"),
    ("json-null", "/mner", b"null", 422, "validation_error", "body"),
    ("json-string", "/mner", b'"Kevin Durant"', 422, "validation_error", "body"),
    ("body-empty", "/mner", b"", 422, "validation_error", "body"),
    ("body-invalid-utf8", "/mner", b'{"text": "Kevin \xff\xfe Durant"}', 422, "invalid_json", None),
    ("json-nested-10000-deep", "/mner", b'{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 422,
     "invalid_json", None),
    # wrong types (strict: nothing is coerced)
    ("type-text-number", "/mner", {"text": 123}, 422, "validation_error", "text"),
    ("type-text-list", "/mner", {"text": ["Kevin"]}, 422, "validation_error", "text"),
    ("type-tokens-string", "/mner", {"tokens": "Kevin Durant"}, 422, "validation_error", "tokens"),
    ("type-tokens-numbers", "/mner", {"tokens": [1, 2]}, 422, "validation_error", "tokens"),
    ("type-image-urls-string", "/mner", {"text": "a", "image_urls": "https://example.org/a.jpg"}, 422,
     "validation_error", "image_urls"),
    ("type-options-string", "/mner", {"text": "a", "options": "never"}, 422, "validation_error", "options"),
    ("type-budget-string", "/mner", {"text": "a", "options": {"vision_budget_ms": "100"}}, 422,
     "validation_error", "options.vision_budget_ms"),
    ("type-budget-bool", "/mner", {"text": "a", "options": {"vision_budget_ms": True}}, 422,
     "validation_error", "options.vision_budget_ms"),
    ("type-budget-fraction", "/mner", {"text": "a", "options": {"vision_budget_ms": 1.5}}, 422,
     "validation_error", "options.vision_budget_ms"),
    ("type-head-start-string", "/mre", _mre({"start": "0", "end": 5}, {"text": "Warriors"}), 422,
     "validation_error", "head.start"),
    ("type-head-list", "/mre", _mre([0, 5], {"text": "Warriors"}), 422, "validation_error", "head"),  # type: ignore[arg-type]
    # out-of-range options
    ("option-vision-unknown", "/mner", {"text": "a", "options": {"vision": "sometimes"}}, 422,
     "validation_error", "options.vision"),
    ("option-budget-negative", "/mner", {"text": "a", "options": {"vision_budget_ms": -1}}, 422,
     "validation_error", "options.vision_budget_ms"),
    ("option-budget-over-cap", "/mner", {"text": "a", "options": {"vision_budget_ms": 30_001}}, 422,
     "validation_error", "options.vision_budget_ms"),
    # missing and unknown fields
    ("missing-all", "/mner", {}, 422, "validation_error", "body"),
    ("missing-text-with-urls", "/mner", {"image_urls": []}, 422, "validation_error", "body"),
    ("missing-mre-head", "/mre", {"text": MRE_TEXT, "tail": {"text": "Warriors"}}, 422, "validation_error",
     "head"),
    ("missing-mre-tail", "/mre", {"text": MRE_TEXT, "head": {"text": "Kevin"}}, 422, "validation_error",
     "tail"),
    ("unknown-option", "/mner", {"text": "a", "options": {"vision": "auto", "detail": True}}, 422,
     "validation_error", "options.detail"),
    ("unknown-top-level-field", "/mner", {"text": "a", "lang": "en"}, 422, "validation_error", "lang"),
    ("unknown-entity-field", "/mre", _mre({"text": "Kevin", "type": "PER"}, {"text": "Warriors"}), 422,
     "validation_error", "head.type"),
    # empty, blank and oversized text
    ("text-empty", "/mner", {"text": ""}, 422, "validation_error", "text"),
    ("text-whitespace-only", "/mner", {"text": "  \n\t  "}, 422, "validation_error", "body"),
    ("text-unicode-spaces-only", "/mner", {"text": "\u00a0\u2003\u3000"}, 422, "validation_error", "body"),
    ("text-100k-chars", "/mner", {"text": "Kevin " * 16_667}, 422, "validation_error", "text"),
    ("text-one-past-cap", "/mner", {"text": "a" * (MAX_TEXT_CHARS + 1)}, 422, "validation_error", "text"),
    ("body-over-byte-cap", "/mner", {"text": "a" * 300_000}, 413, "payload_too_large", None),
    # lone surrogates: not text at all
    ("text-lone-high-surrogate", "/mner", b'{"text": "Kevin \\ud800 Durant"}', 422, "validation_error", "text"),
    ("text-lone-low-surrogate", "/mner", b'{"text": "Kevin \\udfff Durant"}', 422, "validation_error", "text"),
    ("tokens-lone-surrogate", "/mner", b'{"tokens": ["Kevin", "\\ud83d"]}', 422, "validation_error",
     "tokens.1"),
    # tokens that disagree with text, or are not words
    ("tokens-and-text-both", "/mner", {"text": "Kevin Durant", "tokens": ["LeBron", "James"]}, 422,
     "validation_error", "body"),
    ("tokens-empty-list", "/mner", {"tokens": []}, 422, "validation_error", "tokens"),
    ("tokens-empty-string", "/mner", {"tokens": ["Kevin", ""]}, 422, "validation_error", "tokens.1"),
    ("tokens-with-space", "/mner", {"tokens": ["Kevin Durant"]}, 422, "validation_error", "tokens.0"),
    ("tokens-over-char-cap", "/mner", {"tokens": ["abcdefghij"] * 400}, 422, "validation_error", "body"),
    ("mre-tokens-and-text", "/mre", {**_mre({"start": 0, "end": 1}, {"start": 3, "end": 4}),
                                     "tokens": ["Kevin", "Durant"]}, 422, "validation_error", "body"),
    # MRE arguments out of range, empty, identical, overlapping, absent
    ("mre-head-end-past-text", "/mre", _mre({"start": 0, "end": 500}, {"text": "Warriors"}), 422,
     "validation_error", "head.end"),
    ("mre-tail-start-past-text", "/mre", _mre({"text": "Kevin"}, {"start": 100, "end": 105}), 422,
     "validation_error", "tail.end"),
    ("mre-head-negative", "/mre", _mre({"start": -3, "end": 2}, {"text": "Warriors"}), 422,
     "validation_error", "head.start"),
    ("mre-head-empty", "/mre", _mre({"start": 4, "end": 4}, {"text": "Warriors"}), 422, "validation_error",
     "head"),
    ("mre-head-reversed", "/mre", _mre({"start": 9, "end": 2}, {"text": "Warriors"}), 422,
     "validation_error", "head"),
    ("mre-head-start-only", "/mre", _mre({"start": 0}, {"text": "Warriors"}), 422, "validation_error", "head"),
    ("mre-head-span-and-text", "/mre", _mre({"start": 0, "end": 5, "text": "Kevin"}, {"text": "Warriors"}),
     422, "validation_error", "head"),
    ("mre-head-blank-text", "/mre", _mre({"text": "   "}, {"text": "Warriors"}), 422, "validation_error",
     "head"),
    ("mre-head-whitespace-span", "/mre", _mre({"start": 5, "end": 6}, {"text": "Warriors"}), 422,
     "validation_error", "head"),
    ("mre-head-text-absent", "/mre", _mre({"text": "LeBron"}, {"text": "Warriors"}), 422, "validation_error",
     "head.text"),
    ("mre-head-text-not-word-aligned", "/mre", _mre({"text": "evin"}, {"text": "Warriors"}), 422,
     "validation_error", "head.text"),
    ("mre-identical", "/mre", _mre({"start": 0, "end": 5}, {"text": "Kevin"}), 422, "validation_error", "tail"),
    ("mre-overlapping", "/mre", _mre({"start": 0, "end": 12}, {"start": 6, "end": 18}), 422,
     "validation_error", "tail"),
    ("mre-overlap-by-partial-word", "/mre", _mre({"start": 0, "end": 8}, {"start": 7, "end": 12}), 422,
     "validation_error", "tail"),
    ("mre-token-index-past-tokens", "/mre", {"tokens": ["Kevin", "met", "Bob"], "head": {"start": 0, "end": 1},
                                             "tail": {"start": 2, "end": 9}}, 422, "validation_error",
     "tail.end"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "code", "field"),
    [row[1:] for row in REJECTED],
    ids=[row[0] for row in REJECTED],
)
async def test_bad_input_gets_a_clear_4xx(
    endpoint: str, body: Any, status: int, code: str, field: str | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with running_app() as (client, _):
        r = await client.post(endpoint, content=raw, headers={"content-type": "application/json"})
        healthy = await client.post("/mner", json={"text": GROUNDABLE})
    assert_error(r, status, code, field)
    assert healthy.status_code == 200  # the bad request left nothing broken behind


async def test_non_json_content_type_and_wrong_method() -> None:
    async with running_app() as (client, _):
        form = await client.post("/mner", content=b"text=Kevin", headers={"content-type": "text/plain"})
        get = await client.get("/mner")
    assert_error(form, 422, "validation_error", "body")
    assert_error(get, 405, "method_not_allowed")


async def test_text_at_the_cap_is_accepted() -> None:
    async with running_app() as (client, _):
        r = await client.post("/mner", json={"text": ("Kevin " * 1000)[:MAX_TEXT_CHARS]})
    assert r.status_code == 200


UNICODE_POSTS = {
    "emoji-zwj-family-flag-skin-tone": "👨\u200d👩\u200d👧\u200d👦 Kevin Durant 🇺🇸 👍🏽 joins the Warriors",
    "right-to-left-and-bidi-override": "مرحبا Kevin Durant \u202eWarriors\u202c שלום עולם",
    "zero-width-space-joiner-bom": "\ufeffKevin\u200b Durant \u200d\u200c Warriors\u2060",
    "combining-marks": "Ame\u0301lie Poulain e\u0301\u0301\u0301 Z\u0351\u0352\u0357algo Warriors",
    "control-characters-and-nul": "Kevin\x00 Durant\x07 joins\x1b the Warriors\x7f",
    "astral-plane-letters": "𝐊𝐞𝐯𝐢𝐧 Durant 𠀋𠀍 Warriors",
    "only-zero-width-characters": "\u200b\u200c\u200d",
    "only-emoji": "🔥🔥🔥",
    "line-and-paragraph-separators": "Kevin\u2028Durant\u2029Warriors\r\nOakland",
}


@pytest.mark.parametrize("text", list(UNICODE_POSTS.values()), ids=list(UNICODE_POSTS))
async def test_unicode_edge_cases_answer_with_consistent_offsets(text: str) -> None:
    async with running_app() as (client, _):
        r = await client.post("/mner", json={"text": text, "options": {"vision": "never"}})
    assert r.status_code == 200, r.text
    body = r.json()
    for entity in body["entities"]:
        # Offsets are code points of the text as sent, so a client can slice its own string.
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert 0 <= entity["token_start"] < entity["token_end"]


async def test_mre_offsets_count_code_points_after_emoji() -> None:
    text = "👨\u200d👩\u200d👧 Kevin Durant met Ame\u0301lie in Oakland"
    start = text.index("Oakland")
    async with running_app() as (client, _):
        r = await client.post(
            "/mre",
            json={"text": text, "head": {"text": "Kevin Durant"}, "tail": {"start": start, "end": start + 7}},
        )
        past = await client.post(
            "/mre",
            json={"text": text, "head": {"text": "Kevin"}, "tail": {"start": start, "end": len(text) + 1}},
        )
    assert r.status_code == 200, r.text
    assert_error(past, 422, "validation_error", "tail.end")
