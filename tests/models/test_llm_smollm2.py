"""The real packaged SmolLM2-135M-Instruct: GGUF → cached HF dir, LoRA SFT on the knowledge base.

Shows the training loss falling within a few CPU steps and the adapter changing the model's
answer to a knowledge-base question about a disease held out of training (its split is test).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from eyeops.data import Split, Task, load_samples, prepare
from eyeops.families import get_family
from eyeops.inference import GenerationRequest
from eyeops.models.common.hub import load_causal_lm, load_tokenizer, resolve_base
from eyeops.models.llm import data as D
from eyeops.models.llm.inference import ChatModel
from eyeops.recipes import DataSpec, parse_recipe

pytestmark = pytest.mark.slow
FAMILY = get_family("llm")
BASE = "packaged:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One conversion for the whole module (the per-test storage root would redo it)."""
    path = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get("EYEOPS_MODEL_CACHE")
    os.environ["EYEOPS_MODEL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EYEOPS_MODEL_CACHE")
    else:
        os.environ["EYEOPS_MODEL_CACHE"] = old


def _resolve_in_group(rank: int, world: int, init_file: str, cache: str) -> None:
    """One rank of a gloo group (like a Ray Train worker) resolving the packaged base."""
    import torch.distributed as dist

    os.environ["EYEOPS_MODEL_CACHE"] = cache
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank == 0:
            time.sleep(2)  # let rank 1 take the lock: the case that once broke
        resolve_base(BASE)
    finally:
        dist.destroy_process_group()


def test_packaged_base_is_converted_once_and_cached(model_cache, tmp_path):
    """Both ranks of a distributed group race for the conversion; whichever wins writes it all.

    (transformers' save_pretrained writes nothing on rank ≠ 0, which once left a cache holding
    only the tokenizer when the second Ray worker took the lock first.)
    """
    import torch.multiprocessing as mp

    from eyeops.config import get_settings

    mp.spawn(_resolve_in_group, args=(2, str(tmp_path / "init"), str(model_cache)), nprocs=2)
    get_settings.cache_clear()
    where = resolve_base(BASE)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(where, name)), name
    config = json.loads(Path(where, "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert where.startswith(str(model_cache)) and os.path.isfile(os.path.join(where, "config.json"))
    start = time.perf_counter()
    assert resolve_base(BASE) == where  # cached: no second conversion
    model = load_causal_lm(BASE)
    assert time.perf_counter() - start < 20 and model.num_parameters() > 100_000_000
    assert load_tokenizer(BASE).chat_template


def test_lora_sft_lowers_the_loss_and_changes_a_held_out_answer(model_cache, tmp_path):
    from eyeops.config import get_settings

    get_settings.cache_clear()
    ref = prepare(DataSpec(source="knowledge", tasks=[Task.TEXT_QA], seed=0), str(tmp_path / "kb"), name="kb")
    recipe = parse_recipe(
        {
            "name": "eye-llm-smoke",
            "model": {
                "family": "llm",
                "base": BASE,
                "max_seq_len": 192,
                "corpus": [],
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            },
            "train": {
                "batch_size": 4,
                "stages": [{"name": "sft", "trainable": ["lora"], "data_tasks": ["text_qa"]}],
            },
            "evaluate": {"primary_metric": "essay/rougeL"},
            "register": {"model_name": "eye-llm-smoke"},
        }
    )
    torch.manual_seed(0)
    model = FAMILY.build_model(recipe)
    stage = recipe.train.stages[0]
    FAMILY.apply_stage(model, stage)
    train = FAMILY.datasets(recipe, tmp_path / "kb", stage)["train"]
    collate = FAMILY.collate_fn(recipe)
    # The 8 shortest QA pairs keep CPU steps cheap; the loss is measured on them before and after.
    shortest = sorted(range(len(train)), key=lambda i: len(train[i]["input_ids"]))[:8]
    batches = [collate([train[i] for i in shortest[:4]]), collate([train[i] for i in shortest[4:]])]

    def mean_loss() -> float:
        model.eval()
        with torch.no_grad():
            return sum(FAMILY.loss(model, b).item() for b in batches) / len(batches)

    before_loss = mean_loss()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(8):
        FAMILY.loss(model, batches[step % 2]).backward()
        optim.step()
        optim.zero_grad()
    after_loss = mean_loss()
    assert after_loss < 0.7 * before_loss, (before_loss, after_loss)

    FAMILY.save(model, recipe, tmp_path / "model")
    tuned = FAMILY.load(tmp_path / "model")
    held_out = next(s for s in load_samples(ref.uri, split=Split.TEST.value) if s.task == Task.TEXT_QA)
    request = GenerationRequest(messages=D.prompt_messages(held_out), max_new_tokens=24)
    plain = ChatModel(load_causal_lm(BASE), load_tokenizer(BASE))
    before, after = plain.generate([request])[0].text, tuned.generate([request])[0].text
    assert before.strip() and after.strip()
    assert after != before, (before, after)
