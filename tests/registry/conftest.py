"""Registry fixtures: a real (untrained) classifier model dir and eval reports with chosen scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reg_recipe():
    from eyeops.recipes import parse_recipe

    return parse_recipe(
        {
            "name": "tiny-reg",
            "model": {"family": "classifier", "weights": "none", "image_size": 64},
            "register": {"model_name": "tiny-reg", "gate": {"min_margin": 0.02}},
        }
    )


@pytest.fixture(scope="session")
def reg_model_dir(tmp_path_factory, reg_recipe) -> Path:
    from eyeops.families import get_family

    family = get_family("classifier")
    out = Path(tmp_path_factory.mktemp("reg-model")) / "model"
    family.save(family.build_model(reg_recipe), reg_recipe, out)
    return out


@pytest.fixture
def make_run(reg_recipe, reg_model_dir, tmp_path):
    """``make_run(run_name, macro_auc, **more_metrics) -> (CheckpointRef, EvalReport)``."""
    from eyeops.refs import CheckpointRef, EvalReport

    def make(run_name: str, macro_auc: float, **more: float):
        metrics = {"macro_auc": macro_auc, **more}
        out = tmp_path / "reports" / run_name
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"metrics": metrics}))
        (out / "model_card.md").write_text(f"# card for {run_name}\n")
        checkpoint = CheckpointRef(
            uri=str(reg_model_dir),
            fingerprint="c" * 64,
            recipe_name=reg_recipe.name,
            family="classifier",
            run_name=run_name,
            step=7,
            metrics={"loss": 0.25, "lr": 1e-3},
            dataset_fingerprint="d" * 64,
        )
        report = EvalReport(
            uri=str(out),
            split="test",
            num_samples=50,
            metrics=metrics,
            primary_metric="macro_auc",
            tables={"per_class": [{"label": "N", "auc": 0.9}]},
        )
        return checkpoint, report

    return make


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> Path:
    """One SQLite tracking store per module: creating the schema costs seconds, so share it."""
    return Path(tmp_path_factory.mktemp("mlflow-sqlite"))


@pytest.fixture
def use_sqlite(sqlite_store, monkeypatch):
    from eyeops.config import get_settings

    monkeypatch.setenv("EYEOPS_MLFLOW_TRACKING_URI", f"sqlite:///{sqlite_store / 'mlflow.db'}")
    monkeypatch.setenv("EYEOPS_MLFLOW_ARTIFACT_ROOT", str(sqlite_store / "artifacts"))
    get_settings.cache_clear()
    yield sqlite_store
    get_settings.cache_clear()
