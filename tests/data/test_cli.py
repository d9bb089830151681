"""`eyeops data prepare` and `eyeops data inspect` through the real typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from eyeops.cli import app
from eyeops.data import read_manifest

runner = CliRunner()


def test_prepare_synthetic_then_inspect(tmp_path):
    out = tmp_path / "syn"
    result = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--source",
            "synthetic",
            "--n",
            "6",
            "--image-size",
            "64",
            "--tasks",
            "classify,closed_qa",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "closed_qa" in result.output and "patient-level split: ok" in result.output
    assert read_manifest(out).name == "syn"
    inspected = runner.invoke(app, ["data", "inspect", str(out), "--verify"])
    assert inspected.exit_code == 0 and "verified" in inspected.output
    (out / "samples.parquet").write_bytes(b"tampered")
    assert runner.invoke(app, ["data", "inspect", str(out), "--verify"]).exit_code == 1


def test_partly_bad_input_reports_quarantine_and_succeeds(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(
        json.dumps(
            [{"question": "What is a cataract?", "answer": "Lens clouding."}, {"question": "", "answer": "x"}]
        ),
        encoding="utf-8",
    )
    result = runner.invoke(
        app, ["data", "prepare", str(path), "--source", "essay", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "quarantined: 1" in result.output and "qa.json row 2" in result.output


def test_unusable_input_exits_nonzero_with_one_clear_line(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_text("question,answer\nWhat?,A\n", encoding="utf-8")
    result = runner.invoke(
        app, ["data", "prepare", str(path), "--source", "mcq", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "mcq.csv" in result.output and "option_a" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["data", "prepare", "--source", "odir", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "data.path is required" in result.output


def test_prepare_a_mix_from_a_spec_file_and_log_its_report_to_mlflow(tmp_path):
    from eyeops_testing.raw_data import write_odir, write_raw_dialogues
    from mlflow.tracking import MlflowClient

    from eyeops.config import get_settings

    spec = tmp_path / "mix.yaml"
    spec.write_text(
        "data:\n  source: mix\n  image_size: 64\n  mix:\n"
        f"    - {{source: odir, path: {write_odir(tmp_path / 'odir', patients=2, size=64)}}}\n"
        f"    - {{source: raw_dialogue, path: {write_raw_dialogues(tmp_path / 'd.txt')}}}\n",
        encoding="utf-8",
    )
    out = tmp_path / "mixed"
    result = runner.invoke(app, ["data", "prepare", "--spec", str(spec), "--out", str(out), "--mlflow"])
    assert result.exit_code == 0, result.output
    assert (
        "mix: odir (data.csv): took 4 of 4" in result.output
        and "masked in free text: name 4" in result.output
    )
    run_id = result.output.split("run ")[1].split()[0]
    client = MlflowClient(get_settings().tracking_uri)
    run = client.get_run(run_id)
    assert run.data.tags["eyeops.dataset_fingerprint"] == read_manifest(out).fingerprint
    assert run.data.metrics["samples"] == 6 and run.inputs.dataset_inputs[0].dataset.name == "mixed"
    logged = {a.path for a in client.list_artifacts(run_id, "dataset")}
    assert logged == {"dataset/quality.html", "dataset/quality.json", "dataset/manifest.json"}

    spec.write_text("data:\n  source: mix\n", encoding="utf-8")
    bad = runner.invoke(app, ["data", "prepare", "--spec", str(spec), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "data.mix lists the sources" in bad.output
    given = ["--source", "odir", "--n", "9"]  # options the spec replaces: refused, not ignored
    clash = runner.invoke(app, ["data", "prepare", "--spec", str(spec), *given, "--out", str(tmp_path / "y")])
    assert clash.exit_code == 2 and "--spec replaces --source, --n: set them in" in clash.output
