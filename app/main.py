"""The app factory and its lifespan: load the checkpoint once, warm it up, start the engine, drain at exit."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from model.checkpoint import CONFIG

from .config import Settings
from .engine import BatchingEngine, BatchPolicy
from .errors import install_error_handlers
from .observability import RequestContext, configure_logging
from .protocol import guarded_protocol
from .routes import demo, docs, health, openai, stream, transcribe
from .state import Phase, ServiceState
from .transcriber import TranscriptionService
from .vad import RATE as VAD_RATE
from .vad import SpeechDetector
from .worker import ModelWorker, one_intra_op_thread

log = logging.getLogger(__name__)


async def _load(state: ServiceState) -> None:
    """Runs in the background so /healthz answers (and /readyz says 'loading') while the model loads."""
    s = state.settings
    try:
        worker = await asyncio.to_thread(ModelWorker.load, s.weights, s.device, s.dtype, s.torch_threads)
        one_intra_op_thread()  # this loop's thread, and threads that start later: only the model's has a team
        if worker.sample_rate != VAD_RATE:
            raise ValueError(f"the model decodes {worker.sample_rate} Hz audio; the voice detector needs {VAD_RATE}")
        await asyncio.to_thread(worker.warm_up, s.decoding())
    except Exception as e:  # a bad checkpoint must not kill the process silently: /readyz reports it
        log.exception("could not load the model from %s", s.weights)
        state.phase, state.error = Phase.FAILED, f"{type(e).__name__}: {e}"
        return
    policy = BatchPolicy(max_items=s.max_batch_size, max_padded_seconds=s.max_batch_audio_seconds,
                         max_wait_s=s.max_wait_ms / 1000, max_incoming_wait_s=s.max_incoming_wait_ms / 1000,
                         idle_wait_s=s.idle_wait_ms / 1000, queue_depth=s.queue_depth)
    engine = BatchingEngine(worker.run, policy, state.metrics, worker.sample_rate)
    engine.start()
    state.worker, state.engine, state.created = worker, engine, int(time.time())
    state.transcriber = TranscriptionService(engine, state.detector, sample_rate=worker.sample_rate,
                                             max_segment_s=worker.max_segment_seconds,
                                             max_audio_s=s.max_audio_seconds, retry_after_s=s.retry_after_s,
                                             max_decodes=s.max_concurrent_decodes, decode_wait_s=s.decode_wait_s)
    state.phase = Phase.READY
    state.metrics.ready.set(1)
    log.info("ready: %s, batches of up to %d segments / %.0f padded s, %.0f ms wait, queue %d",
             worker.name, s.max_batch_size, s.max_batch_audio_seconds, s.max_wait_ms, s.queue_depth)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    settings = state.settings
    configure_logging(settings.log_level, settings.log_format, settings.secrets())
    if not (settings.weights / CONFIG).is_file():
        raise RuntimeError(f"no checkpoint at {settings.weights} (set ASR_WEIGHTS to a directory with {CONFIG})")
    state.detector = SpeechDetector(settings.vad_threshold)
    loader = asyncio.create_task(_load(state))
    if state.load_before_serving:
        await loader
        if state.phase is Phase.FAILED:  # the host (Ray Serve) sees a replica that failed to start
            raise RuntimeError(state.error)
    try:
        yield
    finally:
        state.stop_accepting()
        if not loader.done():
            loader.cancel()
        if state.engine is not None:
            drained = await asyncio.to_thread(state.engine.stop, settings.shutdown_timeout_s)
            log.info("engine stopped (%s)", "drained" if drained else "timed out; pending work failed")
        if state.worker is not None:
            state.worker.close()


def create_app(settings: Settings | None = None, *, replica: str | None = None, hosted: bool = False) -> FastAPI:
    """A fresh app with its own settings, metrics registry and (once started) model and engine.

    ``replica`` names this copy in every response's ``X-Replica`` (default host:pid). ``hosted`` is for a host
    like Ray Serve that routes only to replicas whose start-up is over and stamps ``X-Request-ID`` itself:
    start-up then returns once the model is warm (the plain server answers ``/readyz`` while it loads), and the
    app adopts the host's request id without adding the header a second time.
    """
    settings = settings or Settings()
    state = ServiceState(settings, replica=replica or f"{socket.gethostname()}:{os.getpid()}",
                         load_before_serving=hosted)
    private_docs = settings.api_key is not None and not settings.public_docs
    app = FastAPI(title="Speech-Transformer ASR", version="0.1.0", lifespan=lifespan,
                  description="Speech recognition with dynamic batching: REST, OpenAI-compatible and WebSocket "
                              "streaming APIs.",
                  **({"docs_url": None, "redoc_url": None, "openapi_url": None} if private_docs else {}))
    app.state.service = state
    app.state.settings = settings
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "X-Replica", "Retry-After", "X-Ignored-Parameters"])
    app.add_middleware(RequestContext, metrics=state.metrics, replica=state.replica, tag_request_id=not hosted)
    for module in (health, transcribe, openai, stream, demo, *([docs] if private_docs else [])):
        app.include_router(module.router)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn, except that open streams get their last finals before it shuts the connections.

    uvicorn closes WebSockets with 1012 the moment shutdown starts; a client mid-sentence would lose what it
    said. So streams are drained first (bounded by the shutdown timeout), then uvicorn's own shutdown finishes
    in-flight HTTP requests and runs the lifespan exit, which drains the engine.
    """

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets: list | None = None) -> None:
        if not await self.state.drain_streams(self.state.settings.shutdown_timeout_s):
            log.warning("%d streams did not drain in time", len(self.state.streams))
        await super().shutdown(sockets)


def make_server(app: FastAPI, *, host: str | None = None, port: int | None = None) -> DrainingServer:
    """The server ``speech-transformer serve``, the tests and the benchmark all run."""
    state: ServiceState = app.state.service
    return DrainingServer(server_config(app, state.settings, host=host, port=port), state)


def server_config(app: FastAPI, settings: Settings, *, host: str | None = None, port: int | None = None) -> uvicorn.Config:
    """The one uvicorn configuration, shared by ``speech-transformer serve``, the tests and the benchmark."""
    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level=settings.log_level,
        log_config=None,  # our handler (with request ids) on the root logger does the formatting
        access_log=False,  # RequestContext writes one line per request, with its id
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        # Frames over our own limit get an error message and a 1009 close from the route; the protocol-level
        # cap only stops absurd frames before they are buffered whole.
        ws_max_size=2 * settings.stream_max_frame_bytes + 1024,
        lifespan="on",
        http=guarded_protocol(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections),
    )
