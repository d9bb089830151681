"""Importers on small files in the real public formats."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from eyeops_testing.fundus import RAW_PATIENT, write_fundus

from eyeops.data import load_samples, prepare, read_manifest
from eyeops.data.importers import alpaca_dialogue, llava_json, mcq, odir
from eyeops.data.schema import IMAGE_TOKEN, ODIR_LABELS, Eye, Task
from eyeops.errors import DataError
from eyeops.recipes import DataSpec

ODIR_ROWS = [
    # ID, age, sex, left, right, left keywords, right keywords, N D G C A H M O
    (
        RAW_PATIENT,
        69,
        "Female",
        f"{RAW_PATIENT}_left.jpg",
        f"{RAW_PATIENT}_right.jpg",
        "cataract",
        "normal fundus",
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
    ),
    (
        "PT-BRAVO-12",
        57,
        "Male",
        "PT-BRAVO-12_left.jpg",
        "PT-BRAVO-12_right.jpg",
        "moderate non proliferative retinopathy，hypertensive retinopathy",
        "mild nonproliferative retinopathy",
        0,
        1,
        0,
        0,
        0,
        1,
        0,
        0,
    ),
    (
        "PT-CHARLIE-3",
        44,
        "Male",
        "PT-CHARLIE-3_left.jpg",
        "PT-CHARLIE-3_right.jpg",
        "normal fundus",
        "normal fundus",
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        2,
    ),  # invalid label value
    (
        "PT-DELTA-9",
        61,
        "Female",
        "PT-DELTA-9_left.jpg",
        "PT-DELTA-9_right.jpg",
        "anterior segment image",
        "glaucoma，lens dust",
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
    ),
]


def _odir(tmp_path, fmt="csv"):
    frame = pd.DataFrame(ODIR_ROWS, columns=list(odir.COLUMNS))
    images = tmp_path / "Training Images"
    for i, row in enumerate(ODIR_ROWS):
        write_fundus(images / row[3], seed=2 * i, exif_name=row[0])
        write_fundus(images / row[4], seed=2 * i + 1, exif_name=row[0])
    path = tmp_path / f"data.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_excel(path, index=False)
    return path


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_odir_both_eyes_keywords_and_row_quarantine(tmp_path, fmt):
    result = odir.load(str(_odir(tmp_path, fmt)))
    by_key = {r.key: r for r in result.records}
    # row 2 (first data row): cataract only in the left eye
    assert by_key["00002-OS"].labels == tuple(int(c == "C") for c in ODIR_LABELS)
    assert by_key["00002-OD"].labels == tuple(int(c == "N") for c in ODIR_LABELS)
    assert by_key["00002-OD"].eye == Eye.OD and by_key["00002-OD"].patient == RAW_PATIENT
    assert {c for c, v in zip(ODIR_LABELS, by_key["00003-OS"].labels, strict=True) if v} == {"D", "H"}
    assert "hypertensive retinopathy" in by_key["00003-OS"].meta["keywords"]
    assert [f.label for f in by_key["00003-OS"].findings] == ["D", "H"]
    # row 5: the left image is not a fundus photo; 'lens dust' is a photo remark, not a label
    assert "00005-OS" not in by_key and by_key["00005-OD"].labels == tuple(int(c == "G") for c in ODIR_LABELS)
    reasons = {q.path: q.reason for q in result.quarantine}
    assert reasons[f"data.{fmt} row 4 field 'O'"] == "label must be 0 or 1, got '2'"
    assert "not a fundus photograph" in reasons[f"data.{fmt} row 5 field 'Left-Fundus'"]


def test_odir_keyword_mapping():
    assert odir.keyword_codes("proliferative diabetic retinopathy，laser spot")[0] == ["D", "O"]
    assert odir.keyword_codes("wet age-related macular degeneration")[0] == ["A"]
    assert odir.keyword_codes("lens dust，normal fundus")[0] == ["N"]
    assert odir.keyword_codes("pathological myopia")[0] == ["M"]


def test_odir_missing_column_names_file_and_field(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame(ODIR_ROWS, columns=list(odir.COLUMNS)).drop(columns=["Right-Fundus"]).to_csv(
        path, index=False
    )
    with pytest.raises(DataError, match=r"file .*bad.csv.*field 'Right-Fundus'.*missing column"):
        odir.load(str(path))


def test_prepare_odir_end_to_end(tmp_path):
    ref = prepare(
        DataSpec(source="odir", path=str(_odir(tmp_path)), image_size=64), str(tmp_path / "out"), name="o"
    )
    samples = load_samples(ref.uri)
    assert len(samples) == 5 and all(s.task == Task.CLASSIFY and s.labels for s in samples)
    manifest = read_manifest(ref.uri)
    assert manifest.label_names == list(ODIR_LABELS)
    assert sum(manifest.quarantine_counts.values()) == 2


def _llava(tmp_path):
    for name, seed in (("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 2)):
        write_fundus(tmp_path / "images" / name, seed=seed)
    items = [
        {
            "id": "x1",
            "image": "a.jpg",
            "modality": "fundus",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is the most likely diagnosis?"},
                {"from": "gpt", "value": "Diabetic retinopathy."},
            ],
        },
        {
            "id": "x2",
            "image": ["b.jpg", "c.jpg"],
            "modality": "OCT",
            "eye": "OS",
            "conversations": [
                {"from": "human", "value": "<image>\n<image>\nCompare the two scans."},
                {"from": "gpt", "value": "The second shows more fluid."},
                {"from": "human", "value": "Is treatment needed?"},
                {"from": "gpt", "value": "Yes, anti-VEGF should continue."},
            ],
        },
        {
            "id": "x3",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "Is this normal? Answer yes or no."},
                {"from": "gpt", "value": "No"},
            ],
        },
        {
            "id": "x4",
            "image": ["a.jpg", "b.jpg"],
            "conversations": [
                {"from": "human", "value": "<image>\nOne placeholder, two images"},
                {"from": "gpt", "value": "?"},
            ],
        },
        {"id": "x5", "image": "a.jpg", "conversations": [{"from": "doctor", "value": "hi"}]},
    ]
    path = tmp_path / "eyecare.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def test_llava_single_and_multi_image(tmp_path):
    result = llava_json.load(str(_llava(tmp_path)))
    first, second, third = result.records
    assert first.task == Task.OPEN_QA and first.answer == "Diabetic retinopathy."
    assert [m.role for m in first.messages] == ["user"]
    assert second.task == Task.DIALOGUE and len(second.images) == 2 and second.eye == Eye.OS
    assert second.modality == "oct" and [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[0].content.count(IMAGE_TOKEN) == 2
    assert third.task == Task.CLOSED_QA and third.messages[0].content.startswith(f"{IMAGE_TOKEN}\n")
    reasons = {q.path: q.reason for q in result.quarantine}
    assert reasons["eyecare.json row 4 field 'conversations'"] == "1 <image> placeholder(s) for 2 image(s)"
    assert "unknown speaker 'doctor'" in reasons["eyecare.json row 5 field 'conversations[0].from'"]


def test_prepare_llava_shares_image_files(tmp_path):
    ref = prepare(
        DataSpec(source="llava", path=str(_llava(tmp_path)), image_size=64), str(tmp_path / "o"), name="l"
    )
    samples = load_samples(ref.uri)
    assert len(samples) == 3
    assert samples[0].images[0] == samples[2].images[0]  # same source image → one stored file
    assert len({p for s in samples for p in s.images}) == 3


def test_mcq_answer_forms_and_bad_rows(tmp_path):
    path = tmp_path / "ophtimus_mcq.csv"
    pd.DataFrame(
        [
            {
                "question": "Which drop lowers IOP?",
                "option_a": "latanoprost",
                "option_b": "atropine",
                "option_c": "artificial tears",
                "option_d": "fluorescein",
                "option_e": "",
                "answer": "A",
                "explanation": "Prostaglandins increase outflow.",
            },
            {
                "question": "First test for AMD fluid?",
                "option_a": "ERG",
                "option_b": "OCT",
                "option_c": "VEP",
                "option_d": "UBM",
                "option_e": "CT",
                "answer": "(b)",
                "explanation": "",
            },
            {
                "question": "Cataract surgery?",
                "option_a": "LASIK",
                "option_b": "PRK",
                "option_c": "vitrectomy",
                "option_d": "phacoemulsification",
                "option_e": "",
                "answer": "phacoemulsification",
                "explanation": "",
            },
            {
                "question": "Bad answer",
                "option_a": "x",
                "option_b": "y",
                "option_c": "z",
                "option_d": "w",
                "option_e": "",
                "answer": "F",
                "explanation": "",
            },
        ]
    ).to_csv(path, index=False)
    result = mcq.load(str(path), kind="mcq")
    assert [r.answer for r in result.records] == ["A", "B", "D"]
    assert len(result.records[1].options) == 5 and len(result.records[0].options) == 4
    assert "E. CT" in result.records[1].messages[0].content
    assert result.records[0].meta["explanation"] == "Prostaglandins increase outflow."
    assert [(q.path, q.reason) for q in result.quarantine] == [
        ("ophtimus_mcq.csv row 5 field 'answer'", "'F' is not a letter A–D nor an option text")
    ]


def test_essay_and_missing_columns(tmp_path):
    path = tmp_path / "essay.jsonl"
    path.write_text(
        '{"question": "What is a cataract?", "answer": "A clouding of the lens."}\n'
        '{"question": "", "answer": "orphan"}\n',
        encoding="utf-8",
    )
    result = mcq.load(str(path), kind="essay")
    assert [(r.task, r.answer) for r in result.records] == [(Task.TEXT_QA, "A clouding of the lens.")]
    assert result.quarantine[0].path == "essay.jsonl row 2 field 'question'"
    with pytest.raises(DataError, match=r"missing column\(s\) \['option_a'"):
        mcq.load(str(path), kind="mcq")


def test_alpaca_history_and_chinese_round_trip(tmp_path):
    items = [
        {
            "instruction": "我最近看东西模糊，是白内障吗？",
            "input": "",
            "output": "可能是白内障，请到眼科做裂隙灯检查。",
            "history": [["医生您好", "您好，请问有什么不舒服？"]],
        },
        {"instruction": "What is glaucoma?", "input": "Short answer.", "output": "Optic nerve damage."},
        {"instruction": "", "output": "no instruction"},
        {"instruction": "bad history", "output": "x", "history": [["only one"]]},
    ]
    path = tmp_path / "ophglm.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    result = alpaca_dialogue.load(str(path))
    assert [r.task for r in result.records] == [Task.DIALOGUE, Task.TEXT_QA]
    assert result.records[1].messages[-1].content == "What is glaucoma?\nShort answer."
    assert {q.path for q in result.quarantine} == {
        "ophglm.json row 3 field 'instruction'",
        "ophglm.json row 4 field 'history[0]'",
    }
    ref = prepare(DataSpec(source="alpaca", path=str(path)), str(tmp_path / "out"), name="zh")
    samples = {s.answer: s for s in load_samples(ref.uri)}
    zh = samples["可能是白内障，请到眼科做裂隙灯检查。"]
    assert [m.content for m in zh.messages] == [
        "医生您好",
        "您好，请问有什么不舒服？",
        "我最近看东西模糊，是白内障吗？",
    ]


def test_unreadable_files_raise_one_clear_error(tmp_path):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match=r"file .*broken.json: invalid JSON"):
        llava_json.load(str(bad_json))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("question,answer\nca\xe7a,\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        mcq.load(str(latin), kind="essay")
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.txt").write_text("hi")
        mcq.load(str(tmp_path / "x.txt"), kind="essay")
