"""Bodies of the batch routes (``POST /v1/mner:batch``, ``POST /v1/mre:batch``).

A batch is a list of posts, each exactly the body ``/mner`` or ``/mre`` takes. The items are validated one
by one, after the envelope: a bad item gets its own error (the 422 shape, fields named ``items.<i>.…``)
and never fails the others. So the envelope takes any JSON value per item, while the OpenAPI document
shows each item as the single-post request it must be.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.schemas import ErrorBody, MnerResponse, ModelInfo, MreResponse

MAX_BATCH_ITEMS = 256  # the hard cap; SAVER_BATCH_MAX_ITEMS may only lower it


def _item(model: str) -> Any:
    # Any JSON value is accepted here and validated per item; the document says what an item must be and
    # that anything else still gets its own answer (a 422 outcome), so the batch itself is never refused.
    other = {"description": "Any other JSON value: answered in its own outcome with status 422."}
    return Annotated[Any, WithJsonSchema({"anyOf": [{"$ref": f"#/components/schemas/{model}"}, other]})]


class MnerBatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"text": "Kevin Durant joins the Warriors in Oakland"},
                        {"text": "Rain again in Paris", "options": {"vision": "never"}},
                    ]
                }
            ]
        },
    )

    items: list[_item("MnerRequest")] = Field(  # type: ignore[valid-type]
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description="Posts, each a `/mner` request body. At most `SAVER_BATCH_MAX_ITEMS` (default 64).",
    )


class MreBatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "text": "Kevin Durant joins the Warriors in Oakland",
                            "head": {"text": "Kevin Durant"},
                            "tail": {"text": "Warriors"},
                        }
                    ]
                }
            ]
        },
    )

    items: list[_item("MreRequest")] = Field(  # type: ignore[valid-type]
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description="Pairs, each a `/mre` request body. At most `SAVER_BATCH_MAX_ITEMS` (default 64).",
    )


class ItemOutcome(BaseModel):
    index: int = Field(description="Position of the item in the request's `items`.")
    status: int = Field(description="What the item would have got as a single request: 200, 422 or 500.")
    error: ErrorBody | None = Field(
        default=None, description="Set when `status` is not 200; `details[].field` reads `items.<i>.…`."
    )


class MnerBatchItem(ItemOutcome):
    result: MnerResponse | None = Field(default=None, description="The `/mner` answer when `status` is 200.")


class MreBatchItem(ItemOutcome):
    result: MreResponse | None = Field(default=None, description="The `/mre` answer when `status` is 200.")


class BatchTimings(BaseModel):
    total: float = Field(description="Wall time of the whole batch in ms, queueing included.")


class MnerBatchResponse(BaseModel):
    items: list[MnerBatchItem] = Field(description="One outcome per request item, in order.")
    model: ModelInfo
    timings_ms: BatchTimings


class MreBatchResponse(BaseModel):
    items: list[MreBatchItem] = Field(description="One outcome per request item, in order.")
    model: ModelInfo
    timings_ms: BatchTimings
