"""The llm family on a tiny random Llama: labels, packing, stages, training, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch
from eyeops_testing.llm_tiny import save_tiny_llm, text_samples, tiny_recipe, write_dataset

from eyeops.data.schema import Message, Sample, Split, Task
from eyeops.errors import ConfigError, DataError, NotFoundError
from eyeops.families import get_family
from eyeops.models.common.hub import from_pretrained_kwargs, load_tokenizer, resolve_base
from eyeops.models.llm import data as D
from eyeops.recipes import StageSpec, load_recipe, parse_recipe

FAMILY = get_family("llm")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("llm-data") / "kb")


@pytest.fixture(scope="module")
def tokenizer(base):
    return load_tokenizer(str(base))


def _recipe(base, **kw):
    return parse_recipe(tiny_recipe(base, **kw))


# --- labels and packing ---------------------------------------------------------------------------
def test_loss_only_on_the_assistant_answer(tokenizer):
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": "What is glaucoma?"},
        {"role": "assistant", "content": "Damage to the optic nerve."},
    ]
    ids, labels = D.encode_sft(tokenizer, messages, max_seq_len=512)
    assert len(ids) == len(labels)
    supervised = [t for t, lab in zip(ids, labels, strict=True) if lab != D.IGNORE_INDEX]
    assert all(lab in (D.IGNORE_INDEX, t) for t, lab in zip(ids, labels, strict=True))
    # exactly the final answer and its end-of-turn token, nothing of the prompt or the history
    assert tokenizer.decode(supervised).strip() == "Damage to the optic nerve.<|im_end|>"
    first = labels.index(next(lab for lab in labels if lab != D.IGNORE_INDEX))
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")

    _, all_labels = D.encode_sft(tokenizer, messages, loss_on="all_assistant", max_seq_len=512)
    text = tokenizer.decode([t for t, lab in zip(ids, all_labels, strict=True) if lab != D.IGNORE_INDEX])
    assert "Hi there." in text and "Damage to the optic nerve." in text and "Hello" not in text

    with pytest.raises(DataError, match="no answer token is left"):
        D.encode_sft(tokenizer, messages, max_seq_len=8, sample_id="long")


def test_packing_joins_documents_with_eos(tokenizer):
    docs = ["The macula gives central vision.", "The lens focuses light.", "  "]
    blocks = D.pack(tokenizer, docs, block=7)
    stream = [t for b in blocks for t in b]
    expected = []
    for doc in docs[:2]:
        expected += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    assert stream == expected
    assert all(len(b) == 7 for b in blocks[:-1]) and 1 < len(blocks[-1]) <= 7


def test_mcq_prompt_shows_options_and_target_is_a_letter():
    sample = next(s for s in text_samples() if s.task == Task.MCQ)
    prompt = D.prompt_messages(sample, "Be brief.")
    assert prompt[0] == {"role": "system", "content": "Be brief."}
    assert "A. " in prompt[-1]["content"] and D.MCQ_INSTRUCTION in prompt[-1]["content"]
    assert D.reference_answer(sample).startswith(f"Answer: {sample.answer}. ")
    bad = sample.model_copy(update={"answer": "Z"})
    with pytest.raises(DataError, match="neither a letter"):
        D.mcq_letter(bad)


# --- datasets per stage ------------------------------------------------------------------------------
def test_datasets_follow_stage_tasks(base, data_dir, tmp_path):
    recipe = _recipe(base)
    pretrain, sft = recipe.train.stages
    packed = FAMILY.datasets(recipe, data_dir, pretrain)
    assert set(packed) == {"train"}  # pretraining documents only exist in train
    assert all(ex["labels"] == ex["input_ids"] for ex in packed["train"])
    chat = FAMILY.datasets(recipe, data_dir, sft)
    n_train = sum(
        1
        for s in text_samples()
        if s.split == Split.TRAIN and s.task in (Task.TEXT_QA, Task.MCQ, Task.DIALOGUE)
    )
    assert len(chat["train"]) == n_train and len(chat["val"]) == len(chat["test"]) == 8
    assert all(D.IGNORE_INDEX in ex["labels"] for ex in chat["train"])

    batch = FAMILY.collate_fn(recipe)([chat["train"][0], chat["train"][1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == D.IGNORE_INDEX).all()

    # a corpus file joins the pretraining stage; image samples never reach a text model
    corpus = tmp_path / "notes.txt"
    corpus.write_text("Retinal detachment needs urgent care.\n\nFloaters can be harmless.", encoding="utf-8")
    with_corpus = _recipe(base, corpus=[str(corpus)])
    assert len(FAMILY.datasets(with_corpus, data_dir, pretrain)["train"]) >= len(packed["train"])
    image_only = write_dataset(
        tmp_path / "img",
        [
            Sample(
                id="i1",
                task=Task.TEXT_QA,
                split=Split.TRAIN,
                images=["images/a.png"],
                messages=[Message(role="user", content="<image> ?")],
                answer="x",
            )
        ],
    )
    with pytest.raises(DataError, match="no training text"):
        FAMILY.datasets(recipe, image_only, sft)


# --- stages ---------------------------------------------------------------------------------------
def test_apply_stage_selects_parameter_groups(base):
    recipe = _recipe(base)
    model = FAMILY.build_model(recipe)

    def trainable():
        return {n for n, p in model.named_parameters() if p.requires_grad}

    FAMILY.apply_stage(model, StageSpec(name="sft", trainable=["lora"]))
    assert trainable() and all("lora_" in n for n in trainable())
    FAMILY.apply_stage(model, StageSpec(name="pre", trainable=["base"]))
    assert trainable() and not any("lora_" in n for n in trainable())
    FAMILY.apply_stage(model, StageSpec(name="emb", trainable=["embeddings"]))
    assert trainable() == {n for n, _ in model.named_parameters() if "embed_tokens" in n}
    FAMILY.apply_stage(model, StageSpec(name="attn", trainable=["attention", "norms"]))
    assert all(".self_attn." in n or "norm" in n for n in trainable())
    with pytest.raises(ConfigError, match="unknown trainable group"):
        FAMILY.apply_stage(model, StageSpec(name="x", trainable=["vision"]))
    plain = FAMILY.build_model(_recipe(base, stages=[]))
    with pytest.raises(ConfigError, match="no adapter"):
        FAMILY.apply_stage(plain, StageSpec(name="x", trainable=["lora"]))


def test_a_few_sft_steps_lower_the_loss(base, data_dir):
    torch.manual_seed(0)
    recipe = _recipe(base, stages=[{"name": "sft", "trainable": ["all"], "data_tasks": ["text_qa"]}])
    model = FAMILY.build_model(recipe)
    FAMILY.apply_stage(model, recipe.train.stages[0])
    train = FAMILY.datasets(recipe, data_dir, recipe.train.stages[0])["train"]
    batch = FAMILY.collate_fn(recipe)([train[i] for i in range(len(train))])
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = FAMILY.loss(model, batch)
        losses.append(loss.item())
        loss.backward()
        optim.step()
        optim.zero_grad()
    assert losses[-1] < 0.6 * losses[0], losses


# --- save / load ----------------------------------------------------------------------------------
def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    ("stages", "merge", "fmt"),
    [
        ([{"name": "sft", "trainable": ["lora"]}], False, "adapter"),
        (None, False, "base+adapter"),  # pretrain (base) + sft (lora)
        ([{"name": "sft", "trainable": ["lora"]}], True, "merged"),
        ([], False, "full"),
    ],
)
def test_save_load_round_trip(base, tmp_path, stages, merge, fmt):
    recipe = _recipe(base, stages=stages, merge_on_export=merge)
    model = FAMILY.build_model(recipe)
    torch.manual_seed(1)
    for stage in recipe.train.stages or [StageSpec(name="train")]:
        FAMILY.apply_stage(model, stage)
        with torch.no_grad():  # move what the stage trains off its initial value, as training would
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.02 * torch.randn_like(p))
    model.eval()
    FAMILY.save(model, recipe, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "llm.json").read_text())
    assert meta["format"] == fmt and meta["base"] == str(base)
    assert (tmp_path / "out" / "adapter").is_dir() == (fmt in ("adapter", "base+adapter"))
    loaded = FAMILY.load(tmp_path / "out")
    assert loaded.capabilities == frozenset({"chat"})
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(model, ids), atol=1e-4, rtol=1e-4)
    assert "lora_" not in "".join(n for n, _ in loaded.model.named_parameters())  # merged for serving


@pytest.mark.parametrize("fmt_stages", [[], None], ids=["full", "base+adapter"])
@pytest.mark.filterwarnings("ignore:for base_model.*meta parameter:UserWarning")  # adapter on meta
def test_load_puts_the_model_on_its_device_through_load_causal_lm(base, tmp_path, fmt_stages):
    """The family no longer moves the model itself: the device reaches ``from_pretrained`` (an
    accelerator: ``device_map``, weights straight onto it) or, for cpu/meta, load_causal_lm's move.
    Meta parameters here prove the device travelled that way; cpu is the explicit CPU path."""
    recipe = _recipe(base, stages=fmt_stages)
    FAMILY.save(FAMILY.build_model(recipe), recipe, tmp_path / "out")
    for device in (torch.device("cpu"), torch.device("meta")):
        loaded = FAMILY.load(tmp_path / "out", device=device)
        assert {p.device for p in loaded.model.parameters()} == {device}


def test_accelerators_get_a_device_map_cpu_and_meta_do_not():
    def kwargs(device, quantization="none"):
        return from_pretrained_kwargs(
            dtype="bfloat16",
            revision=None,
            quantization=quantization,
            device=device,
            attn_implementation="sdpa",
            trust_remote_code=False,
        )

    assert kwargs(torch.device("cuda", 1))["device_map"] == {"": "cuda:1"}
    assert kwargs("mps")["device_map"] == {"": "mps"}
    for device in (None, "cpu", torch.device("meta")):
        assert "device_map" not in kwargs(device)


def test_load_errors(tmp_path):
    with pytest.raises(NotFoundError, match="not an llm model directory"):
        FAMILY.load(tmp_path)


# --- configuration errors -----------------------------------------------------------------------
def test_base_references(base, tmp_path):
    assert resolve_base(str(base)) == str(base.resolve())
    assert resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ConfigError, match="unknown packaged model"):
        resolve_base("packaged:gpt-9")
    with pytest.raises(NotFoundError, match=r"no config\.json"):
        resolve_base(str(tmp_path))
    with pytest.raises(ConfigError, match="not a packaged name"):
        resolve_base("just-a-name")


def test_qlora_and_targets_refused_clearly(base):
    with pytest.raises(ConfigError, match="QLoRA"):
        FAMILY.build_model(
            _recipe(base, quantization="4bit", stages=[{"name": "sft", "trainable": ["lora"]}])
        )
    with pytest.raises(ConfigError, match="may only train 'lora'"):
        FAMILY.build_model(_recipe(base, quantization="4bit"))
    bad = tiny_recipe(base)
    bad["model"]["lora"]["target_modules"] = ["c_attn"]
    with pytest.raises(ConfigError, match="q_proj"):  # the message lists the real Linear layers
        FAMILY.build_model(parse_recipe(bad))


def test_eye_llm_recipe_loads():
    recipe = load_recipe("eye-llm")
    assert recipe.family == "llm" and recipe.register.model_name == "eyeops-eye-llm"
    assert [s.name for s in recipe.train.stages] == ["pretrain", "sft"]
    assert recipe.train.stages[0].data_tasks == [Task.PRETRAIN_TEXT]
    assert "lora" in recipe.train.stages[1].trainable
