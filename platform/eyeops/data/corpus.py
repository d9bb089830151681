"""Ophtimus-style corpus pipeline: papers and textbooks → clean passages → pretraining + QA data.

PDF (pypdf), HTML (BeautifulSoup, lxml parser) and text/markdown files → clean text (hyphenation
joined, running headers/footers and page numbers dropped, whitespace normalised) → passages of
about ``passage_words`` on paragraph boundaries → quality filters (length, letter share, repeated
3-grams; each rejection counted by reason) → exact and MinHash near-duplicate removal (datasketch
LSH) → optional map-reduce summaries with the engine's LLM → ``pretrain_text`` documents packed to
about ``pack_words`` per document, plus verified MCQ / essay items from the passages (LLM engine).
Every record's split group is its source document, so no document spans two splits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Task
from eyeops.data.specs import CorpusSpec
from eyeops.errors import DataError

__all__ = [
    "SUFFIXES",
    "clean_passages",
    "clean_text",
    "dedup",
    "documents",
    "extract_text",
    "load",
    "pack",
    "passages",
    "quality_reason",
]

SUFFIXES = (".pdf", ".html", ".htm", ".txt", ".md")
SUMMARY_SYSTEM = (
    "You summarise ophthalmology texts faithfully, keeping every clinical fact. Reply with the summary only."
)
MAP_USER = "Summarise this passage in at most five sentences:\n\n{text}"
REDUCE_USER = "Combine these partial summaries into one summary of the whole document:\n\n{text}"


# --- extraction -----------------------------------------------------------------------------------
def _pdf_pages(path: Path) -> list[str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        return [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, OSError, ValueError) as exc:
        raise DataError(f"cannot read PDF: {exc}", file=path.name) from None


def _html_text(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_bytes(), "lxml")
    for tag in soup(["script", "style", "nav", "header", "footer", "aside", "form", "noscript"]):
        tag.decompose()
    blocks = [el.get_text(" ", strip=True) for el in soup.find_all(["h1", "h2", "h3", "h4", "p", "li", "td"])]
    return "\n\n".join(b for b in blocks if b)


def extract_text(path: Path) -> str:
    """The text of one PDF / HTML / text file, cleaned (:func:`clean_text`)."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return clean_text(_pdf_pages(path))
    if suffix in (".html", ".htm"):
        return clean_text([_html_text(path)])
    if suffix in (".txt", ".md"):
        try:
            return clean_text([path.read_text(encoding="utf-8")])
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=path.name) from None
    raise DataError(f"unsupported corpus file type {suffix!r} ({', '.join(SUFFIXES)})", file=path.name)


def clean_text(pages: Sequence[str]) -> str:
    """Pages → one text: running headers/footers (a line on most pages) and page numbers dropped,
    words split by a line-end hyphen joined, lines of a paragraph joined, NFKC-normalised."""
    pages = [unicodedata.normalize("NFKC", p).replace("\r", "") for p in pages]
    line_pages = Counter(line.strip() for p in pages for line in set(p.splitlines()) if line.strip())
    running = {line for line, n in line_pages.items() if len(pages) >= 3 and n >= 0.6 * len(pages)}
    kept = []
    for page in pages:
        lines = [
            line
            for line in page.splitlines()
            if line.strip() not in running and not re.fullmatch(r"\s*(page\s*)?\d{1,4}\s*", line, flags=re.I)
        ]
        kept.append("\n".join(lines))
    text = "\n".join(kept)
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)  # hyphenated line breaks
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


# --- passages, filters, dedup -----------------------------------------------------------------------
def passages(text: str, words: int) -> list[str]:
    """Paragraph-aligned passages of about ``words`` words (a long paragraph is cut at sentences)."""
    pieces = [
        piece
        for paragraph in text.split("\n\n")
        for piece in (
            re.split(r"(?<=[.!?])\s+", paragraph) if len(paragraph.split()) > words else [paragraph]
        )
    ]
    return _greedy_join(pieces, words, " ")


def _greedy_join(pieces: Sequence[str], words: int, sep: str) -> list[str]:
    """Consecutive ``pieces`` joined by ``sep`` into chunks of at most about ``words`` words."""
    out: list[str] = []
    current: list[str] = []
    for piece in pieces:
        if current and len(" ".join(current).split()) + len(piece.split()) > words:
            out.append(sep.join(current))
            current = []
        current.append(piece)
    if current:
        out.append(sep.join(current))
    return out


def quality_reason(passage: str, spec: CorpusSpec) -> str | None:
    """Why a passage fails the quality filters, or None."""
    tokens = passage.split()
    if len(tokens) < spec.min_words:
        return "too short"
    chars = [c for c in passage if not c.isspace()]
    if sum(c.isalpha() for c in chars) < spec.min_alpha_ratio * len(chars):
        return "too few letters (table, references or symbols)"
    grams = Counter(tuple(w.lower() for w in tokens[i : i + 3]) for i in range(len(tokens) - 2))
    if grams and grams.most_common(1)[0][1] * 3 > spec.max_repeat_ratio * len(tokens):
        return "repetitive"
    return None


def _shingles(text: str) -> set[bytes]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + 5]).encode() for i in range(max(1, len(words) - 4))}


def dedup(texts: Sequence[str], threshold: float, *, num_perm: int = 128) -> list[tuple[int, str]]:
    """``(index, reason)`` of the texts to drop: exact repeats, then MinHash-LSH near-duplicates of an
    earlier text (word 5-gram shingles; Jaccard estimated above ``threshold``)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: dict[str, int] = {}
    drop: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()
        if digest in seen:
            drop.append((i, "exact duplicate passage"))
            continue
        seen[digest] = i
        signature = MinHash(num_perm=num_perm, seed=1)
        signature.update_batch(list(_shingles(text)))
        if lsh.query(signature):
            drop.append((i, "near-duplicate passage"))
            continue
        lsh.insert(str(i), signature)
    return drop


def pack(texts: Sequence[str], words: int) -> list[str]:
    """Consecutive texts joined into documents of about ``words`` words (continued pretraining)."""
    return _greedy_join(texts, words, "\n\n")


# --- the source -----------------------------------------------------------------------------------------
def _files(path: str | Path | None) -> list[tuple[str, Path]]:
    """``(document name, file)``: the file, or every corpus file under a directory (name relative)."""
    if not path:
        raise DataError("source 'corpus' needs a path (a file or a directory)", field="data.path")
    root = Path(path).expanduser()
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise DataError("file not found", file=str(root))
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"no corpus files ({', '.join(SUFFIXES)}) under the directory", file=str(root))
    return [(p.relative_to(root).as_posix(), p) for p in files]


def clean_passages(
    files: Sequence[tuple[str, Path]], spec: CorpusSpec, result: ImportResult, advance: Callable[[int], None]
) -> dict[str, list[str]]:
    """Each document's passages (``files``: :func:`_files`) after cleaning, filters and dedup;
    unreadable files quarantined and filtered passages counted (by reason) in ``result``."""
    kept: list[tuple[str, str]] = []  # (document, passage)
    for name, file in files:
        try:
            text = extract_text(file)
        except DataError as exc:
            result.reject(name, str(exc).split(": ", 1)[-1])
            advance(1)
            continue
        for passage in passages(text, spec.passage_words):
            reason = quality_reason(passage, spec)
            if reason is None:
                kept.append((name, passage))
            else:
                result.skip(reason)
        advance(1)
    dropped = dict(dedup([p for _, p in kept], spec.dedup_threshold))
    for reason in dropped.values():
        result.skip(reason)
    by_doc: dict[str, list[str]] = {}
    for i, (doc, passage) in enumerate(kept):
        if i not in dropped:
            by_doc.setdefault(doc, []).append(passage)
    result.notes["corpus"] = (
        f"{len(files)} file(s), {len(kept) - len(dropped)} passage(s) after filters and dedup"
    )
    return by_doc


def documents(path: str | Path, spec: CorpusSpec | None = None) -> list[str]:
    """One cleaned, filtered, deduplicated text per corpus file (``model.corpus`` entries)."""
    by_doc = clean_passages(_files(path), spec or CorpusSpec(), ImportResult(), lambda n=1: None)
    return ["\n\n".join(texts) for texts in by_doc.values()]


def _summary(session, text_passages: Sequence[str]) -> str:
    """Map (one summary per passage) then reduce (one summary of the summaries)."""
    parts = [session.chat(SUMMARY_SYSTEM, MAP_USER.format(text=p)) for p in text_passages]
    return (
        parts[0]
        if len(parts) == 1
        else session.chat(SUMMARY_SYSTEM, REDUCE_USER.format(text="\n\n".join(parts)))
    )


def _record(doc: str, suffix: str, where: str, text: str, meta: dict) -> RawRecord:
    """One pretraining-text record of ``doc``; its group is the document, so one split holds it all."""
    doc_key = hashlib.sha256(doc.encode()).hexdigest()[:10]
    return RawRecord(
        key=f"{doc_key}-{suffix}",
        where=f"{doc} {where}",
        task=Task.PRETRAIN_TEXT,
        source="corpus",
        group=doc_key,
        messages=(),
        answer=text,
        meta=meta,
    )


def load(
    path: str | None,
    *,
    spec: CorpusSpec,
    tasks: Sequence[Task],
    engine=None,
    progress: Callable[[str, int], Callable[[int], None]],
) -> ImportResult:
    """Pretraining documents (and, with an LLM ``engine``, verified MCQ / essay items) from a corpus."""
    from eyeops.data.llm_client import BudgetExhausted, CallFailed

    result = ImportResult()
    files = _files(path)
    by_doc = clean_passages(files, spec, result, progress("reading corpus files", len(files)))

    passage_records: list[RawRecord] = []
    for doc, texts in by_doc.items():
        if Task.PRETRAIN_TEXT in tasks:
            result.records += [
                _record(doc, f"doc{j}", f"packed {j}", packed, {"kind": "packed"})
                for j, packed in enumerate(pack(texts, spec.pack_words))
            ]
        if spec.summarize and engine is not None:
            try:
                summary = _summary(engine.session, texts)
                result.records.append(_record(doc, "summary", "summary", summary, {"kind": "summary"}))
            except (BudgetExhausted, CallFailed) as exc:
                result.reject(f"{doc} summary", f"summary not written ({exc})")
        passage_records += [
            _record(doc, f"p{k}", f"passage {k}", text, {"document": doc}) for k, text in enumerate(texts)
        ]
    qa_tasks = [t for t in tasks if t in (Task.MCQ, Task.TEXT_QA)]
    if qa_tasks and engine is not None:
        advance = progress("LLM engine: passages → MCQ / essay, verified", len(passage_records))
        result.records += engine.passage_records(passage_records, qa_tasks, advance=advance)
    elif qa_tasks:
        result.notes["corpus_qa"] = "MCQ / essay need data.engine.kind llm; only pretraining text was made"
    if not result.records and not result.quarantine:
        raise DataError(
            f"nothing usable in the corpus: {dict(result.filtered)} passage(s) filtered", file=str(path)
        )
    return result
