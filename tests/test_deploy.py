"""The scale-out packaging: the KubeRay manifest, the Ray extra's isolation, and ``serve --ray``'s argument errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "rayservice.yaml"


def pinned_ray_version() -> str:
    match = re.search(r'"ray\[serve\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "the ray extra must pin a version"
    return match.group(1)


def serve_app() -> dict:
    service = yaml.safe_load(MANIFEST.read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    return application


def test_the_rayservice_serves_our_entry_point_at_the_root() -> None:
    service = yaml.safe_load(MANIFEST.read_text())
    app = serve_app()
    assert app["route_prefix"] == "/"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == pinned_ray_version()
    pytest.importorskip("ray.serve", reason="the Ray extra is not installed")
    from app import ray_deployment

    assert app["import_path"] == ray_deployment.ENTRY_POINT
    module, attr = app["import_path"].split(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is ray_deployment.application


def test_the_manifests_settings_are_valid_and_turn_on_autoscaling(monkeypatch: pytest.MonkeyPatch) -> None:
    app = serve_app()
    for name, value in app["runtime_env"]["env_vars"].items():
        assert name.startswith("ASR_")
        monkeypatch.setenv(name, value)
    pytest.importorskip("ray.serve", reason="the Ray extra is not installed")
    from app.ray_deployment import deployment_options

    options = deployment_options(Settings(), app["args"]["replicas"])
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 8, "initial_replicas": 2,
                                             "target_ongoing_requests": 8.0}


def test_a_fixed_replica_count_without_autoscaling_settings() -> None:
    pytest.importorskip("ray.serve", reason="the Ray extra is not installed")
    from app.ray_deployment import deployment_options

    options = deployment_options(Settings(ray_replica_cpus=0.5, ray_max_ongoing_requests=32), 3)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5} and options["max_ongoing_requests"] == 32


def test_replica_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="ASR_RAY_MIN_REPLICAS"):
        Settings(ray_min_replicas=4, ray_max_replicas=2)


def test_the_plain_server_never_imports_ray() -> None:
    code = ("import sys, app.main, app.cli; app.cli.build_parser(); app.main.create_app(); "
            "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


@pytest.mark.parametrize(("argv", "fragment"), [
    (["serve", "--ray", "--replicas", "0"], "must be at least 1"),
    (["serve", "--ray", "--replicas", "two"], "invalid"),
])
def test_bad_replica_counts_are_one_line_errors(argv: list[str], fragment: str, capsys) -> None:
    from app.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and fragment in err and "Traceback" not in err


def test_serve_ray_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from app.cli import main

    monkeypatch.setitem(sys.modules, "app.ray_deployment", None)  # as if `import ray` failed inside it
    assert main(["serve", "--ray"]) == 2
    assert capsys.readouterr().err.strip() == "error: --ray needs Ray Serve: pip install '.[ray]'"


def test_serve_ray_on_a_taken_port_is_one_line_before_ray_starts(capsys) -> None:
    pytest.importorskip("ray.serve", reason="the Ray extra is not installed")
    import socket

    from app.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--ray", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "\n" not in err
