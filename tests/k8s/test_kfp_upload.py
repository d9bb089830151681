"""The upload Job's file handling (the KFP API itself needs a cluster)."""

from __future__ import annotations

import shutil

import pytest

from eyeops.errors import ConfigError
from eyeops.kube.kfp_upload import compiled_pipelines, main


def test_finds_compiled_pipelines(tmp_path, compiled_pipeline):
    shutil.copy(compiled_pipeline, tmp_path / "fundus-classifier.yaml")
    assert compiled_pipelines(tmp_path) == {"fundus-classifier": tmp_path / "fundus-classifier.yaml"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [1", "not valid YAML"),
        ("components: {}\n", "not a compiled KFP pipeline"),
    ],
)
def test_rejects_what_is_not_a_pipeline(tmp_path, content, expected):
    (tmp_path / "broken.yaml").write_text(content)
    with pytest.raises(ConfigError, match=rf"broken.yaml: {expected}"):
        compiled_pipelines(tmp_path)


def test_empty_or_missing_directory(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"holds no <recipe>\.yaml"):
        compiled_pipelines(tmp_path)
    assert main(["--host", "http://127.0.0.1:9", "--dir", str(tmp_path / "nope"), "--version", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreachable_kfp_api_is_one_clear_error(tmp_path, compiled_pipeline, capsys):
    shutil.copy(compiled_pipeline, tmp_path / "fundus-classifier.yaml")
    assert main(["--host", "http://127.0.0.1:9", "--dir", str(tmp_path), "--version", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: KFP API at http://127.0.0.1:9: MaxRetryError")
