"""Eyecare-Bench style evaluation of a (tiny, saved) VLM through the shared evaluation runner."""

from __future__ import annotations

import json

from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_recipe
from test_vlm import _write_dataset

from eyeops.evaluate.runner import checkpoint_ref, dataset_ref, evaluate
from eyeops.models.common.vqa_eval import disease_keywords, parse_yes_no, report_check
from eyeops.models.vlm.family import FAMILY
from eyeops.recipes import parse_recipe


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


def test_runner_uses_the_family_hook(tmp_path):
    llm = save_tiny_llm(tmp_path / "llm")
    recipe = parse_recipe(tiny_recipe(llm, tower="timm", connector="ldc", eval_max_new_tokens=6))
    data = _write_dataset(tmp_path / "data")
    model = FAMILY.build_model(recipe)
    FAMILY.save(model, recipe, tmp_path / "model")
    report = evaluate(
        recipe,
        checkpoint_ref(str(tmp_path / "model"), recipe),
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
