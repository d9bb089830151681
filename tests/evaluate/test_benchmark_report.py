"""Issue 17's table: MedMCQA, PubMedQA, MedQuAD and VQA-RAD files imported as benchmarks, a base
model (zero-shot) and a fine-tuned checkpoint evaluated on them through ``eyeops evaluate``, and
``eyeops report`` printing and exporting one row per model (markdown, CSV, bar chart in MLflow)."""

from __future__ import annotations

import csv

import yaml
from eyeops_testing import benchmark_files as bf
from eyeops_testing import llm_tiny, vlm_tiny
from eyeops_testing.finetune import finetune_in_process
from typer.testing import CliRunner

from eyeops.cli import app
from eyeops.data.schema import Message, Sample
from eyeops.recipes import parse_recipe


def _vlm_train_set(root):
    """A few yes/no fundus questions in the train split, for a fine-tuning step or two."""
    from eyeops.data.schema import Manifest
    from eyeops.data.store import publish, write_samples

    bf.write_vqa_rad(root)  # the same two images
    samples = [
        Sample(
            id=f"t{i}",
            modality="fundus",
            images=[f"VQA_RAD Image Folder/synpic{1 + i % 2}.jpg"],
            task="closed_qa",
            messages=[Message(role="user", content="<image>\nIs there a retinal haemorrhage?")],
            answer="Yes" if i % 2 == 0 else "No",
            options=[],
            split="train",
        )
        for i in range(4)
    ]
    write_samples(samples, root)
    publish(root, Manifest(name="vlm-train"))
    return root


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})  # the whole table, unwrapped
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_base_and_finetuned_rows_on_four_benchmark_layouts(tmp_path):
    empty = CliRunner().invoke(app, ["report"])
    assert "no benchmark evaluations" in str(empty.exception)  # nothing evaluated yet: said so
    data = tmp_path / "bench"
    data.mkdir()
    benches = {
        "medmcqa": bf.prepare_benchmark(
            "medmcqa", bf.write_medmcqa(data / "dev.jsonl"), data / "m", "medmcqa"
        ),
        "pubmedqa": bf.prepare_benchmark(
            "pubmedqa", bf.write_pubmedqa(data / "ori_pqal.json"), data / "p", "pubmedqa"
        ),
        "medquad": bf.prepare_benchmark(
            "medquad", bf.write_medquad(data / "medquad.csv"), data / "q", "medquad"
        ),
        "vqa_rad": bf.prepare_benchmark("vqa_rad", bf.write_vqa_rad(data / "vqarad"), data / "v", "vqa-rad"),
    }
    assert [b.num_samples for b in benches.values()] == [4, 3, 2, 4]

    # LLM family: tiny local base; the fine-tuned checkpoint takes a few LoRA steps in process.
    llm_dir = llm_tiny.save_tiny_llm(tmp_path / "llm")
    llm_map = llm_tiny.tiny_recipe(llm_dir, stages=[{"name": "sft", "trainable": ["lora"], "max_steps": 4}])
    llm_recipe = parse_recipe(llm_map)
    (tmp_path / "llm.yaml").write_text(yaml.safe_dump(llm_map))
    tuned_llm = finetune_in_process(
        llm_recipe, llm_tiny.write_dataset(tmp_path / "llm-data"), tmp_path / "llm-run" / "model"
    )
    text = [
        "--data",
        benches["medmcqa"].uri,
        "--data",
        benches["pubmedqa"].uri,
        "--data",
        benches["medquad"].uri,
    ]
    out = _invoke(
        "evaluate", "base", "--recipe", str(tmp_path / "llm.yaml"), "--label", "tiny-llm-base", *text
    )
    assert "medmcqa" in out and "mcq/accuracy" in out and "MLflow run" in out
    _invoke("evaluate", str(tuned_llm), *text)

    # VLM family on VQA-RAD: the recipe's LM with a fresh connector vs a few trained steps.
    vlm_llm = vlm_tiny.save_tiny_llm(tmp_path / "vlm-llm")
    vlm_map = vlm_tiny.tiny_recipe(vlm_llm, eval_max_new_tokens=4)
    vlm_map["train"]["stages"] = [{"name": "instruct", "trainable": ["connector", "lora"], "max_steps": 2}]
    (tmp_path / "vlm.yaml").write_text(yaml.safe_dump(vlm_map))
    tuned_vlm = finetune_in_process(
        parse_recipe(vlm_map), _vlm_train_set(tmp_path / "vlm-data"), tmp_path / "vlm-run" / "model", steps=2
    )
    vqa = ["--data", benches["vqa_rad"].uri]
    _invoke("evaluate", "base", "--recipe", str(tmp_path / "vlm.yaml"), "--label", "tiny-vlm-base", *vqa)
    _invoke("evaluate", str(tuned_vlm), "--label", "tiny-vlm-tuned", *vqa)

    out = _invoke("report", "--out", str(tmp_path / "report"))
    for row in ("tiny-llm-base", "llm-run/model", "tiny-vlm-base", "tiny-vlm-tuned", "zero-shot"):
        assert row in out, out
    for bench in ("medmcqa", "pubmedqa", "medquad", "vqa-rad"):  # one terminal table each
        assert bench in out
    assert "mcq/accuracy" in out and "essay/rougeL" in out and "closed_qa/accuracy" in out

    from eyeops.evaluate.report import collect

    table = collect()
    assert [r.model for r in table.rows][:2] == ["tiny-llm-base", "tiny-vlm-base"]  # base rows first
    assert table.value("llm-run/model", "medmcqa/mcq/accuracy") is not None
    assert table.value("tiny-llm-base", "vqa-rad/closed_qa/accuracy") is None  # not evaluated there
    assert not any(c.endswith(("/n", "/unparseable")) or c.count("/") > 2 for c in table.columns)
    assert {"medmcqa/mcq/accuracy", "pubmedqa/mcq/accuracy", "medquad/essay/rougeL"} <= set(table.columns)
    assert "vqa-rad/closed_qa/accuracy" in table.columns
    with (tmp_path / "report" / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {"tiny-llm-base", "llm-run/model", "tiny-vlm-base", "tiny-vlm-tuned"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| tiny-llm-base (zero-shot) |" in md and md.count("\n") == 2 + 4
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"

    # MLflow holds one run per model x benchmark set (tagged) and the report run with its chart.
    from eyeops.evaluate.benchmark import find_runs

    runs = find_runs({"eyeops.eval_kind": "benchmark"})
    assert sorted(r.data.tags["eyeops.benchmarks"] for r in runs) == [
        "medmcqa,pubmedqa,medquad",
        "medmcqa,pubmedqa,medquad",
        "vqa-rad",
        "vqa-rad",
    ]
    base_run = next(r for r in runs if r.data.tags["eyeops.model"] == "tiny-llm-base")
    assert base_run.data.tags["eyeops.model_kind"] == "base"
    assert base_run.data.tags["eyeops.benchmark.medmcqa"] == benches["medmcqa"].fingerprint
    assert "medmcqa/mcq/accuracy" in base_run.data.metrics
    (report_run,) = find_runs({"eyeops.eval_kind": "report"})
    import mlflow

    names = {f.path for f in mlflow.MlflowClient().list_artifacts(report_run.info.run_id, "report")}
    assert {"report/report.md", "report/report.csv", "report/report.png"} <= names


def test_evaluate_base_needs_a_recipe(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "base", "--data", str(tmp_path)])
    assert result.exit_code != 0 and "needs --recipe" in str(result.exception)
