"""What the lifespan builds and the routes read: one object on ``app.state.service``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from .config import Settings
from .engine import BatchingEngine
from .errors import ApiError
from .metrics import Metrics
from .transcriber import TranscriptionService
from .vad import SpeechDetector
from .worker import ModelWorker


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    detector: SpeechDetector | None = None
    worker: ModelWorker | None = None
    engine: BatchingEngine | None = None
    transcriber: TranscriptionService | None = None
    phase: str = "loading"  # loading -> ready -> stopping, or loading -> failed
    error: str | None = None
    streams: int = 0
    created: int = 0  # unix time the model was loaded (OpenAI's model "created")

    @property
    def ready(self) -> bool:
        return self.phase == "ready"


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def require_ready(request: Request) -> ServiceState:
    """Route dependency: 503 (with Retry-After) until the model is loaded and warmed up."""
    state = service_state(request)
    if not state.ready:
        detail = {"loading": "the model is still loading", "stopping": "the server is shutting down",
                  "failed": f"the model failed to load: {state.error}"}[state.phase]
        raise ApiError(503, detail, {"Retry-After": str(state.settings.retry_after_s)})
    return state
