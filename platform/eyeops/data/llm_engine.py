"""The LLM-assisted data engine (EyecareGPT's generate → check; Ophtimus's passage → MCQ/essay).

For each source (a labelled image with its raw report text, or a corpus passage) one prompt asks an
OpenAI-compatible endpoint for items as JSON; every item then passes
1. cheap deterministic checks: well-formed, the answer among the options, the answer not leaked
   into the question, a yes/no or diagnosis answer that agrees with the image's labels, no
   repeated question; and
2. (``engine.verify``) a second prompt that shows the source and the item and asks for one verdict:
   ``SUPPORTED`` | ``CONTRADICTED`` | ``UNSUPPORTED`` | ``LEAKED``. Only ``SUPPORTED`` items are kept.
Rejected items are quarantined with their reason; the manifest's ``generation`` section records the
model, both prompts, the counts and every verdict. Image records the endpoint could not serve
(call failed after retries, budget spent) get the template engine's items when ``engine.fallback``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from eyeops.data.llm_client import BudgetExhausted, CallFailed, LLMSession
from eyeops.data.records import RawRecord
from eyeops.data.schema import IMAGE_TOKEN, ODIR_LABEL_NAMES, ODIR_LABELS, Message, QuarantineEntry, Task

__all__ = [
    "GENERATE_SYSTEM",
    "TASK_SHAPES",
    "VERIFY_SYSTEM",
    "Engine",
    "Item",
    "check_item",
    "generation_prompt",
    "image_source",
    "normalise_item",
    "parse_items",
    "parse_verdict",
    "verification_prompt",
]

GENERATE_SYSTEM = (
    "You write training data for an ophthalmology assistant. Use only facts stated in the SOURCE. "
    "Reply with JSON only."
)
VERIFY_SYSTEM = (
    "You check ophthalmology training data against its SOURCE. Reply with one word: SUPPORTED, "
    "CONTRADICTED, UNSUPPORTED or LEAKED."
)
TASK_SHAPES = {  # the JSON shape of each item kind, shown in the prompt
    Task.CLOSED_QA: '{"task": "closed_qa", "question": "...", "options": ["...", "..."], "answer": "..."}',
    Task.OPEN_QA: '{"task": "open_qa", "question": "...", "answer": "..."}',
    Task.REPORT: '{"task": "report", "answer": "Examination Type: ...\\nImage Description: ...\\n'
    'Diagnostic Recommendation: ..."}',
    Task.MCQ: '{"task": "mcq", "question": "...", "options": ["...", "...", "...", "..."], "answer": "A"}',
    Task.TEXT_QA: '{"task": "essay", "question": "...", "answer": "..."}',
}
GENERATE_USER = 'SOURCE\n{source}\n\nWrite {n} items as {{"items": [...]}}, each one of:\n{shapes}'
VERIFY_USER = "SOURCE\n{source}\n\nITEM\nQuestion: {question}\nAnswer: {answer}\n\nVerdict?"
VERDICTS = ("SUPPORTED", "CONTRADICTED", "UNSUPPORTED", "LEAKED")
REPORT_QUESTION = "Write a diagnostic report for this examination."
_LETTERS = "ABCDEF"
_TASK_NAMES = {"closed_qa": Task.CLOSED_QA, "open_qa": Task.OPEN_QA, "report": Task.REPORT}
_TASK_NAMES |= {"mcq": Task.MCQ, "essay": Task.TEXT_QA, "text_qa": Task.TEXT_QA}
_YES_NO = ("yes", "no")
_DISEASES = {c: n for c, n in ODIR_LABEL_NAMES.items() if c not in ("N", "O")}


@dataclass
class Item:
    """One generated item, normalised: ``question`` as shown to the model, ``answer`` as the target."""

    task: Task
    question: str
    answer: str
    options: tuple[str, ...] = ()
    stem: str = ""  # the question without its options: where a leaked answer would be

    @property
    def target(self) -> str:
        """The answer as text (the chosen option for lettered choices)."""
        if self.options and len(self.answer) == 1 and self.answer in _LETTERS:
            return self.options[_LETTERS.index(self.answer)]
        return self.answer


@dataclass
class _Outcome:
    kept: list[tuple[Item, str]] = field(default_factory=list)  # item, verdict
    rejected: list[tuple[str, str]] = field(default_factory=list)  # item label, reason
    failure: str | None = None  # the generation call itself failed (error or budget)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# --- parsing --------------------------------------------------------------------------------------
def parse_items(reply: str) -> list[dict[str, Any]]:
    """The ``items`` of a JSON reply (a code fence or prose around it is tolerated); ValueError if none."""
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the reply")
    data = json.loads(reply[start : end + 1])
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("the reply has no 'items' list")
    return [item for item in items if isinstance(item, dict)]


def parse_verdict(reply: str) -> str | None:
    """The first verdict word in the reply, or None."""
    found = re.search(r"\b(" + "|".join(VERDICTS) + r")\b", reply.upper())
    return found.group(1) if found else None


def normalise_item(raw: dict[str, Any], wanted: Sequence[Task]) -> Item:
    """An :class:`Item` from one parsed dict; ValueError naming what is malformed."""
    task = _TASK_NAMES.get(str(raw.get("task", "")).strip().lower())
    if task is None or task not in wanted:
        raise ValueError(f"task {raw.get('task')!r} not asked for")
    answer = str(raw.get("answer") or "").strip()
    question = REPORT_QUESTION if task == Task.REPORT else str(raw.get("question") or "").strip()
    if not answer or not question:
        raise ValueError("empty question or answer")
    if task == Task.REPORT:
        missing = [
            s
            for s in ("Examination Type", "Image Description", "Diagnostic Recommendation")
            if s not in answer
        ]
        if missing:
            raise ValueError(f"report without section(s) {missing}")
        return Item(task, question, answer, stem=question)
    if task not in (Task.CLOSED_QA, Task.MCQ):
        return Item(task, question, answer, stem=question)
    options = tuple(str(o).strip() for o in raw.get("options") or [] if str(o).strip())
    if not 2 <= len(options) <= len(_LETTERS):
        raise ValueError(f"{len(options)} options (2–{len(_LETTERS)} expected)")
    lowered = [o.lower().rstrip(".") for o in options]
    if task == Task.CLOSED_QA and sorted(lowered) == sorted(_YES_NO):
        if answer.lower().rstrip(".") not in _YES_NO:
            raise ValueError(f"answer {answer!r} is not yes or no")
        return Item(
            task, f"{question} Answer yes or no.", answer.capitalize().rstrip("."), ("Yes", "No"), question
        )
    if len(answer) == 1 and answer.upper() in _LETTERS[: len(options)]:
        index = _LETTERS.index(answer.upper())
    elif answer.lower().rstrip(".") in lowered:
        index = lowered.index(answer.lower().rstrip("."))
    else:
        raise ValueError(f"answer {answer!r} is not among the options")
    listed = "\n".join(f"{_LETTERS[i]}. {o}" for i, o in enumerate(options))
    shown = f"{question}\n{listed}\nAnswer with the letter."
    return Item(task, shown, _LETTERS[index], options, stem=question)


def check_item(item: Item, positives: Sequence[str] | None = None) -> str | None:
    """The reason a normalised item fails the deterministic checks, or None.

    ``positives``: the image's positive ODIR codes, when it has ODIR labels (answers that name a
    disease must agree with them).
    """
    norm_target, stem = _norm(item.target), _norm(item.stem)
    if norm_target not in _YES_NO and len(norm_target) >= 4 and norm_target in stem:
        return "answer leaked into question"
    if positives is None or item.task != Task.CLOSED_QA:
        return None
    named = [c for c, name in _DISEASES.items() if name in stem]
    if norm_target in _YES_NO and len(named) == 1:
        present = named[0] in positives
        if (norm_target == "yes") != present:
            return "contradicts labels"
    named_answer = [c for c, name in _DISEASES.items() if name in norm_target]
    if norm_target not in _YES_NO and named_answer and not set(named_answer) & set(positives):
        return "contradicts labels"
    return None


# --- sources ----------------------------------------------------------------------------------------
def image_source(record: RawRecord, label_names: Sequence[str]) -> str:
    """The facts the model may use: modality, eye, labels, raw report text (or findings)."""
    positives = [label_names[i] for i, v in enumerate(record.labels) if v] or ["N"]
    names = [ODIR_LABEL_NAMES.get(c, c) if list(label_names) == list(ODIR_LABELS) else c for c in positives]
    report = record.meta.get("report") or record.meta.get("keywords") or record.meta.get("findings") or ""
    lines = [f"Modality: {record.modality}", f"Labels: {', '.join(names)}"]
    if record.eye is not None:
        lines.insert(1, f"Eye: {record.eye}")
    if report:
        lines.append(f"Report: {report}")
    return "\n".join(lines)


def generation_prompt(source: str, tasks: Sequence[Task], n: int) -> tuple[str, str]:
    """``(system, user)`` asking for ``n`` items of ``tasks`` about ``source``."""
    shapes = "\n".join(TASK_SHAPES[t] for t in tasks if t in TASK_SHAPES)
    return GENERATE_SYSTEM, GENERATE_USER.format(source=source, n=n, shapes=shapes)


def verification_prompt(source: str, question: str, answer: str) -> tuple[str, str]:
    """``(system, user)`` asking whether ``source`` supports the answer (``question`` without options)."""
    return VERIFY_SYSTEM, VERIFY_USER.format(source=source, question=question, answer=answer)


class Engine:
    """Generate + verify through one :class:`LLMSession`; collects what the manifest records."""

    def __init__(self, session: LLMSession) -> None:
        self.session = session
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.verdicts: list[dict[str, str]] = []
        self.quarantine: list[QuarantineEntry] = []

    def _run(self, source: str, tasks: Sequence[Task], positives: Sequence[str] | None) -> _Outcome:
        outcome = _Outcome()
        try:
            reply = self.session.chat(*generation_prompt(source, tasks, self.session.engine.items_per_record))
        except (CallFailed, BudgetExhausted) as exc:
            outcome.failure = (
                f"{'budget spent' if isinstance(exc, BudgetExhausted) else 'call failed'}: {exc}"
            )
            return outcome
        try:
            raw_items = parse_items(reply)
        except ValueError as exc:
            outcome.rejected.append(("reply", f"unparseable reply ({exc})"))
            return outcome
        seen: set[str] = set()
        for j, raw in enumerate(raw_items):
            try:
                item = normalise_item(raw, tasks)
            except ValueError as exc:
                outcome.rejected.append((f"item {j}", f"malformed item ({exc})"))
                continue
            reason = check_item(item, positives)
            if reason is None and _norm(item.question) in seen:
                reason = "repeated question"
            seen.add(_norm(item.question))
            if reason is not None:
                outcome.rejected.append((f"item {j}", reason))
                continue
            verdict = self._verify(source, item)
            if verdict in ("SUPPORTED", "unverified"):
                outcome.kept.append((item, verdict))
            else:
                reason = f"verifier {verdict}" if verdict in VERDICTS else verdict
                outcome.rejected.append((f"item {j}", reason))
        return outcome

    def _verify(self, source: str, item: Item) -> str:
        if not self.session.engine.verify:
            return "unverified"
        try:
            reply = self.session.chat(*verification_prompt(source, item.stem, item.target))
        except BudgetExhausted:
            return "not verified (budget spent)"
        except CallFailed:
            return "not verified (call failed)"
        return parse_verdict(reply) or "no verdict in reply"

    def _tally(self, outcome: _Outcome, where: str, key: str) -> bool:
        """Count one source's outcome and quarantine its rejects; False when its generation call failed."""
        self.counts["sources"] += 1
        if outcome.failure is not None:
            self.counts["failed_sources"] += 1
            self.rejected[outcome.failure.split(":")[0]] += 1
            return False
        self.counts["generated"] += len(outcome.kept) + sum(
            1 for label, _ in outcome.rejected if label != "reply"
        )
        self.counts["verified"] += sum(1 for _, v in outcome.kept if v == "SUPPORTED")
        self.counts["rejected"] += len(outcome.rejected)
        for j, (item, verdict) in enumerate(outcome.kept):
            self.verdicts.append({"source": key, "item": f"{j}", "task": str(item.task), "verdict": verdict})
        for label, reason in outcome.rejected:
            kind = reason.split(" (")[0]
            self.rejected[kind] += 1
            self.verdicts.append({"source": key, "item": label, "verdict": "REJECTED", "reason": reason})
            self.quarantine.append(QuarantineEntry(path=f"{where} {label}", reason=f"llm {reason}"))
        return True

    # --- image records ------------------------------------------------------------------------------
    def image_records(
        self,
        records: Sequence[RawRecord],
        tasks: Sequence[Task],
        *,
        label_names: Sequence[str],
        rng: np.random.Generator,
        advance: Callable[[int], None],
    ) -> list[list[RawRecord]]:
        """Verified items for each labelled image record; template items where the endpoint failed."""
        from eyeops.data.engine import image_records as template_records

        odir = list(label_names) == list(ODIR_LABELS)

        def one(record: RawRecord) -> _Outcome:
            positives = [label_names[i] for i, v in enumerate(record.labels) if v] if odir else None
            return self._run(image_source(record, label_names), tasks, positives)

        results: list[list[RawRecord]] = []
        for record, outcome in zip(records, self.session.map(one, records, advance), strict=True):
            out: list[RawRecord] = []
            results.append(out)
            if not self._tally(outcome, record.where, record.key):
                if self.session.engine.fallback:
                    self.counts["fallback_sources"] += 1
                    out.extend(template_records(record, tasks, rng=rng, label_names=label_names))
                continue
            prefix = "\n".join([IMAGE_TOKEN] * len(record.images)) + "\n" if record.images else ""
            out += _kept_records(
                record, outcome, prefix, key=lambda item, j: f"llm{j}", kind=lambda item: f"llm-{item.task}"
            )
        return results

    # --- corpus passages ------------------------------------------------------------------------------
    def passage_records(
        self, passages: Sequence[RawRecord], tasks: Sequence[Task], *, advance: Callable[[int], None]
    ) -> list[RawRecord]:
        """Verified MCQ / essay records from ``pretrain_text`` passage records (same group)."""
        outcomes = self.session.map(
            lambda p: self._run(f"Passage: {p.answer}", tasks, None), passages, advance
        )
        out: list[RawRecord] = []
        for passage, outcome in zip(passages, outcomes, strict=True):
            if not self._tally(outcome, passage.where, passage.key):
                continue
            out += _kept_records(
                passage, outcome, "", key=lambda item, j: f"{'mcq' if item.task == Task.MCQ else 'essay'}{j}"
            )
        return out

    def report(self) -> dict[str, Any]:
        """The manifest's ``generation`` section."""
        prompts = {
            "generate_system": GENERATE_SYSTEM,
            "generate_user": GENERATE_USER,
            "item_shapes": {str(k): v for k, v in TASK_SHAPES.items()},
            "verify_system": VERIFY_SYSTEM,
            "verify_user": VERIFY_USER,
        }
        digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()
        spec = self.session.engine
        return {
            "engine": "llm",
            **self.session.report(),
            "verify": spec.verify,
            "items_per_record": spec.items_per_record,
            "fallback": spec.fallback,
            "prompts": prompts,
            "prompts_sha256": digest,
            "counts": {
                k: int(self.counts[k])
                for k in (
                    "sources",
                    "generated",
                    "verified",
                    "rejected",
                    "failed_sources",
                    "fallback_sources",
                )
            },
            "rejected_by_reason": dict(self.rejected.most_common()),
            "verdicts": self.verdicts,
        }


def _kept_records(
    source: RawRecord,
    outcome: _Outcome,
    prefix: str,
    *,
    key: Callable[[Any, int], str],
    kind: Callable[[Any], str] | None = None,
) -> list[RawRecord]:
    """One record per verified item of ``outcome``, derived from its ``source`` record."""
    return [
        replace(
            source,
            key=f"{source.key}-{key(item, j)}",
            task=item.task,
            answer=item.answer,
            options=item.options,
            messages=(Message(role="user", content=prefix + item.question),),
            meta={
                **source.meta,
                **({"kind": kind(item)} if kind else {}),
                "engine": "llm",
                "verdict": verdict,
            },
        )
        for j, (item, verdict) in enumerate(outcome.kept)
    ]
