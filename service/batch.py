"""Many posts in one call: each item checked alone, the valid ones run together through the engine.

An item gets exactly what it would have got as a single request: the same validation (the schema, the
operator's limits, MRE argument resolution) with the same error shape, its fields named ``items.<i>.…``,
and the same answer, built by the same response code from the same model methods. Only the scheduling
differs: the text of all valid items is encoded in length-grouped batches, and the images of activated
items are fetched concurrently under one budget (``TaskEngine.infer_many``). One admission slot and one
request deadline cover the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from model.pipeline import TextRequest
from service.engine import BatchPost, Inference, TaskEngine
from service.errors import InvalidInput, ServiceError
from service.schemas import ErrorBody, ErrorDetail, MnerRequest, MreRequest, PostRequest
from service.spans import resolve_pair

if TYPE_CHECKING:
    from service.predictor import Predictor

log = logging.getLogger(__name__)

_REQUEST_OF: dict[str, type[PostRequest]] = {"mner": MnerRequest, "mre": MreRequest}


@dataclass
class ItemResult:
    index: int
    status: int
    inference: Inference | None = None
    error: ErrorBody | None = None

    def fields(
        self, build: Callable[[TaskEngine, Inference, float], BaseModel], engine: TaskEngine, started: float
    ) -> dict[str, Any]:
        """The batch item's fields, its answer built by ``build`` (the single route's response code)."""
        result = None if self.inference is None else build(engine, self.inference, started)
        return {"index": self.index, "status": self.status, "error": self.error, "result": result}


def _field_name(index: int, field: str | None, name_items: bool) -> str | None:
    """A field of item ``index``: ``items.<i>.…`` in a batch answer, the item's own path otherwise."""
    if not name_items:
        return field or None
    return f"items.{index}" + (f".{field}" if field else "")


def _invalid(index: int, exc: ValidationError, name_items: bool) -> ItemResult:
    """The route's 422 ``validation_error`` shape, for one item."""
    details = [
        ErrorDetail(
            field=_field_name(index, ".".join(str(p) for p in e.get("loc", ())), name_items),
            message=e.get("msg", ""),
        )
        for e in exc.errors()
    ]
    first = details[0] if details else None
    message = f"invalid field `{first.field or 'body'}`: {first.message}" if first else "invalid item"
    return ItemResult(index, 422, error=ErrorBody(code="validation_error", message=message, details=details))


def _service_error(index: int, exc: ServiceError, name_items: bool) -> ItemResult:
    field = _field_name(index, exc.field, name_items)
    details = [ErrorDetail(field=field, message=exc.message)] if exc.field else []
    return ItemResult(index, exc.status, error=ErrorBody(code=exc.code, message=exc.message, details=details))


def _failed(index: int, exc: Exception, name_items: bool) -> ItemResult:
    if isinstance(exc, ServiceError):
        return _service_error(index, exc, name_items)
    if isinstance(exc, ValueError):  # what the pipeline raises for an input it cannot take (e.g. no words)
        return _service_error(index, InvalidInput(f"cannot process the post: {exc}"), name_items)
    # like a single request's 500: the exception text stays in the log (written where it was caught)
    return ItemResult(index, 500, error=ErrorBody(code="internal_error", message="internal server error"))


def parse_item(
    predictor: Predictor, task: str, index: int, raw: Any, name_items: bool = True
) -> BatchPost | ItemResult:
    """One raw item as a post for the engine, or its error (the single route's checks, in its order)."""
    try:
        req = _REQUEST_OF[task].model_validate(raw)
        predictor.check_limits(req)
        head = tail = None
        if isinstance(req, MreRequest):
            head, tail = resolve_pair(req.text, req.tokens, req.head, req.tail)
    except ValidationError as exc:
        return _invalid(index, exc, name_items)
    except ServiceError as exc:
        return _service_error(index, exc, name_items)
    return BatchPost(TextRequest(req.text, req.tokens, head, tail), list(req.image_urls), req.options)


async def run_batch(
    predictor: Predictor, engine: TaskEngine, task: str, raw_items: Sequence[Any], name_items: bool = True
) -> list[ItemResult]:
    """``name_items``: error fields read ``items.<i>.…`` (the batch route); off, each item's errors name its
    own fields, as if it had been sent alone (``saver predict``, whose lines are single bodies)."""
    limit = predictor.settings.batch_max_items
    if len(raw_items) > limit:
        raise InvalidInput(f"more than {limit} items in one batch", field="items")
    parsed = [parse_item(predictor, task, i, raw, name_items) for i, raw in enumerate(raw_items)]
    valid = [(i, p) for i, p in enumerate(parsed) if isinstance(p, BatchPost)]
    out: list[ItemResult] = [p for p in parsed if isinstance(p, ItemResult)]
    if valid:
        async with predictor.admitted(f"{task}_batch"):
            outcomes = await engine.infer_many([p for _, p in valid], predictor.settings.batch_group_size)
        for (i, _), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Exception):
                out.append(_failed(i, outcome, name_items))
            else:
                out.append(ItemResult(i, 200, outcome))
    return sorted(out, key=lambda r: r.index)
