"""The headline: train on 600 synthetic images with 2 Ray workers, reach macro AUC >= 0.90 on the
held-out patient-disjoint test split, register v1 as champion; a deliberately worse run (1 step)
is refused by the gate and becomes challenger only."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_train_evaluate_register_then_a_worse_run_is_refused(ray_session, tmp_path):
    from eyeops.data import prepare, read_manifest
    from eyeops.evaluate import evaluate
    from eyeops.recipes import load_recipe
    from eyeops.registry import register, resolve, show
    from eyeops.train import train

    recipe = load_recipe("fundus-classifier")
    assert recipe.data.n == 600 and recipe.train.num_workers == 2
    dataset = prepare(recipe.data, str(tmp_path / "fundus-600"), name="fundus-600")
    manifest = read_manifest(dataset.uri)
    assert manifest.patient_split_ok and dataset.num_samples >= 550  # few or no records quarantined

    good = train(recipe, dataset, run_name="e2e-good", storage_path=str(tmp_path / "runs"))
    report = evaluate(recipe, good, dataset)
    assert report.split == "test" and report.num_samples >= 60
    assert report.metrics["macro_auc"] >= 0.90, report.tables["per_class"]
    v1 = register(recipe, good, report, dataset=dataset)
    assert (v1.version, v1.alias, v1.gate_passed) == (1, "champion", True)

    worse_recipe = recipe.with_overrides({"train.max_steps": 1})
    worse = train(worse_recipe, dataset, run_name="e2e-worse", storage_path=str(tmp_path / "runs"))
    assert worse.step == 1
    worse_report = evaluate(worse_recipe, worse, dataset)
    assert worse_report.metrics["macro_auc"] < report.metrics["macro_auc"]
    print(
        f"macro_auc: good {report.metrics['macro_auc']:.4f} ({good.step} steps), "
        f"worse {worse_report.metrics['macro_auc']:.4f} (1 step); test samples {report.num_samples}"
    )
    v2 = register(worse_recipe, worse, worse_report, dataset=dataset)
    assert (v2.version, v2.alias, v2.gate_passed) == (2, "challenger", False)
    assert v2.champion_value == pytest.approx(report.metrics["macro_auc"])

    name = recipe.register.model_name
    assert show(name).aliases == {"champion": 1, "challenger": 2}
    assert resolve(name).version == 1  # serving still gets the good model
