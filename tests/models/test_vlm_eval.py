"""Eyecare-Bench style evaluation of a (tiny, saved) VLM through the shared evaluation runner."""

from __future__ import annotations

import json

import pytest
from eyeops_testing.judge_server import JudgeServer
from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_recipe
from PIL import Image
from test_vlm import _write_dataset

from eyeops.data.schema import Manifest, Message, Sample
from eyeops.data.store import write_samples
from eyeops.evaluate import judge
from eyeops.evaluate import text_metrics as tm
from eyeops.evaluate.runner import checkpoint_ref, dataset_ref, evaluate
from eyeops.models.common.vqa_eval import disease_keywords, parse_yes_no, report_check
from eyeops.models.vlm.family import FAMILY
from eyeops.recipes import JudgeSpec, parse_recipe


def test_parsers():
    assert parse_yes_no("Yes, there is cupping.") == "yes"
    assert parse_yes_no("No. The disc is normal; yes-no questions aside") == "no"
    assert parse_yes_no("the cup is large") is None
    report = (
        "Examination Type: colour fundus photograph. Image Description: enlarged cup. "
        "Diagnostic Recommendation: findings suggest glaucoma; refer for visual fields."
    )
    assert report_check(report, ["glaucoma"]) == {
        "has_examination_type": 1.0,
        "has_image_description": 1.0,
        "has_diagnostic_recommendation": 1.0,
        "sections_complete": 1.0,
        "keyword_match": 1.0,
    }
    partial = report_check("Image Description: normal disc.", ["glaucoma"])
    assert partial["sections_complete"] == 0.0 and partial["keyword_match"] == 0.0
    assert disease_keywords({"labels": [0, 1, 1, 0, 0, 0, 0, 0]}, list("NDGCAHMO")) == [
        "diabetic retinopathy",
        "glaucoma",
    ]
    assert disease_keywords({"meta": json.dumps({"keywords": "Drusen, AMD"})}, []) == ["drusen", "amd"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm-eval")
    recipe = parse_recipe(
        tiny_recipe(save_tiny_llm(root / "llm"), tower="timm", connector="ldc", eval_max_new_tokens=6)
    )
    FAMILY.save(FAMILY.build_model(recipe), recipe, root / "model")
    return recipe, checkpoint_ref(str(root / "model"), recipe)


def test_runner_uses_the_family_hook(saved, tmp_path):
    recipe, checkpoint = saved
    data = _write_dataset(tmp_path / "data")
    report = evaluate(
        recipe,
        checkpoint,
        dataset_ref(str(data)),
        out_dir=str(tmp_path / "eval"),
    )
    assert report.primary_metric == "closed_qa/accuracy" and report.num_samples == 2
    assert 0.0 <= report.metrics["closed_qa/accuracy"] <= 1.0
    assert report.metrics["closed_qa/fundus/n"] == 2
    # A random tiny LM almost never says yes/no: unparseable answers are counted, and counted wrong.
    assert report.metrics["closed_qa/unparseable"] + report.metrics["closed_qa/accuracy"] * 2 <= 2
    rows = report.tables["closed_qa_fundus"]
    assert {r["id"] for r in rows} == {"s4", "s5"} and {"prediction", "reference", "status"} <= set(rows[0])
    lines = (tmp_path / "eval" / "samples" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 and (tmp_path / "eval" / "samples" / json.loads(lines[0])["images"][0]).is_file()


def _vqa_rad_like(root):
    """VQA-RAD-style test rows: closed answers without options ("left", "2") and an open question."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 90, 90)).save(root / "images" / "ct.png")
    rows = [
        ("c1", "closed_qa", "Is the lesion on the left or the right?", "left"),
        ("c2", "closed_qa", "How many lesions are there?", "2"),
        ("o1", "open_qa", "Which organ is shown?", "the brain"),
        ("o2", "open_qa", "What is abnormal?", "a mass in the left frontal lobe"),
    ]
    samples = [
        Sample(
            id=sid,
            modality="ct",
            images=["images/ct.png"],
            task=task,
            messages=[Message(role="user", content=f"<image>\n{question}")],
            answer=answer,
            split="test",
        )
        for sid, task, question, answer in rows
    ]
    write_samples(samples, root)
    (root / "manifest.json").write_text(Manifest(name="vqa-rad-like").model_dump_json())
    return root


def test_closed_answers_without_options_and_the_llm_judge(saved, tmp_path):
    recipe, checkpoint = saved
    data = _vqa_rad_like(tmp_path / "data")
    with JudgeServer() as server:
        spec = JudgeSpec(base_url=server.base_url, model="judge-test", api_key_env=None)
        judged = recipe.model_copy(update={"evaluate": recipe.evaluate.model_copy(update={"judge": spec})})
        report = evaluate(judged, checkpoint, dataset_ref(str(data)), out_dir=str(tmp_path / "eval"))
    m = report.metrics
    # closed answers without options are scored (they used to raise), unreadable ones counted
    assert m["closed_qa/n"] == 2 and m["closed_qa/unparsed_rate"] == m["closed_qa/unparseable"] / 2
    assert {r["status"] for r in report.tables["closed_qa_ct"]} <= {"ok", "wrong", "unparseable"}
    # every open answer went to the judge; its verdicts, rubric and model are in the report
    assert len(server.requests) == 2 and server.requests[0]["model"] == "judge-test"
    rows = report.tables["judge_open_qa"]
    assert m["open_qa/judge_n"] == 2 and [r["id"] for r in rows] == ["o1", "o2"]
    assert m["open_qa/judge_unparsed_rate"] == sum(r["status"] == "unparseable" for r in rows) / 2
    assert m["open_qa/judge_score"] == pytest.approx(sum(r["judge_score"] for r in rows) / 2)
    assert (tmp_path / "eval" / "judge" / "rubric.md").read_text().strip() == judge.DEFAULT_RUBRIC
    names = tm.EssayMetrics.from_spec(recipe.evaluate).names()
    assert f"open_qa/{names['semscore']}" in m and f"open_qa/{names['bertscore']}" in m
