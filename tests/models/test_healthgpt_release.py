"""HealthGPT's released weights import key for key: files written in the seed's published layout
(tests/eyeops_testing/healthgpt_release.py) for a tiny HealthGPT-M3 (Phi-3 + CLIP + GumbelVQ
layout) map onto our adapters, routers, connectors and vocabulary rows; misfits are named; the CLI
saves and registers the result in MLflow like a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from eyeops_testing.healthgpt_release import fusion_state, hlora_state, vocab_state
from eyeops_testing.production import tiny_hub_dir, tiny_variant
from eyeops_testing.production_vision import TOWER_SIDE, tiny_tower_dir
from eyeops_testing.taming_layout import tiny_gumbel_vq
from PIL import Image

from eyeops.data.schema import Message
from eyeops.errors import ConfigError
from eyeops.inference import GenerationRequest
from eyeops.models.healthgpt.family import FAMILY
from eyeops.models.healthgpt.modeling import _tokenizer
from eyeops.models.healthgpt.release import import_healthgpt, map_key
from eyeops.recipes import load_recipe


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return tiny_variant(
        load_recipe("healthgpt-m3"),
        llm=tiny_hub_dir(root, "phi3"),
        vision__name=tiny_tower_dir(root, "clip", layers=4),
        vision__image_size=TOWER_SIDE,
        vq=tiny_gumbel_vq(root),
    )


@pytest.fixture(scope="module")
def released(recipe, tmp_path_factory):
    """com (r64, 4 experts), gen (r256 + the grown vocabulary) and fusion files, as released."""
    out = tmp_path_factory.mktemp("release")
    llm = recipe.model.llm
    hidden = json.loads((Path(llm) / "config.json").read_text())["hidden_size"]
    files = {role: out / f"{role}_weights.bin" for role in ("com_hlora", "gen_hlora", "fusion_layer")}
    torch.save(hlora_state(llm, r=64, experts=4, seed=1), files["com_hlora"])
    vocab = vocab_state(len(_tokenizer(recipe.model)), hidden)
    torch.save(hlora_state(llm, r=256, experts=4, seed=2) | vocab, files["gen_hlora"])
    torch.save(fusion_state(32, hidden), files["fusion_layer"])  # the tiny CLIP's width
    return files


def _import(recipe, released, out, **files):
    given = {"com": released["com_hlora"], "gen": released["gen_hlora"], "fusion": released["fusion_layer"]}
    return import_healthgpt(recipe, out, **(given | files))


def test_released_layout_loads_key_for_key(recipe, released, tmp_path):
    model_dir, report = _import(recipe, released, tmp_path / "model")
    assert not (report.missing or report.unexpected or report.wrong_shape or report.not_imported)
    predictor = FAMILY.load(model_dir)
    state = predictor.model.state_dict()
    for role, task in (("com_hlora", "comprehension"), ("gen_hlora", "generation"), ("fusion_layer", None)):
        source = torch.load(released[role], weights_only=True)
        targets = {key: map_key(key, task or "fusion") for key in source}
        assert all(targets.values()), [k for k, t in targets.items() if not t]
        assert all(
            torch.equal(state[ours], source[key]) for key, mapped in targets.items() for ours in mapped
        )
    # both tasks' adapters on every Phi-3 Linear of every layer; the router carries the 4 experts
    qkv = "lm.base_model.model.model.layers.1.self_attn.qkv_proj"
    assert state[f"{qkv}.lora_A.comprehension.weight"].shape[0] == 64
    assert state[f"{qkv}.lora_B.generation.weight"].shape[1] == 256
    assert state[f"{qkv}.lora_router.generation.weight"].shape[0] == 4
    # the imported model answers both kinds of task
    image = Image.new("RGB", (64, 64), (170, 60, 30))
    request = GenerationRequest(
        messages=[Message(role="user", content="x")], images=[image], task="reconstruction"
    )
    assert predictor.generate([request])[0].images_png[0][:4] == b"\x89PNG"


def test_misfits_are_named(recipe, released, tmp_path):
    com = torch.load(released["com_hlora"], weights_only=True)
    extra = tmp_path / "extra.bin"
    torch.save(com | {"base_model.model.model.vision_tower.proj.weight": torch.zeros(2)}, extra)
    with pytest.raises(
        ConfigError, match=r"1 unexpected \['comprehension: base_model\.model\.model\.vision_tower"
    ):
        _import(recipe, released, tmp_path / "a", com=extra)
    partial = tmp_path / "partial.bin"
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
    torch.save({k: v for k, v in com.items() if k != key}, partial)
    with pytest.raises(
        ConfigError, match=r"1 missing \['lm\.base_model\.model\.model\.layers\.0\.mlp\.down_proj"
    ):
        _import(recipe, released, tmp_path / "b", com=partial)
    l14 = tmp_path / "com_hlora_weights_phi4.bin"  # HealthGPT-L14's r32 adapter is not M3's r64
    torch.save(hlora_state(recipe.model.llm, r=32, experts=4), l14)
    with pytest.raises(ConfigError, match=r"of another shape.*\(32, 64\)"):
        _import(recipe, released, tmp_path / "c", com=l14)
    _, report = _import(recipe, released, tmp_path / "d", gen=None, fusion=None)
    assert report.not_imported == ["generation"] and report.loaded == {"comprehension": len(com)}


def test_cli_imports_and_registers_like_a_trained_model(recipe, released, tmp_path):
    """``eyeops import healthgpt`` end to end; small adapters keep MLflow's example prediction cheap."""
    from typer.testing import CliRunner

    from eyeops.cli import app
    from eyeops.registry import show

    small = {"r": 4, "alpha": 8, "dropout": 0.0, "num_experts": 2, "target_modules": ["all-linear"]}
    recipe = tiny_variant(recipe, hlora={"comprehension": small, "generation": small})
    path = tmp_path / "healthgpt-m3-tiny.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    com = tmp_path / "com_hlora_weights.bin"
    torch.save(hlora_state(recipe.model.llm, r=4, experts=2), com)
    args = ["import", "healthgpt", "--recipe", str(path), "--out", str(tmp_path / "imported")]
    args += ["--com", str(com), "--fusion", str(released["fusion_layer"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "not imported (initial adapters): generation" in result.output
    assert "registered models:/" in result.output and "@challenger" in result.output
    view = show(recipe.register.model_name)
    assert [v.version for v in view.versions] == [1]
    assert (tmp_path / "imported" / "import_report.json").is_file()
