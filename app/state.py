"""What the lifespan builds and the routes read: one object on ``app.state.service``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from fastapi import Request

from .config import Settings
from .engine import BatchingEngine
from .errors import ApiError
from .metrics import Metrics
from .transcriber import TranscriptionService
from .vad import SpeechDetector
from .worker import ModelWorker


class Phase(str, Enum):
    """Where the service is in its life: loading -> ready -> stopping, or loading -> failed."""

    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class Drainable(Protocol):
    def drain(self) -> None: ...


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    detector: SpeechDetector | None = None
    worker: ModelWorker | None = None
    engine: BatchingEngine | None = None
    transcriber: TranscriptionService | None = None
    phase: Phase = Phase.LOADING
    error: str | None = None
    streams: set[Drainable] = field(default_factory=set)  # the open WebSocket sessions
    created: int = 0  # unix time the model was loaded (OpenAI's model "created")
    replica: str = ""  # this copy's name in X-Replica
    load_before_serving: bool = False  # start-up waits for the model (see create_app)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def stop_accepting(self) -> None:
        self.phase = Phase.STOPPING
        self.metrics.ready.set(0)

    async def drain_streams(self, timeout_s: float) -> bool:
        """Shutdown, first step: every open stream gets its last finals and a 1001 close; False on timeout."""
        self.stop_accepting()
        for session in list(self.streams):
            session.drain()
        deadline = time.monotonic() + timeout_s
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.streams


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def require_ready(request: Request) -> ServiceState:
    """Route dependency: 503 (with Retry-After) until the model is loaded and warmed up."""
    state = service_state(request)
    if not state.ready:
        detail = {Phase.LOADING: "the model is still loading", Phase.STOPPING: "the server is shutting down",
                  Phase.FAILED: f"the model failed to load: {state.error}"}[state.phase]
        raise ApiError(503, detail, {"Retry-After": str(state.settings.retry_after_s)})
    return state
