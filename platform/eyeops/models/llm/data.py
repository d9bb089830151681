"""Text data for causal LMs: chat conversations from Samples, answer-only labels, packed pretraining.

- SFT: a sample becomes a conversation (optional system turn, its messages, the answer as the
  final assistant turn) rendered with the tokenizer's chat template. Labels are ``-100`` on every
  token except the assistant answer(s) — located by character offsets of the rendered template,
  so any template that renders a conversation as a prefix-stable string works.
- Continued pretraining: documents are tokenised, joined with EOS and cut into blocks of
  ``max_seq_len`` tokens (packing: no padding wasted; the last short block is kept, not dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from eyeops.data.schema import IMAGE_TOKEN, Sample, Task
from eyeops.errors import DataError, NotFoundError
from eyeops.models.common.generation import render_chat

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # torch cross-entropy's ignore_index: no loss on these positions
LETTERS = "ABCDEFGHIJ"
SFT_TASKS = frozenset({Task.TEXT_QA, Task.MCQ, Task.DIALOGUE, Task.OPEN_QA, Task.CLOSED_QA, Task.REPORT})
ESSAY_TASKS = frozenset({Task.TEXT_QA, Task.OPEN_QA, Task.REPORT, Task.DIALOGUE})
MCQ_INSTRUCTION = "Answer with the letter of the correct option."


def is_text_sample(sample: Sample) -> bool:
    """A sample a text-only model can learn from (no images, no image placeholders)."""
    return not sample.images and not any(IMAGE_TOKEN in m.content for m in sample.messages)


# --- prompts and targets ---------------------------------------------------------------------------
def mcq_letter(sample: Sample) -> str:
    """The gold option letter of an MCQ sample (answer given as a letter or as the option text)."""
    answer = (sample.answer or "").strip()
    if len(answer) == 1 and answer.upper() in LETTERS[: max(len(sample.options), 1)]:
        return answer.upper()
    for i, option in enumerate(sample.options):
        if option.strip().lower() == answer.lower():
            return LETTERS[i]
    raise DataError(
        f"sample {sample.id!r}: MCQ answer {sample.answer!r} is neither a letter "
        f"A–{LETTERS[len(sample.options) - 1] if sample.options else 'E'} nor an option text",
        field="answer",
    )


def _with_options(sample: Sample, text: str) -> str:
    """Make sure an MCQ question shows its lettered options and asks for a letter."""
    if sample.options and not all(o in text for o in sample.options):
        text += "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options))
    if "letter" not in text.lower():
        text += f"\n{MCQ_INSTRUCTION}"
    return text


def prompt_messages(sample: Sample, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation up to (not including) the answer the model should produce."""
    messages = [m.model_dump() for m in sample.messages]
    if sample.answer is None:
        if not messages or messages[-1]["role"] != "assistant":
            raise DataError(f"sample {sample.id!r}: no answer and no final assistant turn", field="answer")
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise DataError(
            f"sample {sample.id!r}: the conversation must end with a user turn before the answer",
            field="messages",
        )
    if sample.task == Task.MCQ:
        messages[-1] = {"role": "user", "content": _with_options(sample, messages[-1]["content"])}
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def reference_answer(sample: Sample) -> str:
    """The target text: the answer field, or the final assistant turn."""
    if sample.answer is not None:
        if sample.task == Task.MCQ and sample.options:
            letter = mcq_letter(sample)
            return f"Answer: {letter}. {sample.options[LETTERS.index(letter)]}"
        return sample.answer
    if sample.messages and sample.messages[-1].role == "assistant":
        return sample.messages[-1].content
    raise DataError(f"sample {sample.id!r}: no answer and no final assistant turn", field="answer")


def conversation(sample: Sample, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The full training conversation: prompt + the answer as the last assistant turn."""
    return [
        *prompt_messages(sample, system_prompt),
        {"role": "assistant", "content": reference_answer(sample)},
    ]


# --- tokenisation --------------------------------------------------------------------------------
def encode_sft(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    *,
    loss_on: str = "final_answer",
    max_seq_len: int,
    sample_id: str = "?",
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` with labels only on assistant answers (the last, or all of them)."""
    messages = [dict(m) for m in messages]
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise DataError(f"sample {sample_id!r}: no assistant turn to learn from", field="messages")
    if loss_on == "final_answer":
        turns = turns[-1:]
    spans = []
    for k in turns:
        prompt = render_chat(tokenizer, messages[:k], add_generation_prompt=True)
        upto = render_chat(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if not (full.startswith(upto) and upto.startswith(prompt)):
            raise DataError(
                f"sample {sample_id!r}: the chat template does not render a conversation as a "
                "prefix of its continuation, so the answer span cannot be located",
                field="messages",
            )
        spans.append((len(prompt), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, _b) in enumerate(enc["offset_mapping"]):
        # A token belongs to the answer when it starts inside an answer span (this includes the
        # end-of-turn token, so the model learns to stop).
        if any(s <= a < e for s, e in spans):
            labels[t] = ids[t]
    if len(ids) > max_seq_len:
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError(
            f"sample {sample_id!r}: the prompt alone fills max_seq_len={max_seq_len} tokens, no answer "
            "token is left to learn (raise model.max_seq_len)",
            field="messages",
        )
    return ids, labels


def pack(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], block: int) -> list[list[int]]:
    """Token blocks of ``block`` ids from EOS-joined documents (the last block may be shorter)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        if text.strip():
            stream.extend(tokenizer(text, add_special_tokens=True)["input_ids"])
            if eos is not None:
                stream.append(eos)
    return [stream[i : i + block] for i in range(0, len(stream), block) if len(stream[i : i + block]) > 1]


# --- corpus ---------------------------------------------------------------------------------------
def read_corpus(entry: str) -> list[str]:
    """Documents from a .txt/.md file (blank-line separated), a Parquet file's ``text`` column, or
    PDF / HTML files (one file, or a directory of corpus files) through the data layer's corpus
    pipeline (:func:`eyeops.data.corpus.documents`: cleaned, quality-filtered, deduplicated)."""
    path = Path(entry).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in (".pdf", ".html", ".htm")):
        from eyeops.data.corpus import documents

        return documents(path)
    if not path.is_file():
        raise NotFoundError(f"model.corpus entry {entry!r}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        if "text" not in names:
            raise DataError(f"no 'text' column (columns: {names})", file=str(path), field="text")
        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(
                    f"expected a string, got {type(text).__name__}", file=str(path), row=row, field="text"
                )
        return texts
    if path.suffix not in (".txt", ".md"):
        raise DataError(
            "corpus files must be .txt, .md, .parquet, .pdf or .html (or a directory)", file=str(path)
        )
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read as UTF-8 text: {exc}", file=str(path)) from None
    return [doc.strip() for doc in raw.split("\n\n") if doc.strip()]


def pretrain_text(sample: Sample) -> str:
    """The document of a ``pretrain_text`` sample: its answer, else its joined message contents."""
    if sample.answer:
        return sample.answer
    text = "\n".join(m.content for m in sample.messages)
    if not text.strip():
        raise DataError(f"sample {sample.id!r}: a pretrain_text sample has no text", field="answer")
    return text


# --- torch -----------------------------------------------------------------------------------------
class TokenDataset(Dataset):
    """Pre-tokenised ``(input_ids, labels)`` examples."""

    def __init__(self, examples: Sequence[tuple[list[int], list[int]]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        ids, labels = self.examples[index]
        return {"input_ids": ids, "labels": labels}


class PadCollator:
    """Right-pads a micro-batch; padding gets attention 0 and label -100 (a class: picklable)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
