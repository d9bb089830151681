"""Text metrics for generated answers: MCQ / closed-QA accuracy and essay-QA overlap/semantic scores.

Generic on purpose (strings in, ``dict[str, float]`` out) so the LLM and VLM recipes share them.
- MCQ and closed QA: the answer is parsed robustly (``Answer: B``, ``B)``, ``(b)``, the option
  text, ``Yes, ...`` for yes/no(/maybe) options); a closed question without options (VQA-RAD /
  SLAKE ``left``, ``CT``, ``2``) scores by normalised match of the answer's first clause. An
  unparseable or missing answer counts as wrong and is counted (``unparseable``,
  ``unparsed_rate``); predictions are matched to gold **by id**, never by position.
- Essay QA: ROUGE-L F1 (rouge-score), BLEU (sacrebleu, reported on a 0–1 scale), METEOR (nltk,
  with WordNet synonyms from Debian's ``wordnet-base`` when installed, exact+stem matching
  otherwise), SemScore and BERTScore F1 (:mod:`eyeops.evaluate.encoders`: the metric name says
  which encoder was used, e.g. ``semscore_all-MiniLM-L6-v2`` when all-mpnet-base-v2 is not here).
ROUGE-L, BLEU, METEOR and BERTScore are in [0, 1]; SemScore is a cosine in [-1, 1]. Grouped
variants key results as ``<group>/<metric>``.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eyeops.errors import DataError
from eyeops.evaluate import encoders
from eyeops.evaluate._wordnet import WORDNET_DIR as WORDNET_DIR  # re-exported
from eyeops.evaluate._wordnet import uses_wordnet, wordnet

LETTERS = "ABCDEFGHIJ"
ESSAY_METRICS = ("rougeL", "bleu", "meteor", "semscore", "bertscore")

# --- MCQ -----------------------------------------------------------------------------------------
_MARKER = r"(?i:answer|option|choice)\s*(?:is|:|=|-)?\s*(?:(?i:option)\s*)?"
_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "Answer: B", "the answer is (C)", "Correct option: D."
    re.compile(rf"{_MARKER}\(?([A-J])\)?(?![A-Za-z])"),
    # "answer: b." — a lowercase letter only when punctuation or the end follows, so that
    # "answer: a retinal tear" is not read as option A
    re.compile(rf"{_MARKER}\(?([a-j])(?:[).:,]|\s*$)", re.MULTILINE),
    # "B) ...", "C. ...", "(D) ..." at the start of a line
    re.compile(r"^\s*\(?([A-J])[).:]", re.MULTILINE),
    # "(b)" or "b)" anywhere
    re.compile(r"\(([A-Ja-j])\)"),
    re.compile(r"(?:^|\s)([A-Ja-j])\)"),
    # the whole answer is a bare letter, maybe in bold
    re.compile(r"^\s*\**([A-Ja-j])\**\s*[.)]?\s*$"),
)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


_YES_NO = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)


def parse_yes_no(text: str) -> str | None:
    """'yes' or 'no' from a free-text answer (the first one said), else None."""
    match = _YES_NO.search(text)
    return match.group(1).lower() if match and match.group(1).lower() != "maybe" else None


def _said_letter(text: str, valid: set[str]) -> str | None:
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            letter = match.group(1).upper()
            if letter in valid:
                return letter
    return None


def parse_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a free-text answer picks, or None when it cannot be told."""
    n = len(options) if options else 5
    letter = _said_letter(text, set(LETTERS[:n]))
    if letter or not options:
        return letter
    normed = [_norm(o) for o in options]
    if set(normed) <= {"yes", "no", "maybe"}:
        # A yes/no(/maybe) question: the first of them said ("Yes, there is no cupping" is yes).
        match = _YES_NO.search(text)
        said = match.group(1).lower() if match else None
        return LETTERS[normed.index(said)] if said in normed else None
    # The option text itself: the longest option mentioned wins ("angle-closure glaucoma" over
    # "glaucoma"); two unrelated options mentioned is ambiguous, hence unparseable.
    said = f" {_norm(text)} "
    hits = [(i, o) for i, o in enumerate(normed) if o and f" {o} " in said]
    hits = [(i, o) for i, o in hits if not any(o != other and o in other for _, other in hits)]
    if len({o for _, o in hits}) == 1:
        return LETTERS[hits[0][0]]
    return None


# --- closed questions without options (VQA-RAD / SLAKE: "left", "CT", "2") --------------------
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}
_ANSWER_LEAD = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:|-)?\s*", re.IGNORECASE)
_CLAUSE_END = re.compile(r"[.;,\n!?]|\s[-\u2013\u2014]\s")


def short_answer(text: str) -> str:
    """A short answer normalised for matching: lower-case words, number words as digits."""
    return " ".join(_NUMBER_WORDS.get(w, w) for w in _norm(text).split())


def answer_clause(text: str) -> str:
    """The normalised first clause of a free-text answer ("Answer: Left, in the frontal lobe" → "left")."""
    rest = _ANSWER_LEAD.sub("", text, count=1)
    for clause in _CLAUSE_END.split(rest):
        if short_answer(clause):
            return short_answer(clause)
    return ""


def closed_judgement(
    item_id: str,
    gold: str,
    prediction: str | None,
    options: Sequence[str] | None = None,
    *,
    lettered: bool | None = None,
) -> dict[str, Any]:
    """Score one closed question: ``{id, gold, parsed, correct, status}``.

    Lettered (by default when there are options; always for MCQs) the gold and the answer are
    option letters; otherwise a yes/no gold is compared with the first yes/no said, and any other
    short gold is correct when its words appear in the answer's first clause (numbers written out
    or as digits). Status: ok / wrong / unparseable / missing.
    """
    opts = list(options or [])
    lettered = bool(opts) if lettered is None else lettered
    want = _gold_letter(item_id, gold, opts or None) if lettered else short_answer(gold)
    if not want:
        raise DataError(f"gold answer {gold!r} is empty", field=f"answer of id {item_id}")
    if prediction is None:
        return {"id": item_id, "gold": want, "parsed": "", "correct": 0, "status": "missing"}
    if lettered:
        got = parse_choice(prediction, opts or None)
        correct = got == want
    elif want in ("yes", "no"):
        got = parse_yes_no(prediction)
        correct = got == want
    else:
        got = answer_clause(prediction) or None
        correct = got is not None and f" {want} " in f" {got} "
    status = "unparseable" if got is None else ("ok" if correct else "wrong")
    return {"id": item_id, "gold": want, "parsed": got or "", "correct": int(correct), "status": status}


def _gold_letter(item_id: str, gold: str, options: Sequence[str] | None) -> str:
    g = gold.strip()
    if len(g) == 1 and g.upper() in LETTERS:
        return g.upper()
    if options:
        for i, option in enumerate(options):
            if _norm(option) == _norm(g):
                return LETTERS[i]
    parsed = parse_choice(g, options)
    if parsed is None:
        raise DataError(
            f"gold answer {gold!r} is neither a letter nor one of the options",
            row=None,
            field=f"answer of id {item_id}",
        )
    return parsed


def mcq_judgements(
    gold: Mapping[str, str],
    predictions: Mapping[str, str],
    options: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """One row per gold id: gold letter, parsed letter, status (ok / wrong / unparseable / missing)."""
    options = options or {}
    unknown = sorted(set(predictions) - set(gold))
    if unknown:
        raise DataError(
            f"{len(unknown)} prediction id(s) have no gold answer, e.g. {unknown[:3]}", field="id"
        )
    return [
        closed_judgement(item_id, answer, predictions.get(item_id), options.get(item_id), lettered=True)
        for item_id, answer in gold.items()
    ]


def mcq_accuracy(
    gold: Mapping[str, str],
    predictions: Mapping[str, str],
    options: Mapping[str, Sequence[str]] | None = None,
    groups: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Accuracy over every gold id (missing/unparseable = wrong) and their counts; per group too."""
    if not gold:
        raise DataError("no MCQ items to score", field="gold")
    rows = mcq_judgements(gold, predictions, options)
    return closed_summary(rows) | _grouped(rows, groups, closed_summary)


def closed_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy, counts and the share of answers that could not be read (counted wrong)."""
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    unparsed = sum(r["status"] == "unparseable" for r in rows)
    return {
        "accuracy": correct / n,
        "n": float(n),
        "correct": float(correct),
        "unparseable": float(unparsed),
        "unparsed_rate": unparsed / n,
        "missing": float(sum(r["status"] == "missing" for r in rows)),
    }


def _grouped(rows: Sequence[dict[str, Any]], groups: Mapping[str, str] | None, summary) -> dict[str, float]:
    if not groups:
        return {}
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["id"] not in groups:
            raise DataError(f"id {row['id']!r} has no group", field="groups")
        by.setdefault(groups[row["id"]], []).append(row)
    return {f"{g}/{k}": v for g, members in sorted(by.items()) for k, v in summary(members).items()}


# --- essay QA ------------------------------------------------------------------------------------
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; CJK characters one token each (rouge-score drops them otherwise)."""
    return _TOKEN.findall(text.lower())


class _StemmingTokenizer:
    """rouge-score's tokenizer interface; Porter-stems like ``use_stemmer=True`` but keeps CJK."""

    def __init__(self) -> None:
        from nltk.stem.porter import PorterStemmer

        self._stem = PorterStemmer().stem

    def tokenize(self, text: str) -> list[str]:
        return [self._stem(t) if len(t) > 3 else t for t in tokenize(text)]


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """ROUGE-L F1 per pair."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_StemmingTokenizer())
    return [scorer.score(ref, pred)["rougeL"].fmeasure for ref, pred in _pairs(references, predictions)]


def _bleu_tokenizer(texts: Sequence[str]) -> str:
    return "zh" if any(re.search(f"[{_CJK}]", t) for t in texts) else "13a"


def bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu) on a 0–1 scale."""
    import sacrebleu

    pairs = _pairs(references, predictions)
    refs, preds = [r for r, _ in pairs], [p for _, p in pairs]
    return sacrebleu.corpus_bleu(preds, [refs], tokenize=_bleu_tokenizer(refs)).score / 100.0


def sentence_bleu(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """Smoothed sentence BLEU per pair (for per-item tables), 0–1."""
    import sacrebleu

    pairs = _pairs(references, predictions)
    tok = _bleu_tokenizer([r for r, _ in pairs])
    return [sacrebleu.sentence_bleu(p, [r], tokenize=tok).score / 100.0 for r, p in pairs]


def meteor_uses_wordnet() -> bool:
    """True when METEOR has WordNet synonyms available (Debian wordnet-base installed)."""
    return uses_wordnet()


def meteor(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """METEOR per pair (nltk)."""
    from nltk.translate.meteor_score import meteor_score

    synonyms = wordnet()
    return [
        meteor_score([tokenize(r)], tokenize(p), wordnet=synonyms) if tokenize(p) and tokenize(r) else 0.0
        for r, p in _pairs(references, predictions)
    ]


def _pairs(references: Sequence[str], predictions: Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(references, str) or isinstance(predictions, str):
        raise DataError("references and predictions must be sequences of strings, not one string")
    if len(references) != len(predictions):
        raise DataError(
            f"{len(references)} references but {len(predictions)} predictions", field="predictions"
        )
    if not references:
        raise DataError("no essay items to score", field="references")
    for i, (r, p) in enumerate(zip(references, predictions, strict=True)):
        if not isinstance(r, str) or not isinstance(p, str):
            raise DataError(f"expected strings, got {type(r).__name__}/{type(p).__name__}", row=i)
    return list(zip(references, predictions, strict=True))


@dataclass(frozen=True)
class EssayMetrics:
    """Which essay metrics to compute, with which encoders; built from a recipe's evaluate section."""

    metrics: tuple[str, ...] = ESSAY_METRICS
    semscore_model: str = encoders.SEMSCORE_MODEL
    bertscore_model: str = encoders.BERTSCORE_MODEL
    bertscore_layers: int | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> EssayMetrics:
        """From an :class:`eyeops.recipes.EvalSpec` (its semscore/bertscore fields)."""
        return cls(
            semscore_model=spec.semscore_model,
            bertscore_model=spec.bertscore_model,
            bertscore_layers=spec.bertscore_layers,
        )

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(ESSAY_METRICS)
        if unknown:
            raise DataError(f"unknown essay metric(s) {sorted(unknown)} (known: {', '.join(ESSAY_METRICS)})")

    def _encoders(self) -> dict[str, str]:
        return {"semscore": self.semscore_model, "bertscore": self.bertscore_model}

    def names(self) -> dict[str, str]:
        """Metric → the name it is reported under (SemScore/BERTScore carry a stand-in encoder's name)."""
        models = self._encoders()
        return {
            m: encoders.metric_name(m, encoders.resolve_encoder(models[m])) if m in models else m
            for m in self.metrics
        }

    def notes(self) -> list[str]:
        """One note per encoder that stands in for the one configured."""
        names, out = self.names(), []
        for metric, model in self._encoders().items():
            encoder = encoders.resolve_encoder(model)
            if metric in self.metrics and encoder.substituted:
                out.append(
                    f"{metric}: {model} is not available offline; scored with the packaged "
                    f"{encoder.name}, reported as {names[metric]}"
                )
        return out

    def item_scores(self, references: Sequence[str], predictions: Sequence[str]) -> list[dict[str, float]]:
        """Per-pair scores (BLEU as smoothed sentence BLEU) keyed by reported name."""
        pairs = _pairs(references, predictions)
        refs, preds = [r for r, _ in pairs], [p for _, p in pairs]
        columns = {
            "rougeL": lambda: rouge_l(refs, preds),
            "bleu": lambda: sentence_bleu(refs, preds),
            "meteor": lambda: meteor(refs, preds),
            "semscore": lambda: encoders.semscore(refs, preds, self.semscore_model),
            "bertscore": lambda: encoders.bertscore(refs, preds, self.bertscore_model, self.bertscore_layers),
        }
        names = self.names()
        values = {names[m]: columns[m]() for m in self.metrics}
        return [{name: column[i] for name, column in values.items()} for i in range(len(pairs))]

    def scores(
        self,
        references: Sequence[str],
        predictions: Sequence[str],
        *,
        groups: Sequence[str] | None = None,
        items: Sequence[Mapping[str, float]] | None = None,
    ) -> dict[str, float]:
        """Means of the per-pair scores, corpus BLEU and ``n``; with ``groups``, ``<group>/<metric>``
        too. ``items`` (from :meth:`item_scores`) saves scoring the same pairs again."""
        items = items if items is not None else self.item_scores(references, predictions)
        if len(items) != len(references):
            raise DataError(f"{len(items)} item scores for {len(references)} references", field="items")
        if groups is not None and len(groups) != len(items):
            raise DataError(f"{len(groups)} group labels for {len(items)} items", field="groups")
        names = self.names().values()

        def summary(idx: Sequence[int]) -> dict[str, float]:
            out = {"n": float(len(idx))}
            for name in names:
                if name == "bleu":  # BLEU is a corpus statistic, not a mean of sentence scores
                    out[name] = bleu([references[i] for i in idx], [predictions[i] for i in idx])
                else:
                    out[name] = statistics.fmean(items[i][name] for i in idx)
            return out

        result = summary(range(len(items)))
        if groups is not None:
            by: dict[str, list[int]] = {}
            for i, g in enumerate(groups):
                by.setdefault(g, []).append(i)
            for g, idx in sorted(by.items()):
                result.update({f"{g}/{k}": v for k, v in summary(idx).items()})
        return result


def essay_scores(
    references: Sequence[str],
    predictions: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    metrics: Sequence[str] = ESSAY_METRICS,
) -> dict[str, float]:
    """Mean scores, corpus BLEU and ``n`` with the default encoders (see :meth:`EssayMetrics.scores`)."""
    return EssayMetrics(metrics=tuple(metrics)).scores(references, predictions, groups=groups)
