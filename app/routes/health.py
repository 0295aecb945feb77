"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..schemas import Health, Readiness
from ..security import require_api_key
from ..state import service_state

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process is serving HTTP")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="Readiness: 200 once the model is loaded and warmed up, 503 before and while stopping")
async def readyz(request: Request) -> Response:
    state = service_state(request)
    name = state.worker.name if state.worker else None
    body = Readiness(status=state.phase.value, model=name, detail=state.error)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if state.ready else 503)


@router.get("/metrics", dependencies=[Depends(require_api_key)], summary="Prometheus metrics (text format)",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(service_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
