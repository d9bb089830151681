"""Architecture-exact CPU tests of the vision production recipes (issue 16 items 2, 3, 6).

EyecareGPT-3-8B (SigLIP-so400m + Phi-3.5-mini), EyecareGPT-7B (Qwen2.5-VL, native backbone),
HealthGPT-M3 (CLIP-L/14 + Phi-3-mini, taming's GumbelVQ f=8 layout from vq.checkpoint; trained on
synthetic generation pairs, every generation task evaluated and served through the openai client)
and HealthGPT-L14 (CLIP-L/14 + phi-4): each shipped recipe,
with its hub ids swapped for tiny local checkpoints of the same ``model_type`` and module names,
trains two steps per stage through the real Ray Train loop, is reloaded, generates and answers one
HTTP chat request; the saved adapters are counted per decoder layer against what the seed adapts.
"""

from __future__ import annotations

import base64
import io

import pytest
from eyeops_testing.production import (
    API_KEY,
    chat_request,
    gateway,
    image_content,
    run_through_platform,
    tiny_hub_dir,
    tiny_variant,
)
from eyeops_testing.production_vision import (
    TOWER_SIDE,
    adapters_per_layer,
    tiny_qwen25vl_dir,
    tiny_tower_dir,
)
from eyeops_testing.taming_layout import tiny_gumbel_vq
from PIL import Image
from safetensors.torch import load_file

from eyeops.errors import ConfigError
from eyeops.families import get_family
from eyeops.recipes import DataSpec, load_recipe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHI3_LINEARS = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
QWEN_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Local stand-ins for the hub ids: the same architectures at tiny size."""
    root = tmp_path_factory.mktemp("hub")
    return {
        "phi3": tiny_hub_dir(root, "phi3"),
        "siglip": tiny_tower_dir(root, "siglip", layers=27),  # so400m's depth: the LDC reads 1..26
        "clip": tiny_tower_dir(root, "clip", layers=24),  # ViT-L/14's depth
        "qwen2_5_vl": tiny_qwen25vl_dir(root),
        "vqgan": tiny_gumbel_vq(root),  # taming's GumbelVQ f=8 layout, narrow: loaded by vq.checkpoint
    }


def _synthetic(tmp_path_factory, name: str, n: int, tasks: list[str], test_fraction: float):
    from eyeops.data import prepare

    spec = DataSpec(
        source="synthetic", n=n, image_size=64, tasks=tasks, val_fraction=0.0, test_fraction=test_fraction
    )
    return prepare(spec, str(tmp_path_factory.mktemp(name) / "ds"), name=name)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _synthetic(tmp_path_factory, "vision-production", 8, ["closed_qa", "open_qa", "report"], 0.2)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _check_served(run):
    assert isinstance(run.generated.text, str) and run.generated.completion_tokens >= 1
    assert run.served["choices"][0]["message"]["role"] == "assistant"


def test_eyecaregpt_3_8b(hub, dataset, ray_session, tmp_path):
    recipe = tiny_variant(
        load_recipe("eyecaregpt-3-8b"),
        llm=hub["phi3"],
        vision__name=hub["siglip"],
        vision__image_size=TOWER_SIDE,
        # the tiny random tower's OOD screen rightly flags the retina photograph after training on
        # synthetic fundus images (tests/serve/test_ood.py); here the answer itself is under test
        ood__enabled=False,
    )
    assert recipe.model.resolution.mode == "anyres" and recipe.model.connector.type == "ldc"
    run = run_through_platform(recipe, dataset, tmp_path)
    keys = list(load_file(str(run.model_dir / "vlm.safetensors")))
    # LoRA on all four of Phi-3's fused Linears in every layer; never on the tower.
    assert adapters_per_layer(keys) == {0: PHI3_LINEARS, 1: PHI3_LINEARS}
    assert not any("lora_" in k for k in keys if k.startswith("tower."))
    assert any(k.startswith("tower.model.encoder.layers.") for k in keys)  # vision_last_blocks saved
    assert type(run.model.model.tower.model).__name__ == "SiglipVisionModel"
    assert run.model.model.lm.config.model_type == "phi3"
    _check_served(run)
    # The default Llama target list matches almost nothing in Phi-3: an error naming its Linears.
    wrong = tiny_variant(recipe, lora__target_modules=["q_proj", "k_proj", "v_proj"])
    with pytest.raises(ConfigError, match=r"target_modules.*qkv_proj"):
        get_family("vlm").build_model(wrong)


def test_eyecaregpt_7b_native_qwen25vl(hub, dataset, ray_session, tmp_path):
    recipe = tiny_variant(load_recipe("eyecaregpt-7b"), llm=hub["qwen2_5_vl"])
    run = run_through_platform(recipe, dataset, tmp_path)
    keys = list(load_file(str(run.model_dir / "vlm.safetensors")))
    assert adapters_per_layer(keys) == {0: QWEN_LINEARS, 1: QWEN_LINEARS}
    assert not any("lora_" in k for k in keys if ".visual." in k)  # the ViT's MLP names never adapted
    assert any(".visual.merger." in k for k in keys)  # the 'connector' group is the merger
    assert run.model.lm.config.model_type == "qwen2_5_vl"
    _check_served(run)
    # Native dynamic resolution: a wide OCT B-scan keeps its shape in the patch grid.
    oct_scan = Image.new("RGB", (1024, 496), (5, 5, 5))
    _, grids = run.model.processor.pixels([oct_scan], "oct")
    ((t, h, w),) = grids
    assert t == 1 and w > 2 * h


def _healthgpt(name, hub):
    return tiny_variant(
        load_recipe(name),
        llm=hub["phi3"],
        vision__name=hub["clip"],
        vision__image_size=TOWER_SIDE,
        vq=hub["vqgan"],
    )


def _check_hlora(state, comprehension_r):
    for task, rank in (("comprehension", comprehension_r), ("generation", 256)):
        assert adapters_per_layer(list(state), task) == {0: PHI3_LINEARS, 1: PHI3_LINEARS}
        a = next(v for k, v in state.items() if f".lora_A.{task}." in k)
        router = next(v for k, v in state.items() if f".lora_router.{task}." in k)
        assert a.shape[0] == rank and router.shape[0] == 4  # the seed's rank, 4 experts


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Synthetic fundus photographs with every generation task's pair (data.tasks generate_image)."""
    return _synthetic(tmp_path_factory, "healthgpt-pairs", 4, ["closed_qa", "report", "generate_image"], 0.45)


def test_healthgpt_m3(hub, pairs, ray_session, tmp_path):
    """Train on synthetic pairs, evaluate every generation task, serve each through openai."""
    from eyeops.data.image_pairs import GENERATION_TASKS
    from eyeops.evaluate import evaluate

    recipe = _healthgpt("healthgpt-m3", hub)
    assert [s.name for s in recipe.train.stages] == ["align", "plugin", "instruct"]
    assert recipe.model.vq.quantizer == "gumbel" and recipe.model.vq.ch_mult == [1, 1, 2, 4]
    run = run_through_platform(recipe, pairs, tmp_path)
    _check_hlora(load_file(str(run.model_dir / "healthgpt.safetensors")), 64)
    assert type(run.model.model.tower.model).__name__ == "CLIPVisionModel"
    _check_served(run)

    report = evaluate(recipe, run.checkpoint, pairs, out_dir=str(tmp_path / "eval"))
    for task in GENERATION_TASKS:  # every task scored on the whole test split
        assert report.metrics[f"generation/{task}/n"] >= 1
        assert 0 < report.metrics[f"generation/{task}/psnr_db"] < 100
        assert -1 <= report.metrics[f"generation/{task}/ssim"] <= 1
        assert report.metrics[f"generation/{task}/mse"] > 0
    grid = Image.open(report.artifacts["generation_grid"])
    assert grid.size[0] == 3 * 32  # input | target | output, up to 2 rows per task
    assert len(GENERATION_TASKS) * 32 <= grid.size[1] <= 2 * len(GENERATION_TASKS) * 32

    from openai import OpenAI

    retina = chat_request(True).images[0]
    with gateway(run.model_dir) as (url, predictor):
        client = OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        for task in (*GENERATION_TASKS, "generation"):
            text = "Generate a fundus photograph of a left eye with drusen."
            content = text if task == "text_to_image" else image_content(retina, text)
            answer = client.chat.completions.create(
                model=f"{predictor.name}:{task}", messages=[{"role": "user", "content": content}]
            )
            parts = answer.choices[0].message.content
            assert [p["type"] for p in parts] == ["text", "image_url"], task
            png = Image.open(io.BytesIO(base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1])))
            assert png.format == "PNG" and png.size == (32, 32)


def test_healthgpt_l14_builds_with_its_own_comprehension_rank(hub):
    """phi-4 is model_type phi3: the M3 run above covers the loop; here the L14 shape (r32/α64)."""
    recipe = _healthgpt("healthgpt-l14", hub)
    model = get_family("healthgpt").build_model(recipe)
    _check_hlora({k: v for k, v in model.state_dict().items() if "lora_" in k}, 32)
    layer = next(m for n, m in model.lm.named_modules() if n.endswith("layers.0.self_attn.qkv_proj"))
    assert layer.scaling == {"comprehension": 64 / 32 * 4, "generation": 512 / 256 * 4}


def test_backbone_is_checked_at_recipe_validation(hub):
    """A backbone the vlm family cannot load fails when the recipe is read, naming the fix."""
    recipe = load_recipe("eyecaregpt-3-8b")
    with pytest.raises(ConfigError, match=r"'qwen2_5_vl' image-text-to-text.*model\.backbone: native"):
        tiny_variant(recipe, llm=hub["qwen2_5_vl"])
    native = load_recipe("eyecaregpt-7b")
    with pytest.raises(ConfigError, match=r"backbone 'native' loads qwen2_5_vl.*'phi3' model"):
        tiny_variant(native, llm=hub["phi3"])
    data = native.model_dump(mode="json", exclude_unset=True)
    data["model"]["vision"] = {"kind": "siglip", "name": "google/siglip-so400m-patch14-384"}
    from eyeops.recipes import parse_recipe

    with pytest.raises(ConfigError, match=r"model\.vision does not apply to backbone 'native'"):
        parse_recipe(data)


def test_native_backbone_honours_the_memory_fields(hub):
    """EyecareGPT-7B asks for gradient checkpointing: the Qwen2.5-VL tower and LM both get it; the
    attention kernel is the recipe's; QLoRA goes through the shared checks instead of being ignored."""
    recipe = tiny_variant(load_recipe("eyecaregpt-7b"), llm=hub["qwen2_5_vl"])
    assert recipe.model.gradient_checkpointing
    family = get_family("vlm")
    base = family.build_model(recipe).base
    assert base.model.visual.gradient_checkpointing and base.model.language_model.gradient_checkpointing
    assert base.config.text_config._attn_implementation == "sdpa"
    eager = family.build_model(
        recipe.with_overrides({"model.attn_implementation": "eager", "model.gradient_checkpointing": False})
    ).base
    assert eager.config.text_config._attn_implementation == "eager"
    assert not eager.model.language_model.gradient_checkpointing
    for field, value, expected in [
        ("quantization", "4bit", r"model\.quantization='4bit' \(QLoRA\) needs"),
        ("attn_implementation", "flash_attention_2", r"'flash_attention_2' needs the flash-attn package"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            family.build_model(recipe.with_overrides({f"model.{field}": value}))
