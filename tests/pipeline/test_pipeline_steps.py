"""Step helpers, the run journal and the summary — the library under the KFP components (fast)."""

from __future__ import annotations

import json

import pytest

from eyeops.errors import ConfigError, DataError, EyeopsError, RecipeError
from eyeops.pipeline import journal
from eyeops.pipeline.local import _failure, ensure_api_key
from eyeops.pipeline.steps import decode, parse_data_source, report_markdown, resolve_recipe
from eyeops.pipeline.summary import summarise, summary_table
from eyeops.refs import DatasetRef, EvalReport


def test_data_source_forms():
    assert parse_data_source("") == {}
    assert parse_data_source("synthetic:40") == {"data.source": "synthetic", "data.n": 40}
    assert parse_data_source("odir:/data/full_df.csv") == {
        "data.source": "odir",
        "data.path": "/data/full_df.csv",
    }
    with pytest.raises(RecipeError, match="synthetic:N needs an integer"):
        parse_data_source("synthetic:many")


def test_resolve_recipe_applies_source_then_overrides():
    recipe = resolve_recipe("fundus-classifier", json.dumps({"train.max_steps": 3}), "synthetic:24")
    assert (recipe.data.source, recipe.data.n, recipe.train.max_steps) == ("synthetic", 24, 3)
    with pytest.raises(RecipeError, match=r"data\.source"):
        resolve_recipe("fundus-classifier", "{}", "nosuchsource:/x")
    with pytest.raises(RecipeError, match="not valid JSON"):
        resolve_recipe("fundus-classifier", "{train.max_steps: 3")
    with pytest.raises(RecipeError, match="JSON object"):
        resolve_recipe("fundus-classifier", "[1, 2]")


def test_decode_names_the_input():
    ref = DatasetRef(uri="/d", fingerprint="f")
    assert decode(ref.model_dump_json(), DatasetRef, "train.dataset") == ref
    with pytest.raises(ConfigError, match=r"train.dataset: not a valid DatasetRef \(fingerprint"):
        decode('{"uri": "/d"}', DatasetRef, "train.dataset")


def test_journal_records_success_and_failure(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    monkeypatch.setenv(journal.JOURNAL_ENV, str(path))
    with journal.stage("prepare") as rec:
        rec.metric, rec.value, rec.ref = "samples", 12.0, {"uri": "/d", "fingerprint": "f"}
    for _ in range(2):  # a retried stage: two failed attempts then a success
        with pytest.raises(DataError), journal.stage("train"):
            raise DataError("bad row", file="x.csv", row=3)
    with journal.stage("train") as rec:
        rec.metric, rec.value = "loss", 0.5
    records = journal.read_journal(path)
    assert [(r.stage, r.status) for r in records] == [
        ("prepare", "succeeded"),
        ("train", "failed"),
        ("train", "failed"),
        ("train", "succeeded"),
    ]
    assert records[1].error_type == "DataError" and "row 3" in records[1].error

    summary = summarise("fundus-classifier", "run-1", str(tmp_path), 12.3, records)
    assert summary.stage("train").attempts == 3 and summary.stage("train").status == "succeeded"
    assert summary.stage("deploy").status == "skipped" and summary.dataset.uri == "/d"
    assert summary.version is None and summary.endpoint is None
    assert summary_table(summary).row_count == 5


def test_failure_reraises_the_step_error_class():
    rec = journal.StageRecord(
        stage="prepare", status="failed", error_type="DataError", error="file /x: missing"
    )
    err = _failure([rec], "fundus-classifier", "kfp: task failed")
    assert type(err) is DataError and "stage 'prepare'" in str(err) and "file /x: missing" in str(err)
    odd = journal.StageRecord(stage="train", status="failed", error_type="KeyError", error="KeyError('x')")
    assert type(_failure([odd], "r", "")) is EyeopsError
    assert "before any stage reported" in str(_failure([], "r", "kfp: boom"))


def test_ensure_api_key_only_when_auth_unconfigured(monkeypatch):
    for var in ("EYEOPS_API_KEYS", "EYEOPS_API_KEYS_FILE", "EYEOPS_AUTH_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    key = ensure_api_key()
    assert key and len(key) >= 16
    import os

    assert os.environ["EYEOPS_API_KEYS"] == f"{key}:classify,chat"
    assert ensure_api_key() is None  # configured now: leave it alone


def test_report_markdown_lists_metrics():
    recipe = resolve_recipe("fundus-classifier")
    report = EvalReport(
        uri="/r",
        split="test",
        num_samples=9,
        metrics={"macro_auc": 0.8125, "f1/D": 0.5},
        primary_metric="macro_auc",
    )
    text = report_markdown(report, recipe)
    assert "**macro_auc: 0.8125**" in text and "| f1/D | 0.5000 |" in text
