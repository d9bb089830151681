"""DeepSpeed ZeRO-3 partitions the model while the family builds it, with parameter offload.

One process in a gloo group (the Ray worker's view with one worker): the loop's ``construction``
context builds an eye-llm (a tiny Llama loaded with ``from_pretrained`` from a local directory,
LoRA attached) so that every weight is a ZeRO-3 partition from the start; two optimizer steps
(base, then LoRA) run through the ZeRO-3 engine with ``offload_param``, and the gathered model
saves and reloads through the family with the weights the engine trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eyeops_testing.llm_tiny import save_tiny_llm, tiny_recipe
from safetensors.torch import load_file

from eyeops.families import get_family
from eyeops.recipes import parse_recipe
from eyeops.train.strategies import StepPlan, construction, deepspeed_config, make_engine

pytestmark = pytest.mark.integration


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches torch process groups in module globals; one an earlier in-process test
    created and destroyed is stale here ('Group ... is not registered')."""
    import deepspeed.comm.comm as ds_comm
    import deepspeed.utils.groups as ds_groups

    ds_comm.cdb = None
    for name in dir(ds_groups):
        if name.startswith("_") and name.endswith("_GROUP"):
            setattr(ds_groups, name, {} if isinstance(getattr(ds_groups, name), dict) else None)


@pytest.fixture
def process_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    _forget_deepspeed_groups()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    _forget_deepspeed_groups()


def _zero3_recipe(base: Path, **deepspeed):
    spec = tiny_recipe(
        base,
        stages=[
            {"name": "pretrain", "trainable": ["base"], "max_steps": 1},
            {"name": "sft", "trainable": ["lora"], "max_steps": 1},
        ],
    )
    spec["train"].update(strategy="deepspeed", deepspeed={"zero_stage": 3, **deepspeed})
    return parse_recipe(spec)


def test_offload_param_is_zero3_only_and_reaches_the_config(tmp_path):
    from eyeops.errors import RecipeError

    recipe = _zero3_recipe(tmp_path, offload_param=True, offload_optimizer=True)
    zero = deepspeed_config(recipe, StepPlan(0.01, 1, 0, "fp32"))["zero_optimization"]
    assert zero["offload_param"] == {"device": "cpu"} and zero["offload_optimizer"] == {"device": "cpu"}
    spec = recipe.model_dump(mode="json")
    spec["train"]["deepspeed"]["zero_stage"] = 2
    with pytest.raises(RecipeError, match="offload_param needs zero_stage 3"):
        parse_recipe(spec)


def test_zero3_builds_partitioned_trains_and_saves_whole(tmp_path, process_group):
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    base = save_tiny_llm(tmp_path / "base")
    recipe = _zero3_recipe(base, offload_param=True)
    family = get_family("llm")
    with construction(recipe, "fp32"):
        model = family.build_model(recipe)
    params = dict(model.named_parameters())
    # Partitioned at construction: each parameter is a ZeRO handle whose local data is empty.
    assert all(hasattr(p, "ds_id") for p in params.values())
    assert all(p.ds_status == ZeroParamStatus.NOT_AVAILABLE and p.numel() == 0 for p in params.values())
    original = load_file(str(base / "model.safetensors"))["model.embed_tokens.weight"]
    embed_name = next(n for n in params if n.endswith("embed_tokens.weight"))
    with deepspeed.zero.GatheredParameters([params[embed_name]]):
        torch.testing.assert_close(params[embed_name].detach().clone(), original)  # loaded into partitions
    lora_b = [n for n in params if "lora_B" in n]
    with deepspeed.zero.GatheredParameters([params[n] for n in lora_b]):
        assert lora_b and all(params[n].abs().sum() == 0 for n in lora_b)  # the adapter starts at 0
    ids = torch.arange(5, 37).reshape(2, 16)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    losses = []
    for stage in recipe.train.stages:
        family.apply_stage(model, stage)
        engine = make_engine(model, recipe, StepPlan(0.05, 1, 0, "fp32"), torch.device("cpu"))
        loss = family.loss(engine.model, batch)
        engine.backward(loss)
        engine.step(True)
        losses.append(float(loss.detach()))
    with engine.gathered():
        whole = {n: p.detach().clone() for n, p in engine.unwrap().named_parameters()}
        assert all(v.numel() > 0 for v in whole.values())
        # LoRA B starts at zero and the SFT step moved it: the adapter trained under ZeRO-3.
        assert any(whole[n].abs().sum() > 0 for n in lora_b)
        family.save(engine.unwrap(), recipe, tmp_path / "model")
    reloaded = family.load(tmp_path / "model")
    embed = whole[embed_name]
    assert not torch.equal(embed, original)  # the ZeRO-3 pretrain step changed the base
    torch.testing.assert_close(reloaded.model.get_input_embeddings().weight, embed)
    with torch.no_grad():
        after = reloaded.model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(after) and all(torch.isfinite(torch.tensor(losses)))
