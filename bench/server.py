"""``speech-transformer serve`` in a subprocess, for benchmarks and tests that must see the server from outside.

A separate process keeps the clients off the server's GIL and lets us read what only the operating system
knows about it: resident memory, its peak, and open file descriptors.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Starts on construction and waits for ``/readyz``; ``settings`` are ``ASR_*`` variables without the prefix.

    With ``ray_replicas`` it runs ``serve --ray --replicas N`` and waits for all N (``/readyz`` is 200 once the
    first replica is up).
    """

    def __init__(self, weights: Path, log: Path, settings: dict[str, object] | None = None,
                 ready_timeout_s: float = 600.0, ray_replicas: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = os.environ | {"ASR_WEIGHTS": str(weights), "ASR_LOG_LEVEL": "warning"}
        env |= {f"ASR_{k.upper()}": str(v) for k, v in (settings or {}).items()}
        self._log = log.open("wb")
        ray = ["--ray", "--replicas", str(ray_replicas)] if ray_replicas else []
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), *ray],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=5)
                if ready.status_code == 200 and (not ray or f"ready: {ray_replicas} replica" in self.log_text()):
                    break
                if ready.json().get("status") == "failed":
                    self.stop()
                    raise RuntimeError(f"the model failed to load: {ready.json().get('detail')}; see {log}")
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready in {ready_timeout_s:g} s")
            time.sleep(0.2)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what the OS knows

    def _status(self, field: str) -> float:
        """A ``/proc/PID/status`` field in MiB (VmRSS: resident now, VmHWM: resident peak)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def peak_rss_mb(self) -> float:
        return self._status("VmHWM")

    def reset_peak_rss(self) -> None:
        """Start a new peak from the current RSS (Linux: writing 5 to clear_refs resets VmHWM)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
