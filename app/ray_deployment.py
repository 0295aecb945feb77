"""This same app as Ray Serve replicas behind Ray's HTTP proxy (``speech-transformer serve --ray``).

Each replica builds the app with :func:`app.main.create_app` from its own ``ASR_*`` settings, loads the model
once, runs its own batching engine and names itself in ``X-Replica``. Serve routes only to replicas whose start-up
finished, and start-up here ends when the model is warm, so ``/readyz`` through the proxy is ready as soon as one
replica is. Only this module imports Ray; the plain server never does.

``application`` is also the import path a KubeRay ``RayService`` names (``deploy/rayservice.yaml``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from .config import Settings
from .main import create_app
from .state import Phase, ServiceState

log = logging.getLogger(__name__)

APP_NAME = "asr"
ENTRY_POINT = "app.ray_deployment:application"  # what deploy/rayservice.yaml and serve_config files import
ENV_PREFIX = "ASR_"
HEALTH_CHECK_PERIOD_S = 5.0


@serve.deployment
@serve.ingress()
class SpeechReplica:
    """One replica: the FastAPI app, built inside the replica process so it reads that process's settings."""

    async def __init__(self) -> None:
        self.settings = Settings()

    def __serve_build_asgi_app__(self) -> FastAPI:
        replica = serve.get_replica_context().replica_id.unique_id
        self.fastapi = create_app(self.settings, replica=replica, hosted=True)
        return self.fastapi

    def check_health(self) -> None:
        """Serve replaces a replica whose model failed or whose inference thread is gone."""
        state: ServiceState = self.fastapi.state.service
        if state.phase is Phase.FAILED or (state.engine is not None and not state.engine.alive):
            raise RuntimeError(f"replica unhealthy: {state.error or 'the inference thread stopped'}")


def deployment_options(settings: Settings, replicas: int) -> dict[str, Any]:
    """Serve's options for :class:`SpeechReplica`: a fixed count, or autoscaling when ASR_RAY_MAX_REPLICAS is set."""
    options: dict[str, Any] = {
        "max_ongoing_requests": settings.ray_max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.ray_replica_cpus},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
    }
    if settings.ray_max_replicas is None:
        options["num_replicas"] = replicas
    else:
        floor = settings.ray_min_replicas if settings.ray_min_replicas is not None else 1
        options["autoscaling_config"] = {
            "min_replicas": floor,
            "max_replicas": settings.ray_max_replicas,
            "initial_replicas": min(max(replicas, floor), settings.ray_max_replicas),
            "target_ongoing_requests": settings.ray_target_ongoing_requests,
        }
    return options


def application(args: dict[str, Any] | None = None) -> Application:
    """The Serve application; ``args`` (from a serve config or the CLI) may give ``replicas`` and ``env``.

    ``env`` is given to each replica's process (the CLI passes its ``ASR_*`` variables, so replicas on other
    nodes see the same settings); under KubeRay the pod's environment does that job.
    """
    args = dict(args or {})
    env = {k: str(v) for k, v in (args.get("env") or {}).items()}
    options = deployment_options(Settings(), int(args.get("replicas", 1)))
    if env:
        options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
    return SpeechReplica.options(**options).bind()


def launching_env(settings: Settings) -> dict[str, str]:
    """The launching process's ``ASR_*`` variables, with the checkpoint as an absolute path (replicas do not
    share our working directory)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    env["ASR_WEIGHTS"] = str(settings.weights.resolve())
    return env


def check_port(host: str, port: int) -> None:
    """Fail in one line before Ray starts, rather than in a proxy actor's traceback after."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def run(settings: Settings, replicas: int, address: str | None) -> int:
    """Start (or join) Ray, put the proxy on ``settings.host:port``, deploy, and wait for SIGINT/SIGTERM."""
    import ray

    check_port(settings.host, settings.port)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing phones home from a server
    ray.init(address=address, include_dashboard=False, configure_logging=False)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        try:
            serve.run(application({"replicas": replicas, "env": launching_env(settings)}), name=APP_NAME,
                      route_prefix="/")
        except Exception as e:  # Serve's own errors are not RuntimeErrors; the CLI prints one line
            raise RuntimeError(f"the Serve application did not start: {e}") from e
        print(f"ready: {replicas} replica(s) behind Ray's proxy on http://{settings.host}:{settings.port}", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        log.info("shutting down the Serve application")
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
