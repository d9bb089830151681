"""``eyeops pipeline compile|run`` and ``eyeops demo`` as shells: arguments in, errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eyeops.cli import app
from eyeops.cli.pipeline import parse_sets
from eyeops.errors import ConfigError


def test_compile_command_writes_yaml(tmp_path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "compile",
            "fundus-classifier",
            "--out-dir",
            str(tmp_path),
            "--image",
            "registry.example/eyeops:9",
        ],
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "fundus-classifier.yaml").read_text()
    assert "image: registry.example/eyeops:9" in text and "eyeops:0.1.0" not in text


def test_set_overrides_parse_json_values():
    assert parse_sets(["train.max_steps=5", "data.source=odir", "register.gate.min_value=null"]) == {
        "train.max_steps": 5,
        "data.source": "odir",
        "register.gate.min_value": None,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["train.max_steps"])


def test_user_mistakes_are_one_clear_line():
    out = subprocess.run(
        [sys.executable, "-m", "eyeops", "pipeline", "run", "no-such-recipe"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "recipe 'no-such-recipe' not found" in out.stderr
    assert "Traceback" not in out.stderr
    help_out = subprocess.run(
        [sys.executable, "-m", "eyeops", "demo", "--help"], capture_output=True, text=True
    )
    assert help_out.returncode == 0 and "--keep-serving" in help_out.stdout


def _cli_env(storage_root, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EYEOPS_")}
    return env | {"EYEOPS_STORAGE_ROOT": str(storage_root), "COLUMNS": "200"} | extra


def test_run_without_api_keys_makes_a_local_key_then_reports_the_failed_stage(tmp_path):
    """The real pipeline entry, no serving auth configured and a broken input: the CLI says which
    local key the endpoint would take before anything runs, then the stage's own error (not a
    log path only)."""
    root = tmp_path / "eyeops"
    out = subprocess.run(
        [sys.executable, "-m", "eyeops", "pipeline", "run", "fundus-classifier", "-d", "synthetic:many"],
        capture_output=True,
        text=True,
        env=_cli_env(root),
        timeout=300,
    )
    key_file = root / "serve" / "api-key"
    assert f"the endpoint takes the local key in {key_file}" in out.stdout, out.stdout
    key, _, scopes = key_file.read_text().strip().rpartition(":")
    assert len(key) >= 16 and scopes == "classify,chat" and key not in out.stdout + out.stderr
    assert out.returncode == 2, out.stderr
    error = " ".join(out.stderr.split())
    assert "failed at stage 'prepare'" in error and "synthetic:N needs an integer" in error, error
    assert "task logs:" in error and "Traceback" not in error


def test_malformed_api_keys_fail_before_the_pipeline_starts(tmp_path):
    root = tmp_path / "eyeops"
    out = subprocess.run(
        [sys.executable, "-m", "eyeops", "pipeline", "run", "fundus-classifier"],
        capture_output=True,
        text=True,
        env=_cli_env(root, EYEOPS_API_KEYS="too-short:classify"),
        timeout=120,
    )
    assert out.returncode == 2 and "key shorter than 16 characters" in " ".join(out.stderr.split())
    assert not (root / "pipeline-runs").exists() and not (root / "serve" / "api-key").exists()
