"""HTTP routes: translate a request into one call on the predictor kept on ``app.state``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from knowledge.handle import IndexHandle
from service.batch_schemas import MnerBatchRequest, MnerBatchResponse, MreBatchRequest, MreBatchResponse
from service.errors import NotReady
from service.metrics import ServiceMetrics
from service.predictor import Predictor
from service.schemas import ErrorResponse, MnerRequest, MnerResponse, MreRequest, MreResponse

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Request body too large"},
    422: {"model": ErrorResponse, "description": "Invalid request; `details` names the field"},
    429: {"model": ErrorResponse, "description": "Overloaded; retry after `Retry-After` seconds"},
    503: {"model": ErrorResponse, "description": "Models not loaded yet, or shutting down"},
    504: {"model": ErrorResponse, "description": "The request did not finish in time"},
}


def get_predictor(request: Request) -> Predictor:
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise NotReady(getattr(request.app.state, "load_error", None) or "models are not loaded yet")
    return predictor


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


def get_knowledge(request: Request) -> IndexHandle:
    knowledge: IndexHandle = request.app.state.knowledge
    return knowledge


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
KnowledgeDep = Annotated[IndexHandle, Depends(get_knowledge)]


class Status(BaseModel):
    status: str


class ModelCard(BaseModel):
    task: str
    name: str
    version: str
    trained: bool
    warning: str | None = None
    labels: list[str]
    threshold: float | None = Field(description="Calibrated gate threshold; null means never activate.")
    calibration: dict[str, Any] | None = None
    backbones: dict[str, Any] | None = None


class KnowledgeCard(BaseModel):
    state: Literal["disabled", "loading", "ready", "missing", "corrupt"] = Field(
        description="ready: the index below is in use; disabled/missing/corrupt: answers are text-only."
    )
    path: str | None = None
    identity: str | None = Field(default=None, description="SHA-256 of the index manifest (its exact bytes).")
    passages: int | None = None
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict, description="passages, licence, credit")
    error: str | None = Field(default=None, description="Why no index is in use.")


class ModelsResponse(BaseModel):
    models: list[ModelCard]
    knowledge: KnowledgeCard


@router.post("/mner", responses=_ERRORS, summary="Multimodal named entity recognition")
async def mner(body: MnerRequest, predictor: PredictorDep) -> MnerResponse:
    return await predictor.mner(body)


@router.post("/mre", responses=_ERRORS, summary="Multimodal relation extraction between two marked entities")
async def mre(body: MreRequest, predictor: PredictorDep) -> MreResponse:
    return await predictor.mre(body)


@router.post(
    "/v1/mner:batch",
    responses=_ERRORS,
    summary="MNER on many posts: one outcome per item, per-item errors never fail the others",
)
async def mner_batch(body: MnerBatchRequest, predictor: PredictorDep) -> MnerBatchResponse:
    return await predictor.mner_batch(body)


@router.post(
    "/v1/mre:batch",
    responses=_ERRORS,
    summary="MRE on many entity pairs: one outcome per item, per-item errors never fail the others",
)
async def mre_batch(body: MreBatchRequest, predictor: PredictorDep) -> MreBatchResponse:
    return await predictor.mre_batch(body)


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Status:
    return Status(status="ok")


@router.get("/readyz", summary="Readiness: models loaded and warmed", responses={503: _ERRORS[503]})
async def readyz(predictor: PredictorDep) -> Status:
    if not predictor.ready:
        raise NotReady("models are not warmed up yet, or the server is shutting down")
    return Status(status="ready")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(service_metrics: MetricsDep) -> Response:
    content, content_type = service_metrics.render()
    return Response(content=content, media_type=content_type)


@router.get("/v1/models", summary="Loaded models: labels, calibration, backbones, versions")
async def models(predictor: PredictorDep, knowledge: KnowledgeDep) -> ModelsResponse:
    return ModelsResponse(
        models=[ModelCard(**card) for card in predictor.model_cards()],
        knowledge=KnowledgeCard(**knowledge.status.card()),
    )
