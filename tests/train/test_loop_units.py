"""Loop pieces that need no Ray: stage planning, sharding/resume of the batch stream, configs, errors."""

from __future__ import annotations

import itertools

import pytest
import ray
import torch

from eyeops.errors import ConfigError, RecipeError
from eyeops.models.classifier.family import FAMILY
from eyeops.models.classifier.modeling import FundusTransform
from eyeops.recipes import load_recipe
from eyeops.train import train
from eyeops.train.loop import _micro_batches, plan_stages
from eyeops.train.strategies import deepspeed_config, lr_factor, resolve_precision


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("fundus-classifier").with_overrides(
        {"model.image_size": 32, "train.batch_size": 4, "train.epochs": 2}
    )


def _first_ids(stream, n):
    return [
        tuple(b["labels"].flatten().tolist()) + tuple(b["image"][:, 0, 0, 0].tolist())
        for b in itertools.islice(stream, n)
    ]


def test_stages_split_the_step_counter(recipe, small_dataset):
    staged = recipe.with_overrides(
        {
            "train.stages": [
                {"name": "head", "trainable": ["head"], "max_steps": 3, "lr": 0.01},
                {"name": "all", "trainable": ["all"], "epochs": 1},
            ]
        }
    )
    plans = plan_stages(staged, FAMILY, small_dataset.uri, world_size=2)
    per_rank_batches = plans[1].batches_per_epoch
    expected = [(0, 3, 0.01), (3, 3 + per_rank_batches, recipe.train.lr)]
    assert [(p.start, p.end, p.lr) for p in plans] == expected
    single = plan_stages(recipe, FAMILY, small_dataset.uri, world_size=2)
    assert len(single) == 1 and single[0].end == 2 * single[0].batches_per_epoch


def test_ranks_get_disjoint_shards_and_resume_skips_exactly(recipe, small_dataset):
    plan = plan_stages(recipe, FAMILY, small_dataset.uri, world_size=2)[0]
    plan.train_set.transform = FundusTransform(32)  # augmentation is random: compare without it
    rank0 = list(_micro_batches(plan, recipe, FAMILY, 0, 2, skip=0).__next__()["labels"].shape)
    assert rank0 == [4, 8]
    a = _first_ids(_micro_batches(plan, recipe, FAMILY, 0, 2, skip=0), plan.batches_per_epoch + 2)
    b = _first_ids(_micro_batches(plan, recipe, FAMILY, 1, 2, skip=0), plan.batches_per_epoch)
    assert not set(a[: plan.batches_per_epoch]) & set(b)  # the two workers never share a batch
    resumed = _first_ids(_micro_batches(plan, recipe, FAMILY, 0, 2, skip=3), plan.batches_per_epoch - 1)
    assert resumed == a[3 : plan.batches_per_epoch + 2]  # crosses the epoch boundary identically


def test_precision_policy(recipe):
    cpu = torch.device("cpu")
    assert resolve_precision(recipe, cpu) == "fp32"
    assert resolve_precision(recipe.with_overrides({"train.mixed_precision": "bf16"}), cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision(recipe.with_overrides({"train.mixed_precision": "fp16"}), cpu)


@pytest.mark.parametrize(("native_bf16", "auto", "bf16"), [(True, "bf16", "bf16"), (False, "fp16", "fp16")])
def test_precision_on_a_gpu_follows_the_device_rule(recipe, monkeypatch, caplog, native_bf16, auto, bf16):
    """Training agrees with evaluation and serving (eyeops.devices): bf16 where the GPU has it,
    fp16 (logged) on one without (a T4). torch's CUDA queries describe the GPU; none is here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16 or including_emulation
    )
    cuda = torch.device("cuda", 0)
    with caplog.at_level("WARNING", logger="eyeops.devices"):
        got = {
            wanted: resolve_precision(recipe.with_overrides({"train.mixed_precision": wanted}), cuda)
            for wanted in ("auto", "bf16", "fp16", "no")
        }
    assert got == {"auto": auto, "bf16": bf16, "fp16": "fp16", "no": "fp32"}
    assert ("not native on cuda:0" in caplog.text) is (not native_bf16)


def test_deepspeed_config_from_recipe(recipe):
    from eyeops.train.strategies import StepPlan

    spec = {
        "zero_stage": 2,
        "offload_optimizer": True,
        "extra": {"zero_optimization": {"reduce_bucket_size": 1000}},
    }
    ds = recipe.with_overrides(
        {"train.strategy": "deepspeed", "train.grad_accum_steps": 2, "train.deepspeed": spec}
    )
    config = deepspeed_config(ds, StepPlan(lr=1e-3, total_steps=10, warmup_steps=0, precision="fp32"))
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": False,
        "reduce_bucket_size": 1000,
        "offload_optimizer": {"device": "cpu"},
    }
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.num_workers": 0}, "train.num_workers"),
        ({"train.strategy": "horovod"}, "train.strategy"),
        ({"train.lr": -1}, "train.lr"),
        ({"train.scheduler": "exp"}, "train.scheduler"),
        ({"train.stages": [{"name": "s", "max_steps": 0}]}, "train.stages.0.max_steps"),
        ({"train.deepspeed": {"zero_stage": 4}}, "train.deepspeed.zero_stage"),
        ({"train.bogus": 1}, "train.bogus"),
    ],
)
def test_bad_recipe_values_are_named_before_ray_starts(recipe, small_dataset, overrides, message):
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        train(recipe, small_dataset, overrides=overrides)
    assert not ray.is_initialized()


def test_fp16_on_cpu_is_refused_before_ray_starts(recipe, small_dataset):
    with pytest.raises(ConfigError, match="fp16"):
        train(recipe, small_dataset, overrides={"train.mixed_precision": "fp16"})


def test_lr_schedules_warm_up_then_decay():
    cosine = [lr_factor("cosine", s, warmup=2, total=10) for s in range(11)]
    assert cosine[0] < cosine[1] < cosine[2] == 1.0 and cosine[-1] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(cosine[2:]))
    assert cosine[6] == pytest.approx(0.5)
    assert [lr_factor("linear", s, warmup=0, total=4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_factor("constant", 7, warmup=2, total=10) == 1.0
