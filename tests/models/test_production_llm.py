"""The language-model production recipes, architecture-exact on CPU, and the memory features.

ophtimus-8b (Llama-3.1-8B: pretrain then LoRA SFT), ophtimus-1b/3b (Llama-3.2-Instruct, LoRA SFT)
and ophglm-6b run through the real platform (:mod:`_production`: Ray Train loop, family reload,
generate, one request through the gateway) on tiny ``llama`` models saved like hub checkpoints.
ChatGLM-6B cannot be built offline (its modeling code lives in its hub repo), so ophglm-6b runs
with a tiny Llama standing in for it — and with LoRA on Llama's names, because the recipe's
``query_key_value`` matches no Linear of a Llama, which is exactly the error tested below. What
ChatGLM needs, ``trust_remote_code``, is tested as a switch on a local model with its own code.
Also here: LoRA targets that match nothing (Phi-3's fused projections) are errors, gradient
checkpointing and the attention kernel reach the HF module, QLoRA refuses precisely on CPU for
every LLM family, and the gated-repo token reaches ``from_pretrained``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from eyeops_testing.llm_tiny import text_samples
from eyeops_testing.production import (
    chat_request,
    lora_per_layer,
    run_many,
    serve_one,
    tiny_hub_dir,
    tiny_variant,
)
from PIL import Image

from eyeops.data.schema import Manifest, Message, Sample
from eyeops.errors import ConfigError
from eyeops.families import get_family
from eyeops.models.common.hub import from_pretrained_kwargs, load_tokenizer
from eyeops.recipes import load_recipe, parse_recipe
from eyeops.refs import DatasetRef

LLAMA_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
PHI3_LINEAR = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    """Tiny stand-ins of the production checkpoints, saved as from_pretrained reads them."""
    root = tmp_path_factory.mktemp("hub")
    return {
        "llama-3.1": tiny_hub_dir(root, "llama"),  # Llama-3.1-8B: untied embeddings
        "llama-3.2": tiny_hub_dir(root, "llama", tie_word_embeddings=True),  # 1B/3B tie them
        "phi3": tiny_hub_dir(root, "phi3"),
        "bert": tiny_hub_dir(root, "bert"),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DatasetRef:
    """One prepared dataset for every recipe: the tiny KB's text tasks + fundus image tasks."""
    from skimage import data as skdata

    from eyeops.data.store import write_samples

    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    retina = Image.fromarray(skdata.retina()).resize((64, 64))
    samples = list(text_samples())
    for i in range(4):
        retina.rotate(90 * i).save(root / "images" / f"{i}.png")
        common = {
            "patient_id": f"p{i}",
            "modality": "fundus",
            "images": [f"images/{i}.png"],
            "split": "train" if i < 3 else "test",
        }
        samples.append(
            Sample(id=f"c{i}", task="classify", labels=[i % 2, 0, 1 - i % 2, 0, 0, 0, 0, 0], **common)
        )
        question = Message(role="user", content="<image>\nIs there glaucoma? Answer yes or no.")
        samples.append(
            Sample(
                id=f"q{i}",
                task="closed_qa",
                messages=[question],
                answer="yes" if i % 2 else "no",
                options=["yes", "no"],
                **common,
            )
        )
    write_samples(samples, root)
    (root / "manifest.json").write_text(Manifest(name="production-tiny").model_dump_json())
    return DatasetRef(uri=str(root), fingerprint="production-tiny")


def _check_run(run, recipe) -> None:
    assert run.checkpoint.step == 2 * len(recipe.train.stages)
    assert isinstance(run.generated.text, str) and run.generated.completion_tokens >= 1
    choice = run.served["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    assert run.served["usage"]["completion_tokens"] >= 1


# --- the production recipes through the platform -------------------------------------------------
OPHGLM_TINY = {
    "image_encoder__backbone": "convnext_atto",  # ConvNeXt's module names, tiny width and depth
    "image_encoder__weights": "none",
    "image_encoder__image_size": 64,
    "trust_remote_code": False,  # the stand-in is plain transformers code
    "prefix_tokens": 2,
    "fusion_hidden": 32,
}


def _ophglm_tiny(hub, **fields):
    return tiny_variant(
        load_recipe("ophglm-6b"), llm=hub["llama-3.1"], text_encoder=hub["bert"], **OPHGLM_TINY, **fields
    )


@pytest.fixture(scope="module")
def runs(hub, dataset, ray_session, tmp_path_factory):
    """ophtimus-8b (pretrain + LoRA SFT) and ophglm-6b (three steps) through the real platform."""
    recipes = {
        "ophtimus-8b": tiny_variant(load_recipe("ophtimus-8b"), base=hub["llama-3.1"]),
        # ChatGLM fuses attention into query_key_value; the Llama stand-in names it q/k/v_proj.
        "ophglm-6b": _ophglm_tiny(hub, lora__target_modules=["q_proj", "k_proj", "v_proj"]),
    }
    done = run_many(list(recipes.values()), dataset, tmp_path_factory.mktemp("runs"))
    return {name: (recipes[name], run) for name, run in zip(recipes, done, strict=True)}


def test_ophtimus_8b_pretrains_then_sfts_on_llama_3_1(hub, runs):
    production = load_recipe("ophtimus-8b")
    assert production.model.base == "meta-llama/Llama-3.1-8B" and production.train.use_gpu
    assert production.model.dtype == "bfloat16" and production.model.gradient_checkpointing
    assert production.train.deepspeed.zero_stage == 3 and production.model.loss_on == "final_answer"
    recipe, run = runs["ophtimus-8b"]
    assert [s.trainable for s in recipe.train.stages] == [["base"], ["lora"]]
    model = get_family("llm").build_model(recipe)
    # LoRA on every Linear the seed adapts, in every decoder layer (all seven projections).
    assert lora_per_layer(model) == {0: LLAMA_LINEAR, 1: LLAMA_LINEAR}
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    _check_run(run, recipe)
    assert json.loads((run.model_dir / "llm.json").read_text())["format"] == "base+adapter"


@pytest.mark.parametrize("name", ["ophtimus-1b", "ophtimus-3b"])
def test_ophtimus_1b_3b_sft_llama_3_2_instruct(name, hub, dataset, runs, tmp_path):
    """One LoRA SFT stage on Llama-3.2 (tied embeddings): the loop's part of it is ophtimus-8b's
    second stage, run above; here the recipe is built, stepped, saved, reloaded and served."""
    production = load_recipe(name)
    assert production.model.base == f"meta-llama/Llama-3.2-{name[-2:].upper()}-Instruct"
    assert [s.trainable for s in production.train.stages] == [["lora"]]
    recipe = tiny_variant(production, base=hub["llama-3.2"])
    family = get_family("llm")
    model = family.build_model(recipe)
    assert lora_per_layer(model) == {0: LLAMA_LINEAR, 1: LLAMA_LINEAR}
    assert model.get_base_model().config.tie_word_embeddings
    family.apply_stage(model, recipe.train.stages[0])
    train_set = family.datasets(recipe, Path(dataset.uri), recipe.train.stages[0])["train"]
    batch = family.collate_fn(recipe)([train_set[0], train_set[1]])
    family.loss(model, batch).backward()
    family.save(model, recipe, tmp_path / "model")
    reloaded = family.load(tmp_path / "model")
    assert reloaded.generate([chat_request(False)])[0].completion_tokens >= 1
    assert serve_one(tmp_path / "model", False)["choices"][0]["message"]["content"] is not None


def test_ophglm_6b_runs_with_a_llama_standing_in_for_chatglm(hub, runs):
    """ChatGLM-6B needs its hub repo's code: a tiny Llama stands in; BERT is a tiny ``bert``."""
    production = load_recipe("ophglm-6b")
    assert production.model.llm == "THUDM/chatglm-6b" and production.model.trust_remote_code
    assert production.model.text_encoder == "google-bert/bert-base-uncased"
    assert production.model.image_encoder.backbone == "convnext_base"
    with pytest.raises(ConfigError, match=r"\['query_key_value'\] match no Linear layer"):
        get_family("ophglm").build_model(_ophglm_tiny(hub))
    recipe, run = runs["ophglm-6b"]
    model = get_family("ophglm").build_model(recipe)
    assert lora_per_layer(model.lm) == {0: {"q_proj", "k_proj", "v_proj"}, 1: {"q_proj", "k_proj", "v_proj"}}
    assert type(model.bert).__name__ == "BertModel"
    _check_run(run, recipe)


# --- LoRA targets --------------------------------------------------------------------------------
def _llm_recipe(base: Path, **model) -> object:
    return parse_recipe(
        {
            "name": "t",
            "model": {"family": "llm", "base": str(base), **model},
            "train": {"stages": [{"name": "sft", "trainable": ["lora"], "max_steps": 1}]},
            "evaluate": {"primary_metric": "mcq/accuracy"},
            "register": {"model_name": "t"},
        }
    )


def test_lora_targets_that_match_nothing_are_errors_on_phi3(hub):
    family = get_family("llm")
    with pytest.raises(ConfigError) as err:
        family.build_model(_llm_recipe(hub["phi3"]))  # default [q_proj, k_proj, v_proj, o_proj]
    message = str(err.value)
    assert "['q_proj', 'k_proj', 'v_proj'] match no Linear layer" in message
    assert all(name in message for name in PHI3_LINEAR)  # names what the model has
    fused = {"target_modules": sorted(PHI3_LINEAR)}
    assert lora_per_layer(family.build_model(_llm_recipe(hub["phi3"], lora=fused))) == {
        0: PHI3_LINEAR,
        1: PHI3_LINEAR,
    }
    every = family.build_model(_llm_recipe(hub["phi3"], lora={"target_modules": ["all-linear"]}))
    assert lora_per_layer(every) == {0: PHI3_LINEAR, 1: PHI3_LINEAR}
    assert not any("lm_head.lora_A" in n for n, _ in every.named_modules())
    with pytest.raises(ConfigError, match="'all-linear' must be the only entry"):
        family.build_model(_llm_recipe(hub["phi3"], lora={"target_modules": ["all-linear", "o_proj"]}))


# --- memory features -----------------------------------------------------------------------------
def test_gradient_checkpointing_and_attention_kernel_reach_the_hf_module(hub):
    family = get_family("llm")
    plain = family.build_model(_llm_recipe(hub["llama-3.2"])).get_base_model()
    assert not plain.is_activation_checkpointing and plain.config._attn_implementation == "sdpa"
    model = family.build_model(
        _llm_recipe(hub["llama-3.2"], gradient_checkpointing=True, attn_implementation="eager")
    ).get_base_model()
    assert model.config._attn_implementation == "eager"
    # both decoder layers recompute their activations in backward
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, True]
    ids = torch.arange(3, 19).reshape(2, 8)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()  # the checkpointed backward reaches LoRA
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n
    )
    with pytest.raises(ConfigError, match=r"flash_attention_2.*needs the flash-attn package"):
        family.build_model(_llm_recipe(hub["llama-3.2"], attn_implementation="flash_attention_2"))


def test_qlora_is_accepted_by_every_llm_family_and_refused_precisely_on_cpu(hub):
    from eyeops_testing.vlm_tiny import tiny_recipe as tiny_vlm

    vlm = parse_recipe(tiny_vlm(hub["llama-3.2"], quantization="4bit", lora={"target_modules": ["q_proj"]}))
    assert vlm.model.quantization == "4bit"  # the shared LanguageModelSpec field (eye-vlm refused it)
    with pytest.raises(ConfigError, match=r"quantization='4bit' \(QLoRA\) needs the bitsandbytes package"):
        get_family("vlm").build_model(vlm)
    kwargs = from_pretrained_kwargs(
        dtype="bfloat16",
        revision=None,
        quantization="4bit",
        device=None,
        attn_implementation="sdpa",
        trust_remote_code=False,
    )
    q = kwargs["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert kwargs["device_map"] == {"": "cuda"}
    assert from_pretrained_kwargs(
        dtype="float32",
        revision=None,
        quantization="8bit",
        device="cuda:1",
        attn_implementation="sdpa",
        trust_remote_code=False,
    )["quantization_config"].load_in_8bit


def test_the_gated_repo_token_comes_from_the_env_var_the_settings_name(monkeypatch):
    from eyeops.config import PlatformSettings, get_settings

    monkeypatch.setenv("EYEOPS_HF_TOKEN_ENV", "LLAMA_ACCESS")
    monkeypatch.setenv("LLAMA_ACCESS", "hf_secret_value")
    get_settings.cache_clear()
    kwargs = from_pretrained_kwargs(
        dtype="float32",
        revision=None,
        quantization="none",
        device=None,
        attn_implementation="sdpa",
        trust_remote_code=False,
    )
    assert kwargs["token"] == "hf_secret_value"
    settings = get_settings()
    assert settings.hf_token_env == "LLAMA_ACCESS" and "hf_secret_value" not in settings.model_dump_json()
    with pytest.raises(Exception, match="hf_token_env"):
        PlatformSettings(hf_token_env="not a name")
    get_settings.cache_clear()


# --- trust_remote_code ---------------------------------------------------------------------------
REMOTE_CONFIG = """from transformers import LlamaConfig


class TinyGLMConfig(LlamaConfig):
    model_type = "tinyglm"
"""
REMOTE_MODEL = """from transformers import LlamaForCausalLM

from .configuration_tinyglm import TinyGLMConfig


class TinyGLMForCausalLM(LlamaForCausalLM):
    config_class = TinyGLMConfig
"""


@pytest.fixture
def remote_code_dir(hub, tmp_path) -> Path:
    """A local model whose architecture ships only as code in its directory (like ChatGLM's repo)."""
    where = shutil.copytree(hub["llama-3.2"], tmp_path / "tinyglm")
    (where / "configuration_tinyglm.py").write_text(REMOTE_CONFIG)
    (where / "modeling_tinyglm.py").write_text(REMOTE_MODEL)
    config = json.loads((where / "config.json").read_text())
    config |= {
        "model_type": "tinyglm",
        "architectures": ["TinyGLMForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_tinyglm.TinyGLMConfig",
            "AutoModelForCausalLM": "modeling_tinyglm.TinyGLMForCausalLM",
        },
    }
    (where / "config.json").write_text(json.dumps(config))
    return where


def test_remote_code_runs_only_with_the_recipe_switch(remote_code_dir):
    family = get_family("llm")
    with pytest.raises(ConfigError, match=r"model_type 'tinyglm'.*set model\.trust_remote_code: true"):
        family.build_model(_llm_recipe(remote_code_dir, lora={"target_modules": ["q_proj"]}))
    with pytest.raises(ConfigError, match="trust_remote_code: true"):
        load_tokenizer(str(remote_code_dir))
    model = family.build_model(
        _llm_recipe(remote_code_dir, trust_remote_code=True, lora={"target_modules": ["q_proj"]})
    )
    assert type(model.get_base_model()).__name__ == "TinyGLMForCausalLM"  # the repo's own class
    assert load_tokenizer(str(remote_code_dir), trust_remote_code=True).eos_token


def test_ophglm_text_encoder_accepts_hub_ids_and_local_dirs(hub):
    from eyeops.models.ophglm.modeling import text_encoder_ref

    assert text_encoder_ref("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    assert text_encoder_ref("bert-base-uncased") == "bert-base-uncased"
    assert text_encoder_ref(str(hub["bert"])) == str(hub["bert"])
    with pytest.raises(
        ConfigError, match="not 'packaged:all-minilm-l6-v2', an existing directory or a hub id"
    ):
        text_encoder_ref("a/b/c")


def test_trust_remote_code_is_recorded_in_the_lineage_tags():
    from eyeops.refs import CheckpointRef
    from eyeops.registry.mlflow_registry import lineage_tags

    checkpoint = CheckpointRef(
        uri="/x", fingerprint="f", recipe_name="r", family="ophglm", run_name="run", step=1
    )
    tags = {
        name: lineage_tags(load_recipe(name), checkpoint, None, {"git_commit": "abc"})[
            "eyeops.trust_remote_code"
        ]
        for name in ("ophglm-6b", "ophglm", "ophtimus-8b", "fundus-classifier")
    }
    assert tags == {
        "ophglm-6b": "true",
        "ophglm": "false",
        "ophtimus-8b": "false",
        "fundus-classifier": "false",
    }
