"""Request and response bodies of the HTTP API (SPEC §6), with their limits declared in the schema.

The caps here are the hard ones and show in the OpenAPI document; an operator may lower them through
settings (checked by the engine with the same 422 shape) but never raise them.

Request models are strict: JSON `true` or `"100"` where a number is due is a client bug to report with a
422, not a value to coerce (lax mode would read `true` as a 1 ms budget).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from model.pipeline import MAX_IMAGES_PER_POST

MAX_TEXT_CHARS = 4000
MAX_TOKENS = 1000
MAX_IMAGE_URLS = MAX_IMAGES_PER_POST  # one cap for serving and evaluation
MAX_URL_CHARS = 2048
MAX_VISION_BUDGET_MS = 30_000

_CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f]")


def _check_image_url(url: str) -> str:
    """Reject what can never be fetched; whether the address is allowed is the fetcher's decision."""
    if _CONTROL_OR_SPACE.search(url):
        raise ValueError("URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"malformed URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("URL scheme must be http or https")
    if not parts.hostname:
        raise ValueError("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URL must not carry credentials")
    return url


ImageUrl = Annotated[
    str,
    Field(min_length=1, max_length=MAX_URL_CHARS, examples=["https://example.org/photo.jpg"]),
    AfterValidator(_check_image_url),
]
Token = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S+$")]


class Options(BaseModel):
    """How much vision a request may use."""

    model_config = ConfigDict(extra="forbid", strict=True)

    vision: Literal["auto", "always", "never"] = Field(
        default="auto", description="auto: the calibrated gate decides per unit; always/never force it."
    )
    vision_budget_ms: int | None = Field(
        default=None,
        ge=0,
        le=MAX_VISION_BUDGET_MS,
        description="Time allowed for fetching images; late images fall back to text-only. "
        "Default: the server's setting.",
    )


class PostRequest(BaseModel):
    """Fields shared by both tasks: the post as text or as pre-split tokens, and its images."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = Field(
        default=None, min_length=1, max_length=MAX_TEXT_CHARS, description="The post. Give this or `tokens`."
    )
    tokens: list[Token] | None = Field(
        default=None, min_length=1, max_length=MAX_TOKENS, description="Pre-split words, instead of `text`."
    )
    image_urls: list[ImageUrl] = Field(
        default_factory=list, max_length=MAX_IMAGE_URLS, description="The post's images (http/https)."
    )
    options: Options = Field(default_factory=lambda: Options())

    @model_validator(mode="after")
    def _one_of_text_or_tokens(self) -> PostRequest:
        if (self.text is None) == (self.tokens is None):
            raise ValueError("give exactly one of `text` or `tokens`")
        if self.text is not None and not self.text.strip():
            raise ValueError("`text` is blank")
        if self.tokens is not None and len(" ".join(self.tokens)) > MAX_TEXT_CHARS:
            raise ValueError(f"`tokens` joined by spaces exceed {MAX_TEXT_CHARS} characters")
        return self


class MnerRequest(PostRequest):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "text": "Kevin Durant joins the Warriors in Oakland",
                    "image_urls": ["https://example.org/photo.jpg"],
                    "options": {"vision": "auto", "vision_budget_ms": 1500},
                }
            ]
        },
    )


class EntityRef(BaseModel):
    """An MRE argument: ``start``/``end`` (character offsets into `text`, half-open; token indices when
    `tokens` is given) or ``text`` (its first word-aligned occurrence)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    start: int | None = Field(default=None, ge=0, description="Start offset (inclusive).")
    end: int | None = Field(default=None, ge=1, description="End offset (exclusive).")
    text: str | None = Field(
        default=None, min_length=1, max_length=MAX_TEXT_CHARS, description="Surface form."
    )

    @model_validator(mode="after")
    def _span_or_text(self) -> EntityRef:
        has_span = self.start is not None or self.end is not None
        if has_span and self.text is not None:
            raise ValueError("give either `start`/`end` or `text`, not both")
        if has_span:
            if self.start is None or self.end is None:
                raise ValueError("`start` and `end` go together")
            if self.end <= self.start:
                raise ValueError("empty span: `end` must be greater than `start`")
        elif self.text is None:
            raise ValueError("give `start`/`end` or `text`")
        elif not self.text.strip():
            raise ValueError("`text` is blank")
        return self


class MreRequest(PostRequest):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "text": "Kevin Durant joins the Warriors in Oakland",
                    "head": {"start": 0, "end": 12},
                    "tail": {"text": "Warriors"},
                    "image_urls": ["https://example.org/photo.jpg"],
                }
            ]
        },
    )

    head: EntityRef = Field(description="The first argument of the relation.")
    tail: EntityRef = Field(description="The second argument of the relation.")


# ---- responses ------------------------------------------------------------------------------------


class UnitVision(BaseModel):
    gate: float = Field(description="Gate score of the unit (0..1).")
    activated: bool = Field(description="Whether image evidence was used for this unit.")
    images: list[int] = Field(description="Indices into `image_urls` of the images that fed this unit.")


class Entity(BaseModel):
    text: str
    type: str
    score: float
    start: int = Field(description="Character offset into the text (inclusive).")
    end: int = Field(description="Character offset into the text (exclusive).")
    token_start: int = Field(description="Word offset (inclusive).")
    token_end: int = Field(description="Word offset (exclusive).")
    vision: UnitVision


class ImageError(BaseModel):
    index: int = Field(description="Index into `image_urls`.")
    reason: str = Field(description="Why the image could not be used (e.g. fetch_failed:http_404).")


class VisionSummary(BaseModel):
    threshold: float | None = Field(description="Calibrated gate threshold; null means never activate.")
    units_total: int
    units_activated: int = Field(description="Units the gate sent to vision.")
    images_requested: int
    images_fetched: int = Field(description="Images downloaded for this request (cache hits excluded).")
    images_selected: int = Field(description="Distinct images detail-encoded for at least one unit.")
    fallback: str | None = Field(
        description="Why activated units answered text-only (budget_exceeded, fetch_failed:<reason>, "
        "no_images); null when vision ran as decided."
    )
    image_errors: list[ImageError] = Field(default_factory=list)


class PairVision(VisionSummary):
    gate: float = Field(description="Pair gate score.")
    activated: bool = Field(description="Whether image evidence was used for the pair.")
    images: list[int] = Field(description="Indices into `image_urls` of the images used.")


class Timings(BaseModel):
    text_encode: float = 0.0
    gate: float = 0.0
    fetch: float = 0.0
    screen: float = 0.0
    select: float = 0.0
    detail: float = 0.0
    fuse: float = 0.0
    total: float = 0.0


class ModelInfo(BaseModel):
    name: str
    version: str
    trained: bool = Field(description="False when serving randomly initialised weights.")
    warning: str | None = Field(
        default=None, description="Set when the answers cannot be trusted (untrained)."
    )


class MnerResponse(BaseModel):
    entities: list[Entity]
    vision: VisionSummary
    timings_ms: Timings
    model: ModelInfo


class RelationScore(BaseModel):
    relation: str
    score: float


class MreResponse(BaseModel):
    relation: str
    score: float
    top: list[RelationScore]
    vision: PairVision
    timings_ms: Timings
    model: ModelInfo


class ErrorDetail(BaseModel):
    field: str | None = Field(default=None, description="Dotted path of the request field at fault.")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """The one shape of every error answer."""

    error: ErrorBody
