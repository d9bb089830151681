"""Tiny LLM fixtures for tests: a BPE tokenizer trained here + a tiny random Llama, a text dataset.

Nothing is downloaded: the tokenizer is trained on a few ophthalmic sentences with `tokenizers`
and the LM is a 2-layer Llama saved with ``save_pretrained``, so recipes point ``model.base`` at a
real local directory, exactly like a production checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eyeops.data.schema import Manifest, Message, Sample, Split, Task

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
KB = {
    "glaucoma": "Glaucoma is damage to the optic nerve, often with raised eye pressure.",
    "cataract": "A cataract is clouding of the lens that blurs vision; surgery replaces the lens.",
    "amd": "Age-related macular degeneration damages the macula and central vision; drusen come early.",
    "dr": "Diabetic retinopathy shows microaneurysms, haemorrhages and exudates in the retina.",
}


def save_tiny_llm(
    path: Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    corpus: list[str] | None = None,
    vocab_size: int = 400,
    max_positions: int = 512,
) -> Path:
    """A ChatML tokenizer (BPE trained on ``corpus``, default the tiny KB) and a tiny Llama sized to it,
    both written with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = corpus or [*KB.values(), "Answer: A. B. C. D. user assistant system"]
    tok.train_from_iterator(corpus * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    return path


def teach_answer(model: Any, tokenizer: Any, messages: list[dict], answer: str, steps: int = 80) -> None:
    """Make a tiny LM memorise ``answer`` to ``messages`` (a fraction of a second for 2 layers), so
    greedy decoding gives visible text instead of a random model's whitespace or special tokens."""
    teach_answers(model, tokenizer, [(messages, answer)], steps=steps)


def teach_answers(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[list[dict], str]],
    steps: int = 80,
    lr: float = 1e-2,
    exact_for: int | None = None,
    min_prob: float = 0.0,
) -> int:
    """:func:`teach_answer` for several ``(messages, answer)`` pairs at once (one padded batch).

    ``exact_for=N`` stops early once every answer token has been the model's top prediction (with at
    least ``min_prob`` probability) for N steps in a row, so greedy decoding reproduces every answer;
    a margin keeps it so when another process decodes with other kernels; returns the steps taken."""
    import torch

    from eyeops.models.common.generation import render_chat

    rows = []
    for messages, answer in pairs:
        prompt = render_chat(tokenizer, messages, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + answer_ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, n_prompt) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
        mask[i, : len(row)] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    exact, taken = 0, 0
    while taken < steps:
        taken += 1
        optimizer.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        optimizer.step()
        if exact_for is not None:
            logits, target, answer = out.logits[:, :-1], labels[:, 1:], labels[:, 1:] != -100
            hit = logits.argmax(-1) == target
            prob = logits.softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            sure = bool(hit[answer].all()) and bool((prob[answer] >= min_prob).all())
            exact = exact + 1 if sure else 0
            if exact >= exact_for:
                break
    model.eval()
    return taken


def text_samples() -> list[Sample]:
    """text_qa / mcq / dialogue / pretrain_text samples over the tiny KB, in all three splits."""
    out: list[Sample] = []
    names = list(KB)
    for i, (topic, fact) in enumerate(KB.items()):
        for split in (Split.TRAIN, Split.VAL, Split.TEST):
            sid = f"{topic}-{split.value}"
            meta = {"topic": topic}
            out.append(
                Sample(
                    id=f"qa-{sid}",
                    task=Task.TEXT_QA,
                    split=split,
                    source="kb",
                    meta=meta,
                    messages=[Message(role="user", content=f"What is {topic}?")],
                    answer=fact,
                )
            )
            options = [KB[n].split(";")[0][:40] for n in names]
            out.append(
                Sample(
                    id=f"mcq-{sid}",
                    task=Task.MCQ,
                    split=split,
                    source="ophtimus-mcq",
                    meta=meta,
                    messages=[Message(role="user", content=f"Which statement describes {topic}?")],
                    options=options,
                    answer="ABCD"[i],
                )
            )
        out.append(
            Sample(
                id=f"dlg-{topic}",
                task=Task.DIALOGUE,
                split=Split.TRAIN,
                source="alpaca",
                meta=meta,
                messages=[
                    Message(role="user", content="Hello"),
                    Message(role="assistant", content="Hello, how can I help?"),
                    Message(role="user", content=f"Tell me about {topic}."),
                ],
                answer=fact,
            )
        )
        out.append(
            Sample(
                id=f"doc-{topic}",
                task=Task.PRETRAIN_TEXT,
                split=Split.TRAIN,
                source="kb",
                answer=" ".join([fact] * 3),
            )
        )
    return out


def write_dataset(directory: Path, samples: list[Sample] | None = None) -> Path:
    """A prepared dataset directory (samples.parquet + manifest.json) through the data room's store."""
    from eyeops.data.store import publish, write_samples

    directory.mkdir(parents=True, exist_ok=True)
    write_samples(samples if samples is not None else text_samples(), directory)
    publish(directory, Manifest(name=directory.name))
    return directory


def tiny_recipe(base: Path | str, *, stages: list[dict] | None = None, **model: Any) -> dict:
    """An eye-llm-shaped recipe mapping on a tiny local base."""
    return {
        "name": "tiny-llm",
        "data": {"source": "knowledge", "tasks": ["text_qa", "mcq"]},
        "model": {
            "family": "llm",
            "base": str(base),
            "max_seq_len": 256,
            "corpus": [],
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "eval_max_new_tokens": 8,
            **model,
        },
        "train": {
            "num_workers": 1,
            "batch_size": 4,
            "lr": 0.01,
            "stages": stages
            if stages is not None
            else [
                {"name": "pretrain", "trainable": ["base"], "max_steps": 2, "data_tasks": ["pretrain_text"]},
                {
                    "name": "sft",
                    "trainable": ["lora"],
                    "max_steps": 2,
                    "data_tasks": ["text_qa", "mcq", "dialogue"],
                },
            ],
        },
        "evaluate": {"primary_metric": "mcq/accuracy"},
        "register": {"model_name": "tiny-llm"},
    }
