"""Small benchmark files in their published layouts (MedMCQA, PubMedQA, MedQuAD, VQA-RAD).

Written by the tests themselves (our own ophthalmic questions, in each release's field names), then
prepared as evaluation-only datasets (``data.role: benchmark``) through the real ``prepare`` stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

MEDMCQA = [
    ("Which layer holds the rods and cones?", ["Retina", "Cornea", "Lens", "Sclera"], 1),
    ("Raised intraocular pressure damages which nerve?", ["Facial", "Optic", "Vagus", "Trochlear"], 2),
    ("Clouding of the lens is called?", ["Glaucoma", "Uveitis", "Cataract", "Keratitis"], 3),
    ("Drusen are an early sign of?", ["Myopia", "Ptosis", "Strabismus", "AMD"], 4),
]
PUBMEDQA = [
    ("Does laser photocoagulation slow diabetic retinopathy?", ["Retina"], "yes"),
    ("Does atropine cure glaucoma?", ["Glaucoma"], "no"),
    ("Does intraocular pressure vary by season?", ["Intraocular Pressure"], "maybe"),
]
MEDQUAD = [
    ("What is glaucoma?", "Glaucoma is damage to the optic nerve, often with raised eye pressure."),
    ("What is a cataract?", "A cataract is clouding of the lens that blurs vision."),
]
VQA_RAD = [  # closed items are yes/no: the closed-QA scorer's robust option parsing is item 5's
    ("synpic1.jpg", "Is there a retinal haemorrhage?", "Yes", "CLOSED"),
    ("synpic2.jpg", "Is the optic disc normal?", "No", "CLOSED"),
    ("synpic1.jpg", "Is the macula involved?", "Yes", "CLOSED"),
    ("synpic2.jpg", "What is the modality?", "fundus photograph", "OPEN"),
]


def write_medmcqa(path: Path) -> Path:
    """The GitHub release: JSON lines, ``opa..opd``, ``cop`` 1–4, ``subject_name``."""
    rows = [
        {
            "id": f"m{i}",
            "question": q,
            "opa": o[0],
            "opb": o[1],
            "opc": o[2],
            "opd": o[3],
            "cop": cop,
            "subject_name": "Ophthalmology",
            "topic_name": "Eye",
            "exp": "",
        }
        for i, (q, o, cop) in enumerate(MEDMCQA)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def write_pubmedqa(path: Path) -> Path:
    """``ori_pqal.json``: one object keyed by PMID."""
    contexts = ["A cohort of patients was followed.", "Outcomes were compared."]
    data = {
        str(100 + i): {"QUESTION": q, "CONTEXTS": contexts, "MESHES": meshes, "final_decision": decision}
        for i, (q, meshes, decision) in enumerate(PUBMEDQA)
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_medquad(path: Path) -> Path:
    """The CSV export: capitalised ``Question`` / ``Answer``, ``source``, ``focus_area``."""
    import pandas as pd

    pd.DataFrame(
        [{"Question": q, "Answer": a, "source": "NEI", "focus_area": "Eye"} for q, a in MEDQUAD]
    ).to_csv(path, index=False)
    return path


def write_vqa_rad(root: Path, *, open_items: bool = True) -> Path:
    """``VQA_RAD Dataset Public.json`` beside ``VQA_RAD Image Folder/`` (``open_items``: with OPEN)."""
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(("synpic1.jpg", "synpic2.jpg")):
        pixels = np.zeros((48, 48, 3), dtype=np.uint8)
        pixels[8:40, 8:40] = (150 + 40 * k, 60, 30)
        Image.fromarray(pixels).save(folder / name)
    rows = [
        {
            "qid": i,
            "image_name": image,
            "question": q,
            "answer": a,
            "answer_type": kind,
            "question_type": "PRES",
            "image_organ": "EYE",
            "phrase_type": "freeform",
        }
        for i, (image, q, a, kind) in enumerate(VQA_RAD)
        if open_items or kind == "CLOSED"
    ]
    path = root / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def prepare_benchmark(source: str, path: Path, out: Path, name: str):
    """``eyeops data prepare PATH -s SOURCE --benchmark`` as a library call; every row kept."""
    from eyeops.data import prepare
    from eyeops.recipes import DataSpec

    spec = DataSpec(source=source, path=str(path), role="benchmark", filter=[], image_size=64)
    return prepare(spec, str(out), name=name, workers=1)
