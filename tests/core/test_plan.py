"""eyeops plan: meta-device counts equal the real model's; memory arithmetic against known figures."""

from __future__ import annotations

import pytest
from eyeops_testing import llm_tiny, vlm_tiny

from eyeops.errors import ConfigError
from eyeops.families import get_family
from eyeops.models.common.stages import stages_of
from eyeops.plan import (
    GIB,
    MemoryInputs,
    PlanError,
    activation_bytes,
    count_parameters,
    hub_config,
    memory_per_worker,
    plan,
    preflight,
    require_fit,
)
from eyeops.recipes import load_recipe, parse_recipe

B7 = 7_000_000_000


# --- arithmetic ----------------------------------------------------------------------------------
def test_weights_7b_bf16_is_13_gib_and_zero3_divides_by_workers():
    full = MemoryInputs(total_params=B7, weight_bytes=2 * B7, trainable_params=B7, trainable_bytes=2 * B7)
    ddp = memory_per_worker(full)
    assert ddp.weights == pytest.approx(13.04, abs=0.01)
    assert ddp.gradients == pytest.approx(13.04, abs=0.01)
    assert ddp.optimizer == pytest.approx(26.08, abs=0.01)  # AdamW's two bf16 moments
    z3 = memory_per_worker(full.model_copy(update={"strategy": "zero3", "workers": 4}))
    assert z3.weights == pytest.approx(13.04 / 4, abs=0.01)
    assert z3.gradients == pytest.approx(13.04 / 4, abs=0.01)
    assert z3.optimizer == pytest.approx(12 * B7 / GIB / 4, abs=0.01)  # fp32 master + 2 moments
    z1 = memory_per_worker(full.model_copy(update={"strategy": "zero1", "workers": 4}))
    assert z1.weights == ddp.weights and z1.gradients == ddp.gradients  # ZeRO-1 splits optimizer only
    off = memory_per_worker(full.model_copy(update={"strategy": "zero3-offload", "workers": 4}))
    assert off.optimizer == 0 and off.host_offload == z3.optimizer


def test_lora_optimizer_state_only_for_adapters_and_qlora_half_a_byte():
    lora = MemoryInputs(
        total_params=B7 + 20_000_000,
        weight_bytes=2 * B7 + 4 * 20_000_000,
        trainable_params=20_000_000,
        trainable_bytes=4 * 20_000_000,  # peft keeps adapters in fp32
        quantizable_params=6_500_000_000,
    )
    m = memory_per_worker(lora)
    assert m.optimizer == pytest.approx(8 * 20e6 / GIB, abs=0.01)
    assert m.gradients == pytest.approx(4 * 20e6 / GIB, abs=0.01)
    q4 = memory_per_worker(lora.model_copy(update={"quantization": "4bit"}))
    expected = (2 * B7 + 80e6 - 6.5e9 * 2 + 6.5e9 * 4.127 / 8) / GIB
    assert q4.weights == pytest.approx(expected, abs=0.01)
    assert q4.weights < m.weights / 2.5
    q8 = memory_per_worker(lora.model_copy(update={"quantization": "8bit"}))
    assert q4.weights < q8.weights < m.weights


def test_gradient_checkpointing_keeps_layer_inputs_only():
    from eyeops.plan import LMGeometry

    lm = LMGeometry(hidden=4096, intermediate=14336, layers=32, heads=32, kv_dim=1024, vocab=128256)
    full = activation_bytes(lm, batch=1, seq=2048, act_bytes=2, checkpointing=False)
    ckpt = activation_bytes(lm, batch=1, seq=2048, act_bytes=2, checkpointing=True)
    logits = 2048 * 128256 * 10
    per_layer = 2048 * (6 * 4096 + 2 * 1024 + 4 * 14336) * 2
    assert full == 32 * per_layer + logits
    assert ckpt == 32 * 2048 * 4096 * 2 + per_layer + logits
    eager = activation_bytes(lm, batch=1, seq=2048, act_bytes=2, checkpointing=False, eager_attention=True)
    assert eager - full == 32 * 2 * 32 * 2048 * 2048 * 2


# --- counting on the meta device -----------------------------------------------------------------
@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return vlm_tiny.save_tiny_llm(tmp_path_factory.mktemp("plan") / "llm")


def _real_counts(recipe):
    family = get_family(recipe.family)
    model = family.build_model(recipe)
    out = {}
    for stage in stages_of(recipe):
        family.apply_stage(model, stage)
        out[stage.name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return sum(p.numel() for p in model.parameters()), out


@pytest.mark.parametrize("kind", ["vlm", "llm"])
def test_meta_count_equals_the_built_model(kind, llm_dir):
    if kind == "vlm":
        recipe = parse_recipe(vlm_tiny.tiny_recipe(llm_dir, connector="ldc"))
    else:
        recipe = parse_recipe(llm_tiny.tiny_recipe(llm_dir))
    total, trainable = _real_counts(recipe)
    count = count_parameters(recipe)
    assert count.total == total
    assert count.trainable == trainable
    assert count.lm is not None and count.lm.layers == 2


def test_healthgpt_meta_count_equals_the_built_model(llm_dir):
    recipe = parse_recipe(vlm_tiny.tiny_healthgpt_recipe(llm_dir))
    total, trainable = _real_counts(recipe)
    count = count_parameters(recipe)
    assert (count.total, count.trainable) == (total, trainable)


def test_shipped_configs_give_the_published_sizes_and_phi3_lora_lands_on_fused_linears():
    base = load_recipe("eye-llm")
    sizes = {
        "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
        "meta-llama/Llama-3.2-1B": 1_235_814_400,
        "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824,
        "microsoft/Phi-3.5-mini-instruct": 3_821_079_552,
    }
    sft_only = [{"name": "sft", "trainable": ["lora"]}]
    for hub_id, size in sizes.items():
        both = ["o_proj", "down_proj"]  # Linear names Llama and Phi-3 share
        overrides = {"model.base": hub_id, "model.lora.target_modules": both, "train.stages": sft_only}
        count = count_parameters(base.with_overrides(overrides))
        lora = count.trainable["sft"]
        assert count.total - lora == size, hub_id
    phi = base.with_overrides(
        {
            "model.base": "microsoft/Phi-3.5-mini-instruct",
            "model.lora.target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
            "train.stages": sft_only,
        }
    )
    per_layer = 16 * ((3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072))
    assert count_parameters(phi).trainable["sft"] == 32 * per_layer


# --- the fit check -------------------------------------------------------------------------------
def _gpu_llm(**extra):
    return load_recipe("eye-llm").with_overrides(
        {
            "model.base": "meta-llama/Llama-3.1-8B-Instruct",
            "model.dtype": "bfloat16",
            "model.max_seq_len": 1024,
            "train.use_gpu": True,
            "train.num_workers": 1,
            "train.batch_size": 1,
            "train.stages": [{"name": "sft", "trainable": ["lora"]}],
            **extra,
        }
    )


def test_refuses_a_plan_that_cannot_fit_and_accepts_one_that_does():
    small = _gpu_llm(**{"train.accelerator_type": "L4"})
    with pytest.raises(PlanError, match=r"'L4' \(22.5 GiB per GPU\): stage 'sft' needs \d+\.\d+ GiB"):
        preflight(small)
    result = plan(_gpu_llm(**{"train.accelerator_type": "H100"}))
    assert result.fits is True and result.gpu_memory_gib == 79.6
    assert require_fit(result) is result
    # The recipe's own override wins over the table.
    assert plan(_gpu_llm(**{"train.accelerator_type": "L4", "train.gpu_memory_gib": 48})).fits is True


def test_precise_errors_for_unknown_gpu_and_unavailable_config():
    with pytest.raises(ConfigError, match=r"train.accelerator_type 'B300': unknown GPU memory"):
        preflight(_gpu_llm(**{"train.accelerator_type": "B300"}))
    with pytest.raises(ConfigError, match=r"no config for 'THUDM/chatglm-6b' offline.*--config"):
        hub_config("THUDM/chatglm-6b")
    assert preflight(load_recipe("fundus-classifier")) is None  # CPU recipe: nothing built


def test_cli_plan_and_dry_run_exit_nonzero_when_it_cannot_fit(llm_dir):
    from typer.testing import CliRunner

    from eyeops.cli import app

    runner = CliRunner()
    sets = [
        "--set",
        "model.base=meta-llama/Llama-3.2-1B",
        "--set",
        "train.use_gpu=true",
        "--set",
        "train.accelerator_type=T4",
        "--set",
        "model.max_seq_len=4096",
        "--set",
        "train.num_workers=1",
    ]
    res = runner.invoke(app, ["plan", "eye-llm", *sets])
    assert isinstance(res.exception, PlanError), res.output
    assert "peak GiB per worker by strategy" in res.output and "does NOT fit" in res.output
    res = runner.invoke(app, ["pipeline", "run", "eye-llm", "--dry-run", *sets])
    assert isinstance(res.exception, PlanError)
    ok = runner.invoke(app, ["plan", "eye-llm", *sets, "--gpu-memory-gib", "200"])
    assert ok.exit_code == 0, ok.output
    assert "fits (peak" in ok.output


@pytest.mark.parametrize(
    "name",
    [
        "eyecaregpt-3-8b",
        "eyecaregpt-7b",
        "ophtimus-1b",
        "ophtimus-3b",
        "ophtimus-8b",
        "healthgpt-m3",
        "healthgpt-l14",
    ],
)
def test_every_shipped_gpu_recipe_fits_its_own_accelerator(name):
    # A production recipe its own pre-flight refuses would fail at the train step of every run
    # (healthgpt-l14 did: gradient checkpointing off at batch 4 x 3072 needed 110 GiB on an H100).
    result = plan(load_recipe(name))
    assert result.gpu_memory_gib is not None and result.fits is True, (name, result.peak.total)
