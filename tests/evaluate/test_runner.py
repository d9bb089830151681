"""The evaluate stage on a real prepared dataset and a real (untrained) classifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from eyeops.errors import ConfigError, DataError
from eyeops.evaluate import classification_metrics, evaluate


@pytest.fixture(scope="module")
def report(tiny_recipe, tiny_checkpoint, tiny_dataset, tmp_path_factory):
    return evaluate(
        tiny_recipe, tiny_checkpoint, tiny_dataset, out_dir=str(tmp_path_factory.mktemp("report"))
    )


def test_report_files_and_metrics(report, tiny_dataset):
    out = Path(report.uri)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == report.split == "test" and saved["metrics"] == report.metrics
    assert saved["dataset"]["fingerprint"] == tiny_dataset.fingerprint
    manifest = json.loads((Path(tiny_dataset.uri) / "manifest.json").read_text())
    expected_n = sum(
        v for k, v in manifest["counts"].items() if k.startswith("classify/") and k.endswith("/test")
    )
    assert report.num_samples == expected_n > 0
    for name in ("roc_curves", "confusion_matrices", "class_metrics"):
        png = Path(report.artifacts[name])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    for table in ("per_class", "per_modality", "per_eye"):
        assert pd.read_csv(out / "tables" / f"{table}.csv").shape[0] == len(report.tables[table])
    assert {r["label"] for r in report.tables["per_class"]} == set("NDGCAHMO")
    assert {r["eye"] for r in report.tables["per_eye"]} <= {"OD", "OS", "unknown"}
    assert any(k.startswith("modality/fundus/") for k in report.metrics)


def test_metrics_match_the_written_predictions(report, tiny_recipe):
    # The report's numbers must be exactly what the saved predictions give (no hidden state).
    frame = pd.read_csv(report.artifacts["predictions"])
    labels = list(tiny_recipe.model.labels)
    again = classification_metrics(
        frame[[f"y_{lab}" for lab in labels]].to_numpy(),
        frame[[f"p_{lab}" for lab in labels]].to_numpy(),
        labels,
        tiny_recipe.evaluate.threshold,
    )
    calibration = {"macro_ece", "ood_rate"}  # checked in tests/evaluate/test_calibration_report.py
    assert again.flat() == pytest.approx(
        {
            k: v
            for k, v in report.metrics.items()
            if k not in calibration
            and ("/" not in k or k.split("/")[0] in ("auc", "f1", "precision", "recall"))
        }
    )
    eces = [report.metrics[f"ece/{lab}"] for lab in labels]
    assert report.metrics["macro_ece"] == pytest.approx(sum(eces) / len(eces))


def test_odir_per_patient_beside_per_eye(report, tiny_recipe, tiny_dataset):
    # ODIR scores patients: the report's patient/… figures are the eyes' predictions merged per patient.
    from eyeops.evaluate.metrics import patient_level

    frame = pd.read_csv(report.artifacts["predictions"])
    samples = pq.read_table(Path(tiny_dataset.uri) / "samples.parquet").to_pandas().set_index("id")
    patients = [samples.loc[i, "patient_id"] for i in frame["id"]]
    labels = list(tiny_recipe.model.labels)
    y = frame[[f"y_{lab}" for lab in labels]].to_numpy()
    truth, probs, ids = patient_level(y, frame[[f"p_{lab}" for lab in labels]].to_numpy(), patients, labels)
    again = classification_metrics(truth, probs, labels, tiny_recipe.evaluate.threshold)
    assert report.metrics["patient/n"] == len(ids) == len(set(patients)) < len(frame)  # eyes merged
    for name in ("kappa", "odir_f1", "odir_auc", "odir_score", "macro_auc"):
        assert report.metrics.get(f"patient/{name}") == pytest.approx(getattr(again, name)), name
    units = {row["unit"]: row for row in report.tables["odir_units"]}
    assert units["eye"]["n"] == len(frame) and units["patient"]["n"] == len(ids)


def test_model_card(report, tiny_dataset, tiny_checkpoint):
    card = Path(report.artifacts["model_card"]).read_text()
    for needle in (
        "## Intended use",
        "## Out-of-scope use",
        "## Data lineage",
        "## Known limits",
        tiny_dataset.fingerprint,
        tiny_checkpoint.fingerprint,
        "Warning — synthetic data",
        "| label | positives | auc |",
        "### per eye",
    ):
        assert needle in card, needle


def test_val_split_and_bad_primary_metric(tiny_recipe, tiny_checkpoint, tiny_dataset, tmp_path):
    val = tiny_recipe.with_overrides({"evaluate.split": "val"})
    assert evaluate(val, tiny_checkpoint, tiny_dataset, out_dir=str(tmp_path / "v")).split == "val"
    typo = tiny_recipe.with_overrides({"evaluate.primary_metric": "macro_acu"})
    with pytest.raises(ConfigError, match="macro_acu"):
        evaluate(typo, tiny_checkpoint, tiny_dataset, out_dir=str(tmp_path / "t"))


def test_corrupt_image_names_file_row_and_field(tiny_recipe, tiny_checkpoint, tiny_dataset, tmp_path):
    from eyeops.evaluate.runner import dataset_ref

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset.uri, broken)
    table = pq.read_table(broken / "samples.parquet").to_pylist()
    row = next(i for i, r in enumerate(table) if r["split"] == "test")
    (broken / table[row]["images"][0]).write_bytes(b"not an image")
    with pytest.raises(DataError, match=rf"row {row}, field 'images'.*cannot decode"):
        evaluate(tiny_recipe, tiny_checkpoint, dataset_ref(str(broken)), out_dir=str(tmp_path / "r"))


def test_cli_evaluate_prints_metrics(tiny_checkpoint, tiny_dataset, tmp_path):
    from eyeops.cli import app

    result = CliRunner().invoke(
        app, ["evaluate", tiny_checkpoint.uri, "--data", tiny_dataset.uri, "--out", str(tmp_path / "cli")]
    )
    assert result.exit_code == 0, result.output
    assert "macro_auc" in result.output and "per class" in result.output
    assert (tmp_path / "cli" / "model_card.md").is_file()


def test_max_per_task_scores_a_fixed_subset_and_says_so(tiny_recipe, tiny_checkpoint, tiny_dataset, tmp_path):
    from eyeops.evaluate.runner import limit_per_task, read_split

    rows = read_split(Path(tiny_dataset.uri), "test")
    mixed = pd.concat([rows, rows.assign(task="closed_qa", id=rows["id"] + "-q")], ignore_index=True)
    picked = limit_per_task(mixed.sample(frac=1, random_state=0), 3)
    assert picked.groupby("task").size().to_dict() == {"classify": 3, "closed_qa": 3}
    assert list(picked[picked.task == "classify"]["id"]) == sorted(rows["id"])[:3]  # first by id
    capped = tiny_recipe.with_overrides({"evaluate.max_per_task": 3})
    report = evaluate(capped, tiny_checkpoint, tiny_dataset, out_dir=str(tmp_path / "capped"))
    assert report.metrics["n"] == 3
    notes = json.loads(Path(report.artifacts["metrics"]).read_text())["notes"]
    assert any(f"scored 3 of {len(rows)} test samples" in note for note in notes)
