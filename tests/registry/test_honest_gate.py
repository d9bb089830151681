"""The honest gate: a candidate must beat chance/majority and the base model zero-shot, by the margin
at the lower bound of a paired bootstrap interval; the base model's score is measured once per base
model x benchmark fingerprint and cached in MLflow. The shipped generative recipes' gates keep a
deliberately untrained candidate at @challenger."""

from __future__ import annotations

import pytest
from eyeops_testing import benchmark_files as bf
from eyeops_testing import llm_tiny, vlm_tiny
from typer.testing import CliRunner

from eyeops.cli import app
from eyeops.data.schema import Message, Sample, Split, Task
from eyeops.recipes import GateSpec, list_recipes, load_recipe
from eyeops.refs import EvalReport
from eyeops.registry import Reference, bootstrap_diff, decide
from eyeops.registry.baseline import chance_reference, gate_references, item_scores

METRIC = "mcq/accuracy"


def _ref(cand: list[int], base: list[int], name: str = "base_model") -> Reference:
    ids = [f"q{i}" for i in range(len(cand))]
    return Reference(
        name=name,
        label="base model x",
        value=sum(base) / len(base),
        candidate_items=dict(zip(ids, map(float, cand), strict=True)),
        reference_items=dict(zip(ids, map(float, base), strict=True)),
    )


def test_bootstrap_rule_by_hand():
    point, low, high = bootstrap_diff([1, 1, 1, 1], [0, 0, 0, 0], samples=200, confidence=0.95)
    assert (point, low, high) == (1.0, 1.0, 1.0)
    point, low, high = bootstrap_diff([1, 0] * 10, [0, 1] * 10, samples=500, confidence=0.95)
    assert point == 0.0 and low < 0 < high
    # lower is better: the sign flips
    flipped = bootstrap_diff([0.1, 0.2], [0.5, 0.6], samples=100, confidence=0.9, higher=False)
    assert flipped[0] == pytest.approx(0.4)

    gate = GateSpec()
    same = decide(gate, METRIC, {METRIC: 0.5}, references=[_ref([1, 0] * 10, [1, 0] * 10)])
    assert not same.passed and same.failed == ["base_model"] and "does not beat it" in same.reason
    better = decide(gate, METRIC, {METRIC: 1.0}, references=[_ref([1] * 20, [0] * 20)])
    assert better.passed and "passed: base_model, champion" in better.reason
    # 14/20 vs 10/20 is a better point estimate but not a significant one: refused.
    noisy = decide(gate, METRIC, {METRIC: 0.7}, references=[_ref([1] * 14 + [0] * 6, [1, 0] * 10)])
    check = noisy.checks[0]
    assert not noisy.passed and check.diff == pytest.approx(0.2) and check.ci_low <= 0 < check.ci_high
    # a margin applies to the lower bound: 0.8 above the reference, but not surely 0.7 above it
    strong = [_ref([1] * 16 + [0] * 4, [0] * 20)]
    margin = decide(GateSpec(min_margin=0.7), METRIC, {METRIC: 0.8}, references=strong)
    assert not margin.passed and "lower bound must exceed 0.7000" in margin.reason
    assert decide(GateSpec(min_margin=0.5), METRIC, {METRIC: 0.8}, references=strong).passed
    # no per-item scores: the point value is compared, and the detail says so
    point_ref = Reference(name="chance", label="chance (AUC)", value=0.5)
    assert decide(gate, "macro_auc", {"macro_auc": 0.6}, references=[point_ref]).passed
    assert "point estimate" in decide(gate, "macro_auc", {"macro_auc": 0.5}, references=[point_ref]).reason
    broken = Reference(name="base_model", label="base model", error="no dataset")
    failed = decide(gate, METRIC, {METRIC: 0.9}, references=[broken])
    assert not failed.passed and "cannot compare: no dataset" in failed.reason


def test_chance_is_the_better_of_uniform_and_majority(tmp_path):
    from eyeops.data.schema import Manifest
    from eyeops.data.store import publish, write_samples
    from eyeops.evaluate.runner import dataset_ref

    answers = ["A", "A", "A", "B"]
    samples = [
        Sample(
            id=f"q{i}",
            task=Task.MCQ,
            split=Split.TEST,
            messages=[Message(role="user", content=f"Question {i}?")],
            options=["w", "x", "y", "z"],
            answer=a,
        )
        for i, a in enumerate(answers)
    ]
    write_samples(samples, tmp_path)
    publish(tmp_path, Manifest(name="skewed"))
    table = [{"id": f"q{i}", "correct": c} for i, c in enumerate([1, 1, 1, 0])]
    report = EvalReport(uri=str(tmp_path), split="test", num_samples=4, metrics={METRIC: 0.75},
                        primary_metric=METRIC, tables={"mcq_generations": table})  # fmt: skip
    assert item_scores(report.tables, METRIC) == {"q0": 1.0, "q1": 1.0, "q2": 1.0, "q3": 0.0}
    ref = chance_reference(METRIC, report, dataset_ref(str(tmp_path)))
    assert ref.label == "majority answer 'A'" and ref.value == 0.75  # always "A" beats 1/4 guessing
    decision = decide(GateSpec(), METRIC, report.metrics, references=[ref])
    assert not decision.passed and decision.failed == ["chance"]  # it only matched the majority answer
    assert "no chance level" in chance_reference("essay/bleu", report, None).error


def test_every_shipped_recipe_gates_on_chance_and_base_model():
    for name in list_recipes():
        gate = load_recipe(name).register.gate
        assert gate.chance and gate.baseline, name


def _shipped_llm(llm_dir):
    return load_recipe("eye-llm").with_overrides(
        {
            "model.base": str(llm_dir),
            "model.max_seq_len": 256,
            "model.eval_max_new_tokens": 4,
            "model.corpus": [],
            "model.lora.target_modules": ["q_proj", "v_proj"],
            "evaluate.max_per_task": None,
        }
    )


def _shipped_vlm(llm_dir):
    tiny = vlm_tiny.tiny_recipe(llm_dir)["model"]
    return load_recipe("eye-vlm").with_overrides(
        {
            "model.llm": str(llm_dir),
            "model.vision": tiny["vision"],
            "model.connector": tiny["connector"],
            "model.lora.target_modules": ["q_proj", "v_proj"],
            "model.eval_max_new_tokens": 4,
            "train.stages": [{"name": "instruct", "trainable": ["connector", "lora"], "max_steps": 1}],
        }
    )


def test_untrained_candidates_stay_challenger_and_the_baseline_is_cached(tmp_path):
    from eyeops.evaluate import evaluate
    from eyeops.evaluate.benchmark import find_runs
    from eyeops.evaluate.runner import checkpoint_ref, dataset_ref
    from eyeops.evaluate.targets import base_model_dir
    from eyeops.registry import register, show

    llm_recipe = _shipped_llm(llm_tiny.save_tiny_llm(tmp_path / "llm"))
    vlm_recipe = _shipped_vlm(vlm_tiny.save_tiny_llm(tmp_path / "vlm-llm"))
    # The gate metrics only (MCQ accuracy, closed-QA accuracy): no essays to score.
    mcq = [s for s in llm_tiny.text_samples() if s.split != Split.TEST or s.task == Task.MCQ]
    text = dataset_ref(str(llm_tiny.write_dataset(tmp_path / "text", mcq)))
    closed = bf.write_vqa_rad(tmp_path / "vqarad", open_items=False)
    vqa = bf.prepare_benchmark("vqa_rad", closed, tmp_path / "v", "vqa-rad")
    first = {}
    for recipe, data in ((llm_recipe, text), (vlm_recipe, vqa)):
        # Deliberately untrained: the base model itself, saved as a candidate checkpoint.
        candidate = checkpoint_ref(str(base_model_dir(recipe)), recipe)
        report = evaluate(recipe, candidate, data, out_dir=str(tmp_path / recipe.name))
        version = register(recipe, candidate, report, dataset=data)
        assert (version.alias, version.gate_passed) == ("challenger", False), version.gate_reason
        (info,) = show(recipe.register.model_name).versions
        assert "base_model" in info.gate_failed, info.gate_reason
        assert "does not beat it" in info.gate_reason and "base model" in info.gate_reason
        assert show(recipe.register.model_name).aliases == {"challenger": 1}
        first[recipe.name] = (candidate, report, data)

    out = CliRunner().invoke(app, ["registry", "show", "eyeops-eye-llm"])
    assert out.exit_code == 0 and "base_model" in out.output and "challenger" in out.output
    # a registered version evaluates by reference, like any model
    out = CliRunner().invoke(app, ["evaluate", "eyeops-eye-llm@challenger", "--data", text.uri])
    assert out.exit_code == 0 and "eyeops-eye-llm/1" in out.output, out.output

    # A second gate run on the same base model x benchmark reuses the cached baseline run: the
    # references register() computes, without logging another model version.
    assert len(find_runs({"eyeops.eval_kind": "gate-baseline"})) == 2
    _, report, data = first[llm_recipe.name]
    references = gate_references(llm_recipe, METRIC, report, data)
    assert [r.name for r in references] == ["chance", "base_model"] and ", cached)" in references[1].label
    assert not decide(llm_recipe.register.gate, METRIC, report.metrics, references=references).passed
    assert len(find_runs({"eyeops.eval_kind": "gate-baseline"})) == 2
    # the report holds the base model and the candidate the gate measured
    from eyeops.evaluate.report import collect

    rows = {r.model: r.kind for r in collect(recipe="eye-llm").rows}
    assert rows == {f"base:{llm_recipe.model.base}": "base", "eyeops-eye-llm/1": "registered"}
