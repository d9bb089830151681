"""The data engine (after EyecareGPT's): labels + findings → QA and reports; knowledge → instructions.

Image side, for one labelled image:
- closed-QA: a four-option diagnosis question (answer = letter A–D) and a yes/no question;
- open-QA: diagnosis, description, etiology, treatment advice, lesion location;
- report: ``Examination Type: … / Image Description: … / Diagnostic Recommendation: …``.

Text side, from ``knowledge/diseases.yaml`` (our own summaries of ~20 eye diseases): instruction
pairs for the four OphGLM subsets (task ``text_qa``) and MCQs (task ``mcq``, answer = letter).

Samples follow the shared convention: ``messages`` end with the user turn, ``answer`` is the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from eyeops.data.findings import Finding
from eyeops.data.records import RawRecord
from eyeops.data.schema import IMAGE_TOKEN, ODIR_LABEL_NAMES, ODIR_LABELS, Eye, Message, Modality, Task
from eyeops.errors import DataError

__all__ = [
    "TOPICS",
    "Disease",
    "KnowledgeBase",
    "closed_qa",
    "image_records",
    "knowledge_base",
    "knowledge_mcqs",
    "knowledge_pairs",
    "knowledge_records",
    "open_qa",
    "report",
]

LETTERS = "ABCDE"
TOPICS = {  # OphGLM instruction subsets → question phrasings (two each, chosen by seed)
    "causes_symptoms": (
        "What causes {name} and what symptoms does it produce?",
        "Why does {name} develop, and how do patients notice it?",
    ),
    "diagnosis_examination": ("How is {name} diagnosed?", "Which examinations confirm {name}?"),
    "treatment_prevention": (
        "How is {name} treated and can it be prevented?",
        "What are the treatment options for {name}?",
    ),
    "prognosis_lifestyle": (
        "What is the outlook for someone with {name}, and what lifestyle advice helps?",
        "How does {name} progress and how can patients live well with it?",
    ),
}
_MODALITY_TEXT = {
    Modality.FUNDUS: "colour fundus photograph",
    Modality.OCT: "OCT scan",
    Modality.FFA: "fluorescein angiogram",
    Modality.ICGA: "ICG angiogram",
    Modality.SLIT_LAMP: "slit-lamp photograph",
    Modality.UBM: "UBM scan",
    Modality.CT: "CT scan",
    Modality.FLUORESCEIN_STAINING: "fluorescein staining photograph",
    Modality.EXTERNAL: "external eye photograph",
    Modality.NONE: "image",
}
_EXAM_TYPE = {
    Modality.FUNDUS: "Colour fundus photography",
    Modality.OCT: "Optical coherence tomography",
    Modality.FFA: "Fundus fluorescein angiography",
    Modality.SLIT_LAMP: "Slit-lamp photography",
}
_EYE_TEXT = {Eye.OD: "right eye (OD)", Eye.OS: "left eye (OS)", Eye.OU: "both eyes (OU)"}
_OTHER_ADVICE = "Refer for a full ophthalmic examination to establish the cause and plan follow-up."
_NORMAL_ADVICE = "No treatment is needed; continue routine eye examinations."


class Disease(BaseModel):
    """One knowledge-base entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    name: str
    odir: str | None = Field(None, description="ODIR label code this disease corresponds to.")
    causes_symptoms: str
    diagnosis_examination: str
    treatment_prevention: str
    prognosis_lifestyle: str
    hallmark: str
    key_test: str
    first_line: str


class KnowledgeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    diseases: list[Disease] = Field(min_length=4)

    def by_odir(self, code: str) -> Disease | None:
        return next((d for d in self.diseases if d.odir == code), None)


@lru_cache(maxsize=1)
def knowledge_base() -> KnowledgeBase:
    """The packaged knowledge base, validated."""
    text = resources.files("eyeops.data").joinpath("knowledge/diseases.yaml").read_text(encoding="utf-8")
    try:
        return KnowledgeBase.model_validate(yaml.safe_load(text))
    except ValueError as exc:
        raise DataError(f"invalid knowledge base: {exc}", file="knowledge/diseases.yaml") from None


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "."


def _letters(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _names(codes: Sequence[str], label_names: Sequence[str]) -> list[str]:
    return ["normal fundus" if c == "N" else ODIR_LABEL_NAMES.get(c, c) for c in codes]


def _positive(labels: Sequence[int], label_names: Sequence[str]) -> list[str]:
    return [label_names[i] for i, v in enumerate(labels) if v]


# --- image side -----------------------------------------------------------------------------------
def closed_qa(
    labels: Sequence[int],
    *,
    modality: Modality = Modality.FUNDUS,
    rng: np.random.Generator,
    label_names: Sequence[str] = ODIR_LABELS,
) -> list[tuple[str, list[str], str]]:
    """``(question, options, answer)``: a four-option diagnosis question and a yes/no question."""
    positives = _positive(labels, label_names) or ["N"]
    what = _MODALITY_TEXT[modality]
    correct = positives[int(rng.integers(len(positives)))]
    # "other abnormality" is a distractor too: were it offered only when correct, a text-only model
    # could pick it out without looking at the image.
    pool = [c for c in label_names if c not in positives]
    distractors = list(rng.choice(pool, size=min(3, len(pool)), replace=False))
    codes = [correct, *distractors]
    order = rng.permutation(len(codes))
    options = [_names([codes[i]], label_names)[0] for i in order]
    answer = LETTERS[int(np.nonzero(order == 0)[0][0])]
    mcq = (
        f"Which diagnosis best fits this {what}?\n{_letters(options)}\nAnswer with the letter.",
        options,
        answer,
    )

    asked = correct if rng.random() < 0.5 or not pool else pool[int(rng.integers(len(pool)))]
    asked_name = _names([asked], label_names)[0]
    question = f"Is this {what} normal?" if asked == "N" else f"Does this {what} show signs of {asked_name}?"
    yes_no = (f"{question} Answer yes or no.", ["Yes", "No"], "Yes" if asked in positives else "No")
    return [mcq, yes_no]


def _diagnosis(positives: Sequence[str]) -> str:
    if positives in ([], ["N"]):
        return "a normal fundus without signs of disease"
    names = _names(positives, positives)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _description(findings: Sequence[Finding]) -> str:
    parts = [f.description + (f" ({f.location})" if f.location else "") for f in findings]
    text = "; ".join(parts) if parts else "no abnormal findings"
    return text[0].upper() + text[1:] + "."


def _advice(positives: Sequence[str]) -> str:
    kb = knowledge_base()
    advice = []
    for code in positives:
        disease = kb.by_odir(code)
        if disease is not None:
            advice.append(f"For {disease.name}: {disease.first_line}.")
        elif code == "O":
            advice.append(_OTHER_ADVICE)
    return " ".join(advice) or _NORMAL_ADVICE


def open_qa(
    labels: Sequence[int],
    findings: Sequence[Finding],
    *,
    modality: Modality = Modality.FUNDUS,
    label_names: Sequence[str] = ODIR_LABELS,
) -> dict[str, tuple[str, str]]:
    """Question kind → ``(question, answer)`` for diagnosis, description, etiology, treatment, location."""
    positives = [c for c in _positive(labels, label_names) if c != "N"]
    what = _MODALITY_TEXT[modality]
    kb = knowledge_base()
    etiology = [
        f"{d.name.capitalize()}: {_first_sentence(d.causes_symptoms)}"
        for c in positives
        if (d := kb.by_odir(c)) is not None
    ]
    located = [f for f in findings if f.location and f.label != "N"]
    out = {
        "diagnosis": (
            f"What is the most likely diagnosis for this {what}?",
            f"The appearance is most consistent with {_diagnosis(positives)}.",
        ),
        "description": (f"Describe the findings in this {what}.", _description(findings)),
        "treatment": ("What management would you recommend for this patient?", _advice(positives)),
        "location": (
            "Where are the abnormal findings located?",
            " ".join(f"{f.description.capitalize()}: {f.location}." for f in located)
            or "No focal lesions are seen.",
        ),
    }
    if positives:
        out["etiology"] = (
            "What usually causes the condition shown here?",
            " ".join(etiology)
            or "The cause cannot be determined from this image alone; further examination is needed.",
        )
    return out


def report(
    labels: Sequence[int],
    findings: Sequence[Finding],
    *,
    modality: Modality = Modality.FUNDUS,
    eye: Eye | None = None,
    label_names: Sequence[str] = ODIR_LABELS,
) -> str:
    """A three-part report: examination type, image description, diagnostic recommendation."""
    positives = [c for c in _positive(labels, label_names) if c != "N"]
    exam = _EXAM_TYPE.get(modality, _MODALITY_TEXT[modality].capitalize())
    if eye is not None:
        exam += f", {_EYE_TEXT[eye]}"
    diagnosis = _diagnosis(positives)
    return (
        f"Examination Type: {exam}\n"
        f"Image Description: {_description(findings)}\n"
        f"Diagnostic Recommendation: {diagnosis[0].upper() + diagnosis[1:]}. {_advice(positives)}"
    )


def image_records(
    record: RawRecord,
    tasks: Sequence[Task],
    *,
    rng: np.random.Generator,
    label_names: Sequence[str] = ODIR_LABELS,
    open_per_image: int = 2,
) -> list[RawRecord]:
    """Derived records (sharing ``record``'s images and patient) for the requested image tasks."""
    from dataclasses import replace

    n_img = len(record.images)
    prefix = "\n".join([IMAGE_TOKEN] * n_img) + "\n" if n_img else ""
    out: list[RawRecord] = []

    def derived(task: Task, tag: str, question: str, answer: str, options: Sequence[str] = ()) -> RawRecord:
        return replace(
            record,
            key=f"{record.key}-{tag}",
            task=task,
            answer=answer,
            options=tuple(options),
            messages=(Message(role="user", content=prefix + question),),
            meta={**record.meta, "kind": tag},
        )

    if Task.CLOSED_QA in tasks:
        for tag, (q, opts, a) in zip(
            ("dx4", "yesno"),
            closed_qa(record.labels, modality=record.modality, rng=rng, label_names=label_names),
            strict=True,
        ):
            out.append(derived(Task.CLOSED_QA, tag, q, a, opts))
    if Task.OPEN_QA in tasks:
        qa = open_qa(record.labels, record.findings, modality=record.modality, label_names=label_names)
        kinds = sorted(qa)
        for i in rng.choice(len(kinds), size=min(open_per_image, len(kinds)), replace=False):
            q, a = qa[kinds[int(i)]]
            out.append(derived(Task.OPEN_QA, kinds[int(i)], q, a))
    if Task.REPORT in tasks:
        text = report(
            record.labels, record.findings, modality=record.modality, eye=record.eye, label_names=label_names
        )
        out.append(derived(Task.REPORT, "report", "Write a diagnostic report for this examination.", text))
    return out


# --- text side ----------------------------------------------------------------------------------------
def knowledge_pairs(*, seed: int = 0, phrasings: int = 1) -> list[tuple[str, str, str, str]]:
    """``(disease key, topic, question, answer)`` instruction pairs over the whole knowledge base."""
    rng = np.random.default_rng([seed, 3])
    out = []
    for disease in knowledge_base().diseases:
        for topic, templates in TOPICS.items():
            picks = rng.permutation(len(templates))[:phrasings]
            for i in picks:
                out.append(
                    (disease.key, topic, templates[int(i)].format(name=disease.name), getattr(disease, topic))
                )
    return out


def knowledge_mcqs(*, seed: int = 0) -> list[tuple[str, str, list[str], str]]:
    """``(disease key, question, four options, answer letter)``: sign, test, treatment, and name MCQs."""
    rng = np.random.default_rng([seed, 5])
    diseases = knowledge_base().diseases
    out = []
    kinds = (
        ("hallmark", "Which finding is most characteristic of {name}?"),
        ("key_test", "Which investigation is most useful to confirm {name}?"),
        ("first_line", "What is the usual first-line management of {name}?"),
    )
    for d in diseases:
        others = [o for o in diseases if o.key != d.key]
        for field, template in kinds:
            pool = sorted({getattr(o, field) for o in others} - {getattr(d, field)})
            picks = [pool[int(i)] for i in rng.choice(len(pool), size=3, replace=False)]
            options = [getattr(d, field), *picks]
            order = rng.permutation(4)
            out.append(
                (
                    d.key,
                    template.format(name=d.name),
                    [options[i] for i in order],
                    LETTERS[int(np.nonzero(order == 0)[0][0])],
                )
            )
        names = [o.name for o in others]
        picks = [names[int(i)] for i in rng.choice(len(names), size=3, replace=False)]
        order = rng.permutation(4)
        options = [d.name, *picks]
        out.append(
            (
                d.key,
                f"Which condition is characterised by {d.hallmark}?",
                [options[i] for i in order],
                LETTERS[int(np.nonzero(order == 0)[0][0])],
            )
        )
    return out


def knowledge_records(tasks: Sequence[Task] = (Task.TEXT_QA, Task.MCQ), *, seed: int = 0) -> list[RawRecord]:
    """Knowledge-base samples as records; each disease is one split group (no topic leaks across splits)."""
    records: list[RawRecord] = []
    src, lic = "knowledge", "CC-BY-4.0 (eyeops authors)"
    if Task.TEXT_QA in tasks:
        for i, (key, topic, q, a) in enumerate(knowledge_pairs(seed=seed, phrasings=2)):
            records.append(
                RawRecord(
                    key=f"qa-{i:04d}",
                    task=Task.TEXT_QA,
                    where=f"knowledge:{key}/{topic}",
                    messages=(Message(role="user", content=q),),
                    answer=a,
                    source=src,
                    license=lic,
                    group=key,
                    meta={"disease": key, "topic": topic},
                )
            )
    if Task.MCQ in tasks:
        for i, (key, q, options, letter) in enumerate(knowledge_mcqs(seed=seed)):
            content = f"{q}\n{_letters(options)}\nAnswer with the letter."
            records.append(
                RawRecord(
                    key=f"mcq-{i:04d}",
                    task=Task.MCQ,
                    where=f"knowledge:{key}/mcq",
                    messages=(Message(role="user", content=content),),
                    answer=letter,
                    options=tuple(options),
                    source=src,
                    license=lic,
                    group=key,
                    meta={"disease": key},
                )
            )
    return records
