"""The data engine: closed/open QA and reports from labels, knowledge-base pairs and MCQs."""

from __future__ import annotations

import re

import numpy as np

from eyeops.data import load_samples, prepare, read_manifest
from eyeops.data.engine import (
    LETTERS,
    TOPICS,
    closed_qa,
    knowledge_base,
    knowledge_mcqs,
    knowledge_pairs,
    open_qa,
    report,
)
from eyeops.data.findings import Finding
from eyeops.data.schema import IMAGE_TOKEN, ODIR_LABELS, Eye, Task
from eyeops.recipes import DataSpec


def _hot(*codes):
    return [int(c in codes) for c in ODIR_LABELS]


def test_closed_qa_letter_points_at_a_true_diagnosis():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        (q, options, letter), (yn_q, yn_opts, yn) = closed_qa(_hot("D", "H"), rng=rng)
        assert len(options) == 4 and len(set(options)) == 4 and letter in LETTERS[:4]
        assert options[LETTERS.index(letter)] in ("diabetic retinopathy", "hypertensive retinopathy")
        assert all(f"{LETTERS[i]}. {o}" in q for i, o in enumerate(options))
        assert yn_opts == ["Yes", "No"]
        positive = "diabetic retinopathy" in yn_q or "hypertensive retinopathy" in yn_q
        assert yn == ("Yes" if positive else "No"), yn_q


def test_no_option_gives_the_answer_away():
    """Each option, "other abnormality" included, is offered as a distractor as well as an answer,
    and yes/no questions about it are answered both ways."""
    as_answer, as_distractor, other_yes_no = set(), set(), set()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        labels = _hot(ODIR_LABELS[seed % len(ODIR_LABELS)])
        (_q, options, letter), (yn_q, _, yn) = closed_qa(labels, rng=rng)
        answer = options[LETTERS.index(letter)]
        as_answer.add(answer)
        as_distractor.update(o for o in options if o != answer)
        if "other abnormality" in yn_q:
            other_yes_no.add(yn)
    assert as_answer == as_distractor and "other abnormality" in as_answer
    assert other_yes_no == {"Yes", "No"}


def test_normal_image_questions():
    (_q, options, letter), _ = closed_qa(_hot("N"), rng=np.random.default_rng(0))
    assert options[LETTERS.index(letter)] == "normal fundus"
    qa = open_qa(_hot("N"), [Finding(label="N", description="healthy disc")])
    assert "normal" in qa["diagnosis"][1] and "etiology" not in qa


def test_open_qa_and_report_use_findings_and_knowledge():
    findings = [Finding(label="G", description="cup-to-disc ratio about 0.8", location="optic disc")]
    qa = open_qa(_hot("G"), findings)
    assert set(qa) == {"diagnosis", "description", "etiology", "treatment", "location"}
    assert "glaucoma" in qa["diagnosis"][1]
    assert "0.8" in qa["description"][1] and "optic disc" in qa["location"][1]
    assert "prostaglandin" in qa["treatment"][1]
    text = report(_hot("G"), findings, eye=Eye.OS)
    lines = text.splitlines()
    assert lines[0] == "Examination Type: Colour fundus photography, left eye (OS)"
    assert lines[1].startswith("Image Description: Cup-to-disc ratio about 0.8")
    assert lines[2].startswith("Diagnostic Recommendation: Glaucoma.")


def test_knowledge_base_covers_common_diseases_and_odir_labels():
    kb = knowledge_base()
    assert len(kb.diseases) >= 20 and len({d.key for d in kb.diseases}) == len(kb.diseases)
    assert {d.odir for d in kb.diseases if d.odir} == {"D", "G", "C", "A", "H", "M"}
    pairs = knowledge_pairs(seed=0)
    assert len(pairs) == len(kb.diseases) * len(TOPICS)
    by_key = {d.key: d for d in kb.diseases}
    for key, topic, question, answer in pairs:
        assert by_key[key].name in question and answer == getattr(by_key[key], topic)


def test_knowledge_mcqs_have_one_right_answer():
    kb = {d.key: d for d in knowledge_base().diseases}
    mcqs = knowledge_mcqs(seed=1)
    assert len(mcqs) == 4 * len(kb)
    for key, question, options, letter in mcqs:
        assert len(options) == 4 and len(set(options)) == 4
        right = options[LETTERS.index(letter)]
        d = kb[key]
        assert right in (d.hallmark, d.key_test, d.first_line, d.name), (question, right)


def test_prepare_knowledge_splits_by_disease(tmp_path):
    ref = prepare(DataSpec(source="knowledge", seed=2), str(tmp_path / "kb"), name="kb")
    samples = load_samples(ref.uri)
    assert {s.task for s in samples} == {Task.TEXT_QA, Task.MCQ}
    split_of: dict[str, set] = {}
    for s in samples:
        split_of.setdefault(s.meta["disease"], set()).add(s.split)
        assert s.messages[-1].role == "user" and s.answer
    assert all(len(v) == 1 for v in split_of.values())
    assert {next(iter(v)) for v in split_of.values()} == {"train", "val", "test"}


def test_prepare_derives_image_tasks_from_labels(tmp_path):
    spec = DataSpec(n=8, image_size=96, tasks=["closed_qa", "open_qa", "report"])
    ref = prepare(spec, str(tmp_path / "vqa"), name="vqa")
    samples = load_samples(ref.uri)
    counts = read_manifest(ref.uri).counts
    assert sum(v for k, v in counts.items() if k.startswith("closed_qa/fundus")) == 16
    assert sum(v for k, v in counts.items() if k.startswith("report/fundus")) == 8
    assert not any(s.task == Task.CLASSIFY for s in samples)
    for s in samples:
        assert len(s.images) == 1 and s.messages[-1].content.startswith(IMAGE_TOKEN)
        if s.task == Task.REPORT:
            assert re.fullmatch(
                r"Examination Type: .+\nImage Description: .+\nDiagnostic Recommendation: .+",
                s.answer,
                flags=re.S,
            )
        if s.task == Task.CLOSED_QA and len(s.options) == 4:
            name = s.options[LETTERS.index(s.answer)]
            code = {
                v: k
                for k, v in {
                    "N": "normal fundus",
                    **dict(
                        zip(
                            ODIR_LABELS[1:],
                            [
                                "diabetic retinopathy",
                                "glaucoma",
                                "cataract",
                                "age-related macular degeneration",
                                "hypertensive retinopathy",
                                "pathological myopia",
                                "other abnormality",
                            ],
                            strict=True,
                        )
                    ),
                }.items()
            }[name]
            assert s.labels[ODIR_LABELS.index(code)] == 1
