"""Container images: multi-stage, pinned base, the eyeops wheel installed, non-root at runtime, a
context that leaves the venv out. Built for real only where a Docker engine answers."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"
IMAGES = ("server", "trainer")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_multistage_pinned_and_non_root(image):
    steps = _instructions(DOCKER / f"Dockerfile.{image}")
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base  # a patch release, never :latest
    stages = [a for kind, a in steps if kind == "FROM"]
    assert len(stages) >= 2 and all(s.startswith("${PYTHON_IMAGE}") for s in stages)
    final = steps[max(i for i, (kind, _) in enumerate(steps) if kind == "FROM") :]
    users = [a for kind, a in final if kind == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    assert any(kind == "COPY" and "--from=build /opt/venv" in a for kind, a in final)
    build = " ".join(a for kind, a in steps if kind == "RUN")
    assert "pip wheel --no-deps --wheel-dir /dist ." in build and "pip install /dist/eyeops-*.whl" in build
    # the uid the chart runs pods as exists in the image
    assert "--uid 10001" in build


@pytest.mark.parametrize("image", IMAGES)
def test_build_context_excludes_the_venv(image):
    ignore = (DOCKER / f"Dockerfile.{image}.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # everything out, then the few inputs back in
    assert {"!pyproject.toml", "!platform/", "!recipes/"} <= set(ignore)


def _docker_engine() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine answers `docker info` here")
def test_server_image_builds_and_runs_as_non_root():
    root = DOCKER.parent
    subprocess.run(
        ["docker", "build", "-f", "docker/Dockerfile.server", "-t", "eyeops-server:test", "."],
        cwd=root,
        check=True,
    )
    out = subprocess.run(
        ["docker", "run", "--rm", "eyeops-server:test", "id", "-u"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "10001"
