"""Benchmark importers on small files in each published layout, and benchmarks as test-only datasets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from eyeops.cli import app
from eyeops.data import load_samples, prepare, read_manifest
from eyeops.data.importers import mcq_variants, meadow, medmcqa, medquad, pubmedqa, vqa
from eyeops.data.schema import IMAGE_TOKEN, Modality, Task
from eyeops.errors import DataError
from eyeops.recipes import DataSpec


def _medmcqa_rows(cop_of: dict[str, object]) -> list[dict]:
    base = {
        "opa": "Cornea",
        "opb": "Lens",
        "opc": "Retina",
        "opd": "Sclera",
        "exp": "Because.",
        "topic_name": "X",
    }
    return [
        {
            **base,
            "id": "m1",
            "question": "Site of rods?",
            "cop": cop_of["m1"],
            "subject_name": "Ophthalmology",
        },
        {
            **base,
            "id": "m2",
            "question": "Most posterior?",
            "cop": cop_of["m2"],
            "subject_name": "Ophthalmology",
        },
        {**base, "id": "m3", "question": "Femur head blood?", "cop": cop_of["m3"], "subject_name": "Anatomy"},
        {**base, "id": "m4", "question": "Test split item", "cop": -1, "subject_name": "Ophthalmology"},
        {
            **base,
            "id": "m5",
            "question": "Empty option",
            "opc": "",
            "cop": cop_of["m1"],
            "subject_name": "Ophthalmology",
        },
    ]


def test_medmcqa_github_release_is_one_based_and_filters_ophthalmology(tmp_path):
    path = tmp_path / "dev.json"  # the GitHub release: JSON lines, cop 1–4
    rows = _medmcqa_rows({"m1": 3, "m2": 4, "m3": 1})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    path = path.rename(tmp_path / "dev.jsonl")
    result = medmcqa.load(str(path))
    assert [r.answer for r in result.records] == ["C", "D"]
    assert result.records[0].task == Task.MCQ and result.records[0].options == (
        "Cornea",
        "Lens",
        "Retina",
        "Sclera",
    )
    assert "C. Retina" in result.records[0].messages[0].content and result.records[0].meta["explanation"]
    assert result.counts() == {"kept": 2, "filtered": 1, "rejected": 2}
    assert result.filtered == {"subject_name 'Anatomy'": 1}
    reasons = {q.path: q.reason for q in result.quarantine}
    assert reasons["dev.jsonl row 4 field 'cop'"].startswith("no answer key (cop -1")
    assert reasons["dev.jsonl row 5 field 'opc'"] == "empty option"
    assert result.notes["cop"].startswith("1-based")
    everything = medmcqa.load(str(path), filter=[])
    assert everything.counts()["kept"] == 3 and not everything.filtered


def test_medmcqa_hf_release_is_zero_based_and_names_missing_column(tmp_path):
    path = tmp_path / "validation.parquet"  # the Hugging Face release: cop 0–3 (ClassLabel a…d)
    pd.DataFrame(_medmcqa_rows({"m1": 0, "m2": 2, "m3": 1})).to_parquet(path)
    result = medmcqa.load(str(path))
    assert [r.answer for r in result.records] == ["A", "C"] and result.notes["cop"].startswith("0-based")
    bad = tmp_path / "bad.csv"
    pd.DataFrame(
        [{"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "subject_name": "x"}]
    ).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"field 'cop': missing column\(s\) \['cop'\]"):
        medmcqa.load(str(bad))


def _pubmed_item(question, meshes, decision):
    return {
        "QUESTION": question,
        "CONTEXTS": ["Background sentence.", "Results sentence."],
        "LABELS": ["BACKGROUND", "RESULTS"],
        "MESHES": meshes,
        "final_decision": decision,
        "LONG_ANSWER": "Long answer.",
    }


def test_pubmedqa_becomes_yes_no_maybe_mcq_with_contexts(tmp_path):
    path = tmp_path / "ori_pqal.json"
    data = {
        "101": _pubmed_item("Does laser help diabetic retinopathy?", ["Retina", "Laser Coagulation"], "yes"),
        "102": _pubmed_item("Do statins lower LDL?", ["Cholesterol"], "no"),
        "103": _pubmed_item("Is glaucoma hereditary?", ["Glaucoma"], "perhaps"),
        "104": _pubmed_item("Does IOP vary by season?", ["Intraocular Pressure"], "maybe"),
    }
    path.write_text(json.dumps(data))
    result = pubmedqa.load(str(path), filter=["ophthalmology"])
    assert [(r.meta["pmid"], r.answer) for r in result.records] == [("101", "A"), ("104", "C")]
    record = result.records[0]
    assert record.options == ("yes", "no", "maybe") and "Context: Background sentence. Results" in (
        record.messages[0].content
    )
    assert result.counts() == {"kept": 2, "filtered": 1, "rejected": 1}
    assert result.quarantine[0].path == "ori_pqal.json row 3 field 'final_decision'"
    assert pubmedqa.load(str(path)).counts()["filtered"] == 0  # no filter: every item
    path.write_text(json.dumps([data["101"]]))
    with pytest.raises(DataError, match=r"field '<root>': expected one object keyed by PMID"):
        pubmedqa.load(str(path))
    path.write_text(json.dumps({"1": {"question": "lower case", "CONTEXTS": []}}))
    with pytest.raises(DataError, match=r"field 'QUESTION': missing column"):
        pubmedqa.load(str(path))


MEDQUAD_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000001" source="NEI" url="https://nei.nih.gov/x">
<Focus>{focus}</Focus>
<QAPairs>
<QAPair pid="1"><Question qid="1_1" qtype="information">What is (are) {focus} ?</Question>
<Answer>{focus} is a condition.</Answer></QAPair>
<QAPair pid="2"><Question qid="1_2" qtype="treatment">What are the treatments for {focus} ?</Question>
<Answer></Answer></QAPair>
</QAPairs>
</Document>
"""


def test_medquad_csv_and_xml(tmp_path):
    csv = tmp_path / "medquad.csv"
    pd.DataFrame(
        [
            {
                "Question": "What is glaucoma?",
                "Answer": "Optic neuropathy.",
                "source": "NEI",
                "focus_area": "Glaucoma",
            },
            {
                "Question": "What is asthma?",
                "Answer": "Airway disease.",
                "source": "NHLBI",
                "focus_area": "Asthma",
            },
            {"Question": "What is amblyopia?", "Answer": "", "source": "NEI", "focus_area": "Amblyopia"},
        ]
    ).to_csv(csv, index=False)
    result = medquad.load(str(csv), filter=["ophthalmology"])
    assert [r.answer for r in result.records] == ["Optic neuropathy."]
    assert result.records[0].task == Task.TEXT_QA and result.records[0].meta["focus_area"] == "Glaucoma"
    assert result.counts() == {"kept": 1, "filtered": 1, "rejected": 1}
    assert result.quarantine[0].path == "medquad.csv row 4 field 'answer'"

    folder = tmp_path / "5_NEI_QA"
    folder.mkdir()
    (folder / "0000001.xml").write_text(MEDQUAD_XML.format(focus="Cataract"))
    (folder / "0000002.xml").write_text(MEDQUAD_XML.format(focus="Gout"))
    result = medquad.load(str(tmp_path), filter=["cataract"])
    assert [r.messages[0].content for r in result.records] == ["What is (are) Cataract ?"]
    assert result.records[0].meta["qtype"] == "information"
    assert result.counts() == {"kept": 1, "filtered": 2, "rejected": 1}
    assert result.quarantine[0].path == "0000001.xml row 2 field 'answer'"
    (folder / "0000003.xml").write_text("<Doc><QAPairs/></Doc>")
    with pytest.raises(DataError, match=r"0000003.xml, field 'Document': expected a <Document> root"):
        medquad.load(str(folder))


def _png(path, value=80):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def vqa_rad(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqarad")
    _png(root / "VQA_RAD Image Folder" / "synpic1.jpg", 60)
    _png(root / "VQA_RAD Image Folder" / "synpic2.jpg", 120)
    rows = [
        {
            "qid": 1,
            "image_name": "synpic1.jpg",
            "question": "Is there a mass?",
            "answer": "Yes",
            "answer_type": "CLOSED",
            "question_type": "PRES",
            "image_organ": "HEAD",
            "phrase_type": "freeform",
        },
        {
            "qid": 2,
            "image_name": "synpic1.jpg",
            "question": "Where is the lesion?",
            "answer": "left frontal lobe",
            "answer_type": "OPEN",
            "question_type": "POS",
            "image_organ": "HEAD",
            "phrase_type": "freeform",
        },
        {
            "qid": 3,
            "image_name": "synpic2.jpg",
            "question": "Is the heart enlarged?",
            "answer": "No",
            "answer_type": "CLOSED",
            "question_type": "SIZE",
            "image_organ": "CHEST",
            "phrase_type": "para",
        },
        {
            "qid": 4,
            "image_name": "synpic2.jpg",
            "question": "Bad type?",
            "answer": "x",
            "answer_type": "BOTH",
            "question_type": "OTHER",
            "image_organ": "CHEST",
            "phrase_type": "para",
        },
    ]
    path = root / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(rows))
    return path


def test_vqa_rad_and_slake_closed_open_with_images(vqa_rad, tmp_path):
    result = vqa.load(str(vqa_rad), kind="vqa_rad", filter=["head"])
    assert [(r.task, r.answer) for r in result.records] == [
        (Task.CLOSED_QA, "Yes"),
        (Task.OPEN_QA, "left frontal lobe"),
    ]
    assert result.records[0].images[0].path.endswith("VQA_RAD Image Folder/synpic1.jpg")
    assert result.records[0].messages[0].content.startswith(f"{IMAGE_TOKEN}\n")
    assert result.counts() == {"kept": 2, "filtered": 2, "rejected": 0}
    everything = vqa.load(str(vqa_rad), kind="vqa_rad")
    assert everything.quarantine[0].path.endswith("row 4 field 'answer_type'")
    assert "'BOTH' is not CLOSED or OPEN" in everything.quarantine[0].reason

    _png(tmp_path / "imgs" / "xmlab1" / "source.jpg")
    slake = [
        {
            "img_name": "xmlab1/source.jpg",
            "question": "Which modality?",
            "answer": "CT",
            "answer_type": "OPEN",
            "modality": "CT",
            "location": "Abdomen",
            "q_lang": "en",
            "qid": 1,
        },
        {
            "img_name": "xmlab1/source.jpg",
            "question": "这是什么?",
            "answer": "CT",
            "answer_type": "OPEN",
            "modality": "CT",
            "location": "Abdomen",
            "q_lang": "zh",
            "qid": 2,
        },
        {
            "img_name": "",
            "question": "Is it normal?",
            "answer": "Yes",
            "answer_type": "CLOSED",
            "modality": "MRI",
            "location": "Brain",
            "q_lang": "en",
            "qid": 3,
        },
    ]
    (tmp_path / "test.json").write_text(json.dumps(slake, ensure_ascii=False))
    result = vqa.load(str(tmp_path / "test.json"), kind="slake")
    assert [r.meta["qid"] for r in result.records] == ["1"] and result.records[0].modality == Modality.CT
    assert result.filtered == {"q_lang 'zh'": 1}
    assert result.quarantine[0].path == "test.json row 3 field 'img_name'"
    (tmp_path / "wrong.json").write_text(
        json.dumps([{"image_name": "a.jpg", "question": "q", "answer": "a"}])
    )
    with pytest.raises(DataError, match="field 'img_name'"):
        vqa.load(str(tmp_path / "wrong.json"), kind="slake")


def test_omnimedvqa_and_ophtimus_eval_variants(tmp_path):
    _png(tmp_path / "Images" / "fundus1.png")
    omni = [
        {
            "question_id": "q1",
            "question": "What is shown?",
            "option_A": "Glaucoma",
            "option_B": "Normal",
            "option_C": "Cataract",
            "option_D": "Myopia",
            "gt_answer": "Normal",
            "image_path": "Images/fundus1.png",
            "modality_type": "Fundus Photography",
            "question_type": "Disease Diagnosis",
            "dataset": "RFMiD",
        },
        {
            "question_id": "q2",
            "question": "Organ?",
            "option_A": "Lung",
            "option_B": "Liver",
            "gt_answer": "Lung",
            "image_path": "Images/ct1.png",
            "modality_type": "CT(Computed Tomography)",
            "question_type": "Anatomy Identification",
            "dataset": "X",
        },
        {
            "question_id": "q3",
            "question": "Which?",
            "option_A": "Drusen",
            "option_B": "Normal",
            "gt_answer": "Edema",
            "image_path": "Images/fundus1.png",
            "modality_type": "Fundus Photography",
            "question_type": "Lesion",
            "dataset": "RFMiD",
        },
    ]
    (tmp_path / "RFMiD.json").write_text(json.dumps(omni))
    result = mcq_variants.load(str(tmp_path / "RFMiD.json"), kind="omnimedvqa", filter=["fundus"])
    record = result.records[0]
    assert (record.answer, record.modality, record.options[1]) == ("B", Modality.FUNDUS, "Normal")
    assert record.images[0].path.endswith("Images/fundus1.png") and record.task == Task.MCQ
    assert record.messages[0].content.startswith(f"{IMAGE_TOKEN}\nWhat is shown?\nA. Glaucoma")
    assert result.counts() == {"kept": 1, "filtered": 1, "rejected": 1}
    assert "'Edema' is not a letter A–B nor an option text" in result.quarantine[0].reason

    rows = [
        {
            "question": "First-line for POAG?",
            "options": ["Latanoprost", "Atropine", "Pilocarpine", "Steroid"],
            "answer": "(A)",
            "category": "Glaucoma",
        },
        {
            "question": "Cherry-red spot?",
            "options": {"A": "CRAO", "B": "CRVO", "C": "BRVO"},
            "answer_idx": "a",
            "category": "Retina",
        },
        {
            "question": "Keratoconus sign?",
            "options": "A. Munson\nB. Hutchinson\nC. Argyll",
            "correct_answer": "Munson",
            "category": "Cornea",
        },
        {"question": "Dose of X?", "options": ["1 mg", "2 mg"], "answer": "Z", "category": "Pharmacology"},
        {"question": "No options", "answer": "A", "category": "Cornea"},
    ]
    path = tmp_path / "ophtimus_eval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    result = mcq_variants.load(str(path), kind="ophtimus_eval")
    assert [(r.answer, len(r.options)) for r in result.records] == [("A", 4), ("A", 3), ("A", 3)]
    assert [q.path for q in result.quarantine] == [
        "ophtimus_eval.jsonl row 4 field 'answer'",
        "ophtimus_eval.jsonl row 5 field 'options'",
    ]
    assert mcq_variants.load(str(path), kind="ophtimus_eval", filter=["cornea"]).counts()["kept"] == 1
    table = tmp_path / "eval.csv"  # A–D columns
    pd.DataFrame([{"question": "q?", "A": "x", "B": "y", "C": "z", "D": "w", "answer": "D."}]).to_csv(
        table, index=False
    )
    assert mcq_variants.load(str(table), kind="ophtimus_eval").records[0].answer == "D"


def test_flashcards_and_wikidoc_are_essays(tmp_path):
    rows = [
        {
            "instruction": "Answer this question truthfully",
            "input": "What causes a retinal detachment?",
            "output": "A break in the retina.",
        },
        {
            "instruction": "Answer this question truthfully",
            "input": "What is gout?",
            "output": "Urate arthritis.",
        },
        {"instruction": "Answer this question truthfully", "input": "What is uveitis?", "output": ""},
    ]
    path = tmp_path / "medical_meadow_medical_flashcards.json"
    path.write_text(json.dumps(rows))
    result = meadow.load(str(path), kind="flashcards", filter=["ophthalmology"])
    assert [r.answer for r in result.records] == ["A break in the retina."]
    assert (
        result.records[0].messages[0].content
        == "Answer this question truthfully\nWhat causes a retinal detachment?"
    )
    assert result.counts() == {"kept": 1, "filtered": 1, "rejected": 1}
    assert result.quarantine[0].path.endswith("row 3 field 'output'")
    (tmp_path / "wikidoc.json").write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(DataError, match=r"field 'instruction'"):
        meadow.load(str(tmp_path / "wikidoc.json"), kind="wikidoc")


def test_dataspec_benchmark_role_and_filter_rules():
    spec = DataSpec(source="medmcqa", path="x.csv", role="benchmark")
    assert (spec.val_fraction, spec.test_fraction) == (0.0, 1.0)
    with pytest.raises(ValidationError, match=r"1\.0 needs role benchmark"):
        DataSpec(source="medmcqa", path="x.csv", test_fraction=1.0)
    with pytest.raises(ValidationError, match=r"test_fraction must be 1\.0"):
        DataSpec(source="medmcqa", path="x.csv", role="benchmark", test_fraction=0.3)
    with pytest.raises(ValidationError, match=r"data\.filter is for benchmark sources"):
        DataSpec(source="odir", path="x.csv", filter=["glaucoma"])


def _medmcqa_file(tmp_path):
    path = tmp_path / "medmcqa.csv"
    pd.DataFrame(_medmcqa_rows({"m1": 1, "m2": 4, "m3": 2})).to_csv(path, index=False)
    return path


def test_prepare_two_benchmarks_whole_test_split_fingerprinted(tmp_path, vqa_rad):
    mcq_file = _medmcqa_file(tmp_path)
    spec = DataSpec(source="medmcqa", path=str(mcq_file), role="benchmark")
    first = prepare(spec, str(tmp_path / "a"), name="medmcqa-oph")
    again = prepare(spec, str(tmp_path / "b"), name="medmcqa-oph")
    assert first.fingerprint == again.fingerprint
    manifest = read_manifest(first.uri)
    assert (manifest.benchmark, manifest.filter) == ("medmcqa", ["Ophthalmology"])
    assert manifest.import_counts == {"kept": 2, "filtered": 1, "rejected": 2}
    assert manifest.filtered_counts == {"subject_name 'Anatomy'": 1} and manifest.import_notes["cop"]
    assert {s.split for s in load_samples(first.uri)} == {"test"} and first.num_samples == 2
    unfiltered = prepare(spec.model_copy(update={"filter": []}), str(tmp_path / "c"), name="medmcqa-all")
    assert unfiltered.fingerprint != first.fingerprint and unfiltered.num_samples == 3

    rad = prepare(
        DataSpec(source="vqa_rad", path=str(vqa_rad), role="benchmark"), str(tmp_path / "rad"), name="rad"
    )
    samples = load_samples(rad.uri)
    assert len(samples) == 3 and {s.split for s in samples} == {"test"}
    assert {s.task for s in samples} == {Task.CLOSED_QA, Task.OPEN_QA} and all(
        len(s.images) == 1 for s in samples
    )
    assert read_manifest(rad.uri).quarantine_counts == {"'BOTH' is not CLOSED or OPEN": 1}


def test_cli_prepares_a_benchmark_and_reports_a_bad_layout(tmp_path):
    mcq_file = _medmcqa_file(tmp_path)
    runner = CliRunner()
    out = tmp_path / "bench"
    res = runner.invoke(
        app,
        ["data", "prepare", str(mcq_file), "-s", "medmcqa", "--benchmark", "--filter", "", "-o", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "imported: 3 kept, 0 filtered out, 2 rejected" in res.output and "benchmark: medmcqa" in res.output
    assert {s.split for s in load_samples(out)} == {"test"}
    res = runner.invoke(app, ["data", "prepare", str(mcq_file), "-s", "pubmedqa", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "invalid JSON" in res.output and "Traceback" not in res.output


def test_prepare_says_when_the_filter_left_nothing(tmp_path):
    spec = DataSpec(source="medmcqa", path=str(_medmcqa_file(tmp_path)), role="benchmark", filter=["Dental"])
    with pytest.raises(DataError, match=r"the filter \['Dental'\] left out 5 row\(s\)"):
        prepare(spec, str(tmp_path / "out"), name="none")
