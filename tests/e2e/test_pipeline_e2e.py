"""The whole pipeline through kfp.local: artefacts, MLflow registry state, a served prediction, and a
failing step that leaves the registry untouched. One tiny run (few images, two steps) is shared."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import httpx
import pytest

from eyeops.config import get_settings
from eyeops.errors import EyeopsError
from eyeops.pipeline import run_local

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RECIPE = "fundus-classifier"
# Tiny but real: 60 synthetic images, 2 optimizer steps on one Ray worker; the absolute gate floor is
# lifted so the first version becomes champion and gets deployed.
TINY = {
    "data.n": 60,
    "data.image_size": 64,
    "model.image_size": 64,
    "train.max_steps": 2,
    "train.num_workers": 1,
    "train.batch_size": 8,
    "register.gate.min_value": None,
}


class _Stack:
    def __init__(self, root: Path, key: str) -> None:
        self.root, self.key = root, key
        self.env = {"EYEOPS_STORAGE_ROOT": str(root), "EYEOPS_API_KEYS": f"{key}:classify,chat"}

    def __enter__(self):
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        get_settings.cache_clear()
        return self

    def __exit__(self, *exc):
        for k, v in self._saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = _Stack(tmp_path_factory.mktemp("e2e") / "eyeops", secrets.token_urlsafe(24))
    with stack:
        stack.tracking_uri = get_settings().tracking_uri
        stack.summary = run_local(RECIPE, data_source="synthetic", overrides=TINY, quiet=True)
    yield stack
    from eyeops.serve.local import stop

    with stack:
        stop()  # every endpoint this run started: no stray serving process


def _registry(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)


def test_every_stage_ran_and_left_its_artefacts(stack):
    summary = stack.summary
    assert [(r.stage, r.status) for r in summary.stages] == [
        (s, "succeeded") for s in ("prepare", "train", "evaluate", "register", "deploy")
    ]
    run_dir = Path(summary.pipeline_root) / summary.pipeline_run
    dataset = json.loads((run_dir / "prepare-data" / "dataset").read_text())
    assert dataset == summary.dataset.model_dump(mode="json")
    assert (Path(dataset["uri"]) / "manifest.json").is_file()
    checkpoint = json.loads((run_dir / "train" / "checkpoint").read_text())
    assert checkpoint["step"] == 2 and Path(checkpoint["uri"]).is_dir()
    assert checkpoint["dataset_fingerprint"] == dataset["fingerprint"]
    report = json.loads((run_dir / "evaluate" / "report").read_text())
    assert report["primary_metric"] == "macro_auc" and 0.0 <= report["metrics"]["macro_auc"] <= 1.0
    assert "macro_auc" in (run_dir / "evaluate" / "summary").read_text()
    metrics = json.loads((run_dir / "evaluate" / "executor_output.json").read_text())
    assert metrics["artifacts"]["metrics"]["artifacts"][0]["metadata"]["macro_auc"] == pytest.approx(
        report["metrics"]["macro_auc"]
    )
    assert summary.stage("evaluate").value == pytest.approx(report["metrics"]["macro_auc"])
    # quiet run: kfp.local's streamed task logs went to a file, not the terminal
    assert "Executing task 'train'" in Path(summary.log).read_text().replace("\x1b[96m", "").replace(
        "\x1b[0m", ""
    )


def test_registry_holds_the_champion_with_lineage(stack):
    version = stack.summary.version
    assert version.gate_passed and version.alias == "champion"
    client = _registry(stack)
    champion = client.get_model_version_by_alias(version.name, "champion")
    assert int(champion.version) == version.version
    tags = champion.tags
    assert tags["eyeops.dataset_fingerprint"] == stack.summary.dataset.fingerprint
    assert tags["eyeops.pipeline_run_name"] == stack.summary.pipeline_run
    assert tags["eyeops.pipeline_run_id"] and tags["eyeops.pipeline"] == "eyeops-finetune"
    run = client.get_run(version.run_id)
    assert run.data.tags["eyeops.pipeline_run_name"] == stack.summary.pipeline_run


def test_the_new_champion_is_served(stack):
    from eyeops.demo import classify, retina_png

    endpoint = stack.summary.endpoint
    assert endpoint.version == stack.summary.version.version and endpoint.pid
    answer = classify(endpoint, retina_png(), stack.key)
    assert answer["model"]["version"] == stack.summary.version.version
    probabilities = answer["results"][0]["probabilities"]
    assert set(probabilities) == {"N", "D", "G", "C", "A", "H", "M", "O"}
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    # The pipeline's training step calibrated the model: the answer carries the OOD verdict (issue 17).
    verdict = answer["results"][0]
    assert isinstance(verdict["out_of_distribution"], bool) and verdict["ood_threshold"] > 0
    unauthorised = httpx.post(f"{endpoint.url}/v1/classify", json={"image_b64": "aGk="}, timeout=30)
    assert unauthorised.status_code == 401


def test_bad_data_source_fails_clearly_and_leaves_the_registry_untouched(stack):
    client = _registry(stack)
    name = stack.summary.version.name
    before = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    with stack, pytest.raises(EyeopsError) as info:
        run_local(RECIPE, data_source="odir:/nonexistent/odir.csv", overrides=TINY, quiet=True)
    message = str(info.value)
    assert "stage 'prepare'" in message and "/nonexistent/odir.csv" in message
    assert "task logs:" in message and "Traceback" not in message
    after = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    assert after == before
    assert int(client.get_model_version_by_alias(name, "champion").version) == stack.summary.version.version
