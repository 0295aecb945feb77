"""The ``speech-transformer`` command line, and the container recipe that runs it."""

from __future__ import annotations

import json
import re
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli import build_parser, main
from bench.server import free_port
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory, speech) -> list[Path]:
    out = tmp_path_factory.mktemp("cli")
    paths = []
    for name in ("fox", "hello"):
        path = out / f"{name}.wav"
        path.write_bytes(speech[name].wav)
        paths.append(path)
    return paths


def test_transcribe_prints_one_line_per_file_like_the_server(server, checkpoint, files, capsys) -> None:
    assert main(["transcribe", *map(str, files), "--weights", str(checkpoint), "--beam", "2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    served = [httpx.post(f"{server.url}/transcribe", files={"file": (p.name, p.read_bytes())}, timeout=60)
              .json()["text"] for p in files]
    assert lines[:2] == served and lines[2:] == [""]


def test_transcribe_reports_a_bad_file_and_goes_on(checkpoint, files, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nonsense")
    assert main(["transcribe", str(bad), str(files[0]), "--weights", str(checkpoint), "--beam", "2"]) == 1
    out = capsys.readouterr()
    assert "bad.wav" in out.err and len(out.out.split("\n")) == 3


def test_client_rest_and_stream(server, files, capsys) -> None:
    assert main(["client", str(files[0]), "--url", server.url, "--beam", "2"]) == 0
    rest = capsys.readouterr().out.strip()
    assert rest == httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", files[0].read_bytes())},
                              timeout=60).json()["text"]
    # Paced like a microphone: sent faster, partials may be overtaken (and dropped) by their final.
    assert main(["client", str(files[0]), "--url", server.url, "--stream", "--realtime"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[-1].startswith("[") and " - " in lines[-1]  # "[  start -   end] text"
    assert any(line.startswith("...") for line in lines[:-1])  # partials printed as they arrived


def test_health(server, monkeypatch) -> None:
    assert main(["health", "--url", server.url]) == 0
    monkeypatch.setenv("ASR_PORT", server.url.rsplit(":", 1)[1])
    assert main(["health"]) == 0  # how the container's HEALTHCHECK calls it
    assert main(["health", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "1"]) == 1


def test_serve_runs_until_sigterm(checkpoint) -> None:
    port = free_port()
    env = os.environ | {"ASR_LOG_LEVEL": "info", "ASR_WEIGHTS": str(checkpoint), "ASR_DEFAULT_BEAM_SIZE": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=120, interval=0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        log = proc.stdout.read().decode()
        assert "engine stopped (drained)" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_without_weights_fails_fast(tmp_path, capsys) -> None:
    assert main(["serve", "--port", str(free_port()), "--weights", str(tmp_path)]) == 3
    assert "no checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the container recipe


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def test_dockerfile_runs_the_commands_the_tests_exercise() -> None:
    steps = dockerfile()
    get = lambda word: [rest for w, rest in steps if w == word]
    cmd = exec_form(get("CMD")[-1])
    health = exec_form(get("HEALTHCHECK")[-1].split(" CMD ", 1)[1])
    assert cmd[:2] == ["speech-transformer", "serve"] and health[:2] == ["speech-transformer", "health"]
    build_parser().parse_args(cmd[1:])  # both parse with the real CLI
    build_parser().parse_args(health[1:])
    assert get("USER") and get("USER")[-1] not in ("root", "0")
    env = " ".join(get("ENV"))
    assert get("EXPOSE") == ["8000"] and "ASR_PORT=8000" in env and "ASR_HOST=0.0.0.0" in env
    install = " ".join(get("RUN"))
    assert "python3 -m venv .venv" in install and ".venv/bin/pip install -e \".${EXTRAS" in install  # as make does
    assert "torch==2.14.1" in install and "torchaudio==2.11.0" in install  # the pins of pyproject.toml
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pyproject and '"torchaudio==2.11.0"' in pyproject
    copied = [c for rest in (r for w, r in steps if w == "COPY") for c in exec_form(rest)[:-1]]
    assert "weights" in copied  # the shipped weights are baked in
    packages = re.search(r'include = \[(.*?)\]', pyproject).group(1)
    assert {p.strip('" *') for p in packages.split(",")} <= set(copied)  # every package the install names
    assert all((ROOT / c).exists() for c in copied)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"weights", "app", "model", "pyproject.toml"} & set(ignored)


def test_container_smoke_script_expects_its_clips_transcript() -> None:
    """``.ci/container-smoke`` (run by hand where a container engine exists) checks a committed clip's transcript."""
    script = (ROOT / ".ci" / "container-smoke").read_text()
    assert os.access(ROOT / ".ci" / "container-smoke", os.X_OK)
    clip = shlex.split(script.split("\nCLIP=", 1)[1].splitlines()[0])[0]
    expected = shlex.split(script.split("\nEXPECTED=", 1)[1].splitlines()[0], comments=True)[0]
    lines = [json.loads(x) for x in (ROOT / "tests" / "fixtures" / "clips.jsonl").read_text().splitlines() if x]
    assert {"audio": Path(clip).name, "text": expected} in [{"audio": x["audio"], "text": x["text"]} for x in lines]
    assert (ROOT / clip).is_file()


def test_every_setting_is_documented_in_the_readme() -> None:
    """The README's settings table is where users look; a setting missing from it is a knob nobody can find."""
    from app.config import Settings

    readme = (ROOT / "README.md").read_text()
    ray_row = next(line for line in readme.splitlines() if line.startswith("| `ASR_RAY_*`"))
    missing = [name for name in Settings.model_fields
               if (name.removeprefix("ray_").upper() not in ray_row if name.startswith("ray_")
                   else f"ASR_{name.upper()}" not in readme)]
    assert not missing, f"settings missing from the README: {missing}"
