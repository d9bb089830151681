"""The llm evaluation hook through the shared evaluate stage (eyeops.evaluate.evaluate)."""

from __future__ import annotations

import json

import pytest
from eyeops_testing.judge_server import JudgeServer
from eyeops_testing.llm_tiny import save_tiny_llm, text_samples, tiny_recipe, write_dataset

from eyeops.data.schema import Split, Task
from eyeops.errors import DataError
from eyeops.evaluate import evaluate
from eyeops.evaluate import text_metrics as tm
from eyeops.families import get_family
from eyeops.recipes import JudgeSpec, parse_recipe
from eyeops.refs import CheckpointRef, DatasetRef

FAMILY = get_family("llm")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-eval")
    base = save_tiny_llm(root / "base")
    recipe = parse_recipe(tiny_recipe(base, stages=[{"name": "sft", "trainable": ["lora"]}]))
    FAMILY.save(FAMILY.build_model(recipe), recipe, root / "model")
    data = write_dataset(root / "data")
    checkpoint = CheckpointRef(
        uri=str(root / "model"),
        fingerprint="x",
        recipe_name=recipe.name,
        family="llm",
        run_name="test",
        step=0,
    )
    return recipe, checkpoint, DatasetRef(uri=str(data), fingerprint="y"), root


def test_evaluate_reports_mcq_and_essay_metrics_by_source_and_topic(saved, tmp_path):
    recipe, checkpoint, dataset, _ = saved
    report = evaluate(recipe, checkpoint, dataset, out_dir=str(tmp_path / "eval"), batch_size=4)
    test = [s for s in text_samples() if s.split == Split.TEST]
    n_mcq = sum(s.task == Task.MCQ for s in test)
    n_essay = sum(s.task == Task.TEXT_QA for s in test)
    m = report.metrics
    assert report.primary_metric == "mcq/accuracy" and 0.0 <= report.primary_value <= 1.0
    assert m["mcq/n"] == n_mcq and m["essay/n"] == n_essay and report.num_samples == n_mcq + n_essay
    # an untrained random model rarely names a letter: unparseable answers count as wrong
    assert m["mcq/correct"] + m["mcq/unparseable"] + m["mcq/missing"] <= n_mcq
    assert m["mcq/accuracy"] == pytest.approx(m["mcq/correct"] / n_mcq)
    names = tm.EssayMetrics.from_spec(recipe.evaluate).names()  # encoder named unless the paper's
    for key in (
        "essay/rougeL",
        "essay/bleu",
        "essay/meteor",
        f"essay/{names['bertscore']}",
        "source/ophtimus-mcq/mcq/accuracy",
        "source/kb/essay/rougeL",
        "topic/glaucoma/mcq/accuracy",
        "mcq/unparsed_rate",
    ):
        assert key in m and 0.0 <= m[key] <= 1.0, key
    for key in (f"essay/{names['semscore']}", f"topic/cataract/essay/{names['semscore']}"):
        assert -1.0 <= m[key] <= 1.0, key  # SemScore is a cosine, not clipped
    mcq_rows, essay_rows = report.tables["mcq_generations"], report.tables["essay_generations"]
    assert sorted(r["id"] for r in mcq_rows) == sorted(s.id for s in test if s.task == Task.MCQ)
    assert sorted(r["id"] for r in essay_rows) == sorted(s.id for s in test if s.task == Task.TEXT_QA)
    assert all(r["status"] in ("ok", "wrong", "unparseable") for r in mcq_rows)
    assert all(isinstance(r["prediction"], str) and 0 <= r["rougeL"] <= 1 for r in essay_rows)
    assert (tmp_path / "eval" / "tables" / "essay_generations.csv").is_file()
    saved_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved_metrics["metrics"]["mcq/n"] == n_mcq


def test_evaluate_without_text_samples_is_a_clear_error(saved, tmp_path):
    recipe, checkpoint, _, _ = saved
    only_docs = [s for s in text_samples() if s.task == Task.PRETRAIN_TEXT]
    only_docs = [s.model_copy(update={"split": Split.TEST}) for s in only_docs]
    data = write_dataset(tmp_path / "docs", only_docs)
    with pytest.raises(DataError, match="no text MCQ or essay samples"):
        evaluate(recipe, checkpoint, DatasetRef(uri=str(data), fingerprint="z"), out_dir=str(tmp_path / "e"))


def test_llm_judge_grades_essays_through_an_openai_compatible_server(saved, tmp_path):
    recipe, checkpoint, _, _ = saved
    essays = [s for s in text_samples() if s.task == Task.TEXT_QA and s.split == Split.TEST][:2]
    data = write_dataset(tmp_path / "essays", essays)
    with JudgeServer() as server:
        spec = JudgeSpec(base_url=server.base_url, model="judge-test", api_key_env=None)
        judged = recipe.model_copy(
            update={
                "evaluate": recipe.evaluate.model_copy(
                    update={"judge": spec, "primary_metric": "essay/judge_score"}
                )
            }
        )
        report = evaluate(
            judged, checkpoint, DatasetRef(uri=str(data), fingerprint="j"), out_dir=str(tmp_path / "e")
        )
    rows = report.tables["judge_essay"]
    assert len(server.requests) == len(rows) == report.metrics["essay/judge_n"] == len(essays)
    assert report.metrics["essay/judge_score"] == pytest.approx(
        sum(r["judge_score"] for r in rows) / len(rows)
    )
    unparsed = sum(r["status"] == "unparseable" for r in rows) / len(rows)
    assert report.metrics["essay/judge_unparsed_rate"] == pytest.approx(unparsed)
    assert "Question:\n" in server.requests[0]["messages"][1]["content"]
    assert (tmp_path / "e" / "judge" / "rubric.md").is_file() and "judge_rubric" in report.artifacts
