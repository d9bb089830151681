"""The merged Hugging Face export of an eye-llm model answers like eyeops' own predictor.

A tiny Llama gets a LoRA adapter taught one answer (so the adapter is far from zero and the answer is
visible text), is saved in the family's formats, exported, and loaded back with plain transformers
(``AutoModelForCausalLM`` + ``AutoTokenizer`` + ``apply_chat_template``, no eyeops code).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eyeops_testing.llm_tiny import save_tiny_llm, teach_answer, tiny_recipe

from eyeops.errors import ConfigError, NotFoundError
from eyeops.inference import GenerationRequest, Message
from eyeops.models.llm.export import EXPORT_META, chat_template_with_system, export_merged

# Quotes, a newline and Jinja syntax: the prompt must reach the template as text.
SYSTEM = 'You are "Ophtimus", an eye-care assistant.\nAnswer briefly {{ not a tag }}.'
QUESTION = "What is glaucoma?"
ANSWER = "Damage to the optic nerve."
MAX_NEW = 12
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _models(root: Path) -> dict[str, Path]:
    """The same taught adapter saved as 'adapter' (base ref + adapter) and 'merged'."""
    import torch

    from eyeops.models.common.hub import load_tokenizer
    from eyeops.models.llm.family import FAMILY
    from eyeops.recipes import parse_recipe

    torch.manual_seed(0)  # the tiny base and the adapter's A matrices: the same model every run
    base = save_tiny_llm(root / "base")
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": list(TARGETS)}
    stages = [{"name": "sft", "trainable": ["lora"], "max_steps": 1}]
    recipes = {
        fmt: parse_recipe(
            tiny_recipe(base, stages=stages, lora=lora, system_prompt=SYSTEM, merge_on_export=merge)
        )
        for fmt, merge in (("adapter", False), ("merged", True))
    }
    model = FAMILY.build_model(recipes["adapter"])
    FAMILY.apply_stage(model, recipes["adapter"].train.stages[0])
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    teach_answer(model, load_tokenizer(str(base)), conversation, ANSWER)
    for fmt, recipe in recipes.items():
        FAMILY.save(model, recipe, root / fmt)
    return {fmt: root / fmt for fmt in recipes}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    return _models(Path(tmp_path_factory.mktemp("llm-export")))


def _eyeops_answer(model_dir: Path) -> str:
    from eyeops.serve.predictor import load_predictor

    predictor = load_predictor(model_dir)
    request = GenerationRequest(messages=[Message(role="user", content=QUESTION)], max_new_tokens=MAX_NEW)
    return predictor.generate([request])[0].text


def _plain_answer(export_dir: Path) -> tuple[str, str]:
    """Greedy answer and rendered prompt from transformers alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    new = out[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), prompt


@pytest.mark.parametrize("fmt", ["adapter", "merged"])
def test_export_answers_like_the_eyeops_predictor(saved, tmp_path, fmt):
    from safetensors import safe_open

    export = export_merged(saved[fmt], tmp_path / "hf")
    answer, prompt = _plain_answer(export)
    assert answer == _eyeops_answer(saved[fmt])
    assert "optic nerve" in answer, answer  # the adapter's lesson, not a random model's noise
    # The recipe's system prompt is in the template a plain client applies, escaped as text.
    assert SYSTEM in prompt and prompt.index(SYSTEM) < prompt.index(QUESTION)
    # Weights are plain safetensors with the adapter folded in: no LoRA tensors remain.
    with safe_open(str(export / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k]
    meta = json.loads((export / EXPORT_META).read_text())
    assert meta["system_prompt"] == SYSTEM and meta["architectures"] == ["LlamaForCausalLM"]


def test_the_adapter_is_folded_in_not_dropped(saved, tmp_path):
    """The exported weights differ from the base by the adapter; the base alone answers otherwise."""
    from safetensors.torch import load_file

    export = export_merged(saved["adapter"], tmp_path / "hf")
    merged = load_file(str(export / "model.safetensors"))
    base = load_file(str(saved["adapter"].parent / "base" / "model.safetensors"))
    adapted = [k for k in base if any(f".{t}." in k for t in TARGETS)]
    assert len(adapted) == 2 * len(TARGETS)  # every target of both layers
    assert all(not merged[k].equal(base[k]) for k in adapted)
    assert all(merged[k].equal(base[k]) for k in base if k not in adapted)


def test_a_conversation_with_its_own_system_turn_keeps_it():
    from eyeops_testing.llm_tiny import CHATML
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
    tokenizer.chat_template = chat_template_with_system(CHATML, SYSTEM)
    own = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}], tokenize=False
    )
    assert "Be terse." in own and SYSTEM not in own
    assert chat_template_with_system(CHATML, None) == CHATML


def test_export_refuses_bad_destinations_and_sources(saved, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        export_merged(saved["merged"], busy)
    with pytest.raises(NotFoundError, match="no such model directory"):
        export_merged(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(NotFoundError, match="not an llm model directory"):
        export_merged(busy, tmp_path / "out")


def test_registration_logs_the_export_and_the_cli_writes_it(saved, tmp_path, monkeypatch):
    """``register`` logs ``hf_model/`` beside the pyfunc; ``serving_uri`` publishes it once where a
    model server can read it; ``eyeops export`` writes the same checkpoint from the registry."""
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from eyeops.cli import app
    from eyeops.config import get_settings
    from eyeops.evaluate.runner import checkpoint_ref
    from eyeops.models.llm.export import HF_ARTIFACT, serving_uri
    from eyeops.recipes import load_saved_recipe
    from eyeops.refs import EvalReport
    from eyeops.registry import register

    monkeypatch.setenv("EYEOPS_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    get_settings.cache_clear()
    recipe = load_saved_recipe(saved["adapter"] / "recipe.yaml")
    report = EvalReport(
        uri=str(tmp_path / "no-report"),
        split="test",
        num_samples=4,
        metrics={"mcq/accuracy": 0.5},
        primary_metric="mcq/accuracy",
    )
    version = register(recipe, checkpoint_ref(str(saved["adapter"]), recipe), report)
    logged = {a.path for a in MlflowClient().list_artifacts(version.run_id, HF_ARTIFACT)}
    assert {f"{HF_ARTIFACT}/model.safetensors", f"{HF_ARTIFACT}/{EXPORT_META}"} <= logged

    uri = serving_uri(version)  # a local artifact store: copied under the storage root
    assert uri == get_settings().path("exports", "tiny-llm", str(version.version))
    assert _plain_answer(Path(uri))[0] == _eyeops_answer(saved["adapter"])
    (Path(uri) / "marker").write_text("kept")
    assert serving_uri(version) == uri and (Path(uri) / "marker").is_file()  # published once

    runner = CliRunner()
    result = runner.invoke(app, ["export", "tiny-llm@champion", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "models:/tiny-llm/1" in result.output
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (
        Path(uri) / "model.safetensors"
    ).read_bytes()
    again = runner.invoke(app, ["export", "tiny-llm", str(tmp_path / "cli")])
    assert isinstance(again.exception, ConfigError)
