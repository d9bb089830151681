"""register / gate / promote / rollback / resolve against a real SQLite MLflow store."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from eyeops.errors import InvalidRequest, NotFoundError, RegistryError
from eyeops.refs import DatasetRef
from eyeops.registry import load_model_dir, promote, register, resolve, rollback, show
from eyeops.registry._pyfunc import decode_image, example_input


def _client() -> MlflowClient:
    from eyeops.config import get_settings

    return MlflowClient(get_settings().tracking_uri)


def test_gate_lifecycle_and_lineage(use_sqlite, reg_recipe, make_run):
    recipe = reg_recipe.with_overrides({"register.model_name": "lifecycle"})
    dataset = DatasetRef(uri="/data/tiny", fingerprint="d" * 64, name="tiny", num_samples=40)

    v1 = register(recipe, *make_run("run-1", 0.80), dataset=dataset, lineage={"pipeline_run_id": "kfp-42"})
    assert (v1.version, v1.alias, v1.gate_passed) == (1, "champion", True)
    v2 = register(recipe, *make_run("run-2", 0.81))  # better, but by less than min_margin 0.02
    assert (v2.alias, v2.gate_passed, v2.champion_value) == ("challenger", False, pytest.approx(0.80))
    assert "below min_margin" in v2.gate_reason
    v3 = register(recipe, *make_run("run-3", 0.85))
    assert (v3.alias, v3.gate_passed) == ("champion", True)

    view = show("lifecycle")
    assert view.aliases == {"champion": 3, "previous": 1, "challenger": 2}
    assert [(v.version, v.gate) for v in view.versions] == [(1, "passed"), (2, "failed"), (3, "passed")]
    c = _client()
    assert "below min_margin" in c.get_model_version("lifecycle", "2").tags["eyeops.gate_reason"]

    run = c.get_run(v1.run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["eyeops.recipe_hash"] == recipe.fingerprint()
    assert tags["eyeops.dataset_fingerprint"] == "d" * 64 and tags["eyeops.pipeline_run_id"] == "kfp-42"
    assert len(tags["eyeops.git_commit"]) == 40 or tags["eyeops.git_commit"] == "unknown"
    assert params["model.backbone"] == "efficientnet_lite0" and params["train.lr"] == "0.001"
    assert metrics["eval/macro_auc"] == pytest.approx(0.80) and metrics["train/loss"] == pytest.approx(0.25)
    assert c.get_metric_history(v1.run_id, "train/loss")[0].step == 7
    files = {f.path for f in c.list_artifacts(v1.run_id, "evaluation")}
    assert files == {"evaluation/metrics.json", "evaluation/model_card.md"}
    assert {f.path for f in c.list_artifacts(v1.run_id, "lineage")} >= {
        "lineage/checkpoint.json",
        "lineage/dataset.json",
    }

    restored = rollback("lifecycle")
    assert restored.version == 1 and "rolled back from v3" in restored.gate_reason
    assert show("lifecycle").aliases == {"champion": 1, "challenger": 2}
    assert c.get_model_version("lifecycle", "3").tags["eyeops.rolled_back"] == "true"
    with pytest.raises(RegistryError, match="no @previous"):
        rollback("lifecycle")
    promote("lifecycle", 2)
    assert show("lifecycle").aliases == {"champion": 2, "previous": 1}  # challenger alias moved up
    with pytest.raises(NotFoundError):
        promote("lifecycle", 99)


def test_pyfunc_model_resolve_and_load(use_sqlite, reg_recipe, reg_model_dir, make_run):
    from eyeops.families import get_family

    recipe = reg_recipe.with_overrides({"register.model_name": "served"})
    # A breakdown key with characters MLflow rejects in metric names is logged, sanitised.
    version = register(recipe, *make_run("served-1", 0.9, **{"topic/dry eye (DED)/accuracy": 0.5}))
    assert _client().get_run(version.run_id).data.metrics["eval/topic/dry eye _DED_/accuracy"] == 0.5

    pyfunc = mlflow.pyfunc.load_model("models:/served@champion")
    outputs = [c.name for c in pyfunc.metadata.get_output_schema().inputs]
    assert outputs == [*"NDGCAHMO", "out_of_distribution", "ood_score"]
    got = pyfunc.predict(example_input())
    want = (
        get_family("classifier").load(reg_model_dir).classify([decode_image(example_input()["image"][0], 0)])
    )
    assert list(got.columns) == list("NDGCAHMO")
    np.testing.assert_allclose(
        got.iloc[0].to_numpy(), [want[0].probabilities[k] for k in "NDGCAHMO"], rtol=1e-5
    )
    with pytest.raises(InvalidRequest, match="row 1, column 'image': not valid base64"):
        pyfunc.unwrap_python_model().predict(
            None, pd.DataFrame({"image": [example_input()["image"][0], "%%"]})
        )

    resolved = resolve("served")
    assert resolved.model_uri == "models:/served/1" and resolved.version == 1
    assert (resolved.model_dir / "recipe.yaml").is_file() and (
        resolved.model_dir / "model.safetensors"
    ).is_file()
    assert resolve("models:/served@champion").model_dir == resolved.model_dir  # cached pinned download
    assert load_model_dir("models:/served/1") == resolved.model_dir
    assert resolve(str(reg_model_dir)).model_dir == reg_model_dir
    loaded = get_family("classifier").load(resolved.model_dir)
    assert loaded.classify([Image.new("RGB", (64, 64))])[0].probabilities.keys() == set("NDGCAHMO")
    with pytest.raises(NotFoundError, match="no @champion"):
        resolve("never-registered")
    with pytest.raises(NotFoundError, match="neither a directory nor a model reference"):
        resolve("bad name!")


def test_cli_show_promote_rollback(use_sqlite, reg_recipe, make_run):
    from eyeops.cli import app

    recipe = reg_recipe.with_overrides({"register.model_name": "cli-model"})
    register(recipe, *make_run("cli-1", 0.70))
    register(recipe, *make_run("cli-2", 0.60))
    runner = CliRunner()
    shown = runner.invoke(app, ["registry", "show", "cli-model"])
    assert shown.exit_code == 0, shown.output
    assert (
        "@champion=v1" in shown.output and "@challenger=v2" in shown.output and "improvement" in shown.output
    )
    assert runner.invoke(app, ["registry", "promote", "cli-model", "2"]).exit_code == 0
    rolled = runner.invoke(app, ["registry", "rollback", "cli-model"])
    assert rolled.exit_code == 0 and "v1 is @champion again" in rolled.output
    failed = runner.invoke(app, ["registry", "rollback", "cli-model"])
    assert isinstance(failed.exception, RegistryError)


def test_report_dir_holding_the_artifact_store_is_refused(use_sqlite, reg_recipe, make_run):
    checkpoint, report = make_run("nested", 0.9)
    nested = report.model_copy(update={"uri": str(use_sqlite)})  # the store's artifacts live inside
    with pytest.raises(RegistryError, match="contains the MLflow artifact root"):
        register(reg_recipe, checkpoint, nested)
