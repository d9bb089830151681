"""``eyeops pipeline compile|run`` and ``eyeops demo`` as shells: arguments in, errors as one line."""

from __future__ import annotations

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
