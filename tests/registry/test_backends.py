"""The registry against real tracking backends: an `mlflow server` process and PostgreSQL 15."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from eyeops.registry import register, resolve, show

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point_at(monkeypatch, uri: str, artifact_root: str | None) -> None:
    from eyeops.config import get_settings

    monkeypatch.setenv("EYEOPS_MLFLOW_TRACKING_URI", uri)
    if artifact_root:
        monkeypatch.setenv("EYEOPS_MLFLOW_ARTIFACT_ROOT", artifact_root)
    get_settings.cache_clear()


def _register_two_and_check(reg_recipe, make_run, name: str) -> None:
    recipe = reg_recipe.with_overrides({"register.model_name": name})
    assert register(recipe, *make_run(f"{name}-1", 0.9)).alias == "champion"
    worse = register(recipe, *make_run(f"{name}-2", 0.5))
    assert (worse.alias, worse.gate_passed) == ("challenger", False)
    assert show(name).aliases == {"champion": 1, "challenger": 2}
    resolved = resolve(name)
    assert resolved.version == 1 and (resolved.model_dir / "model.safetensors").is_file()


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_against_mlflow_server(mlflow_server, monkeypatch, reg_recipe, make_run, tmp_path):
    # No artifact root: the server proxies artifacts (mlflow-artifacts:/) to --artifacts-destination.
    _point_at(monkeypatch, mlflow_server, None)
    _register_two_and_check(reg_recipe, make_run, "via-server")
    stored = list((tmp_path / "server-artifacts").rglob("model.safetensors"))
    assert stored, "model weights should live in the server's artifact destination"


def _pg_bin(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return candidates[-1] if candidates else None


@pytest.fixture
def postgres():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL (initdb/pg_ctl) is not installed on this machine")
    pytest.importorskip("psycopg2", reason="psycopg2-binary (dev extra) is needed for the Postgres backend")
    prefix: list[str] = []
    # initdb refuses to run as root: run the server as the 'postgres' system user then.
    root = tempfile.mkdtemp(prefix="eyeops-pg-")
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = Path(root) / "data", _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "eyeops", "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(Path(root) / "pg.log"),
            "-w",
            "-t",
            "120",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://eyeops@127.0.0.1:{port}/postgres"  # SQLAlchemy 2.1: psycopg 3 default
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_against_postgres_backend_store(postgres, monkeypatch, reg_recipe, make_run, tmp_path):
    _point_at(monkeypatch, postgres, str(tmp_path / "pg-artifacts"))
    _register_two_and_check(reg_recipe, make_run, "via-postgres")
    import sqlalchemy

    with sqlalchemy.create_engine(postgres).connect() as conn:
        aliases = conn.execute(
            sqlalchemy.text(
                "select alias, version from registered_model_aliases"
                " where name = 'via-postgres' order by alias"
            )
        ).all()
    assert [tuple(r) for r in aliases] == [("challenger", 2), ("champion", 1)]
