"""H-LoRA as a peft custom LoRA layer: the math against a direct computation, what trains,
k=1 against peft's own LoRA, task switching (exact restore), mixed-task batches, merge refusal."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from eyeops.errors import ConfigError, InvalidRequest
from eyeops.models.common.hlora import (
    HLoraConfig,
    HLoraLinear,
    apply_hlora,
    refuse_merge,
    route_tasks,
    set_task,
)
from eyeops.models.common.specs import HLoRASpec
from eyeops.recipes import load_saved_recipe, parse_recipe

IN, OUT = 6, 5
TASKS = ("comprehension", "generation")


class Tiny(nn.Module):
    """Two Linears and a head: enough to check targeting, gradients and switching."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(IN, IN)
        self.mlp = nn.Linear(IN, OUT)
        self.lm_head = nn.Linear(OUT, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.mlp(torch.relu(self.proj(x)))))


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """peft initialises B to zero; give every adapter tensor values so the update is visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _wrap(k: int, r: int = 4, alpha: float = 8.0, targets=("proj", "mlp")):
    torch.manual_seed(0)
    config = HLoraConfig(r=r, lora_alpha=alpha, num_experts=k, lora_dropout=0.0, target_modules=list(targets))
    model = get_peft_model(Tiny(), config)
    _randomise(model)
    return model


def test_math_matches_direct_computation():
    model = _wrap(k=2, r=4, alpha=8.0, targets=("mlp",))
    layer = model.base_model.model.mlp
    assert isinstance(layer, HLoraLinear)
    x = torch.randn(3, 7, IN)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    R = layer.lora_router["default"].weight
    gate = torch.softmax(x @ R.T, dim=-1)  # [3, 7, k]
    gate_r = torch.cat([gate[..., :1].expand(-1, -1, 2), gate[..., 1:].expand(-1, -1, 2)], dim=-1)
    s = 8.0 / 4 * 2
    expected = x @ W.T + b + ((x @ A.T) * gate_r) @ B.T * s
    torch.testing.assert_close(layer(x), expected)
    assert layer.scaling["default"] == pytest.approx(s)


def test_only_adapter_and_router_get_gradients():
    model = _wrap(k=2)
    model(torch.randn(4, IN)).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_router" in n for n in with_grad)
    assert not any("lm_head" in n for n in trainable)  # the head is never adapted
    assert not isinstance(model.base_model.model.lm_head, HLoraLinear)


def test_k1_equals_peft_lora():
    hl = _wrap(k=1, r=4, alpha=8.0)
    torch.manual_seed(0)
    plain = get_peft_model(
        Tiny(), LoraConfig(r=4, lora_alpha=8.0, lora_dropout=0.0, target_modules=["proj", "mlp"])
    )
    state = {k: v for k, v in hl.state_dict().items() if "lora_router" not in k}
    plain.load_state_dict(state, strict=True)
    x = torch.randn(5, IN)
    torch.testing.assert_close(hl(x), plain(x))
    # k = 1 can be merged, and the merged model computes the same function.
    merged = copy.deepcopy(hl).merge_and_unload()
    torch.testing.assert_close(merged(x), plain(x))


def test_merge_refused_with_routed_experts():
    model = _wrap(k=2)
    with pytest.raises(ConfigError, match="routed experts"):
        model.merge_and_unload()
    with pytest.raises(ConfigError, match="merged-weight export is impossible"):
        refuse_merge(model)
    refuse_merge(_wrap(k=1))  # nothing to refuse


def test_task_switching_changes_and_restores_outputs_exactly():
    spec = HLoRASpec(r=4, alpha=8, dropout=0.0, num_experts=2, target_modules=["proj", "mlp"])
    torch.manual_seed(0)
    model = apply_hlora(Tiny(), dict.fromkeys(TASKS, spec), task_type=None)
    _randomise(model, seed=1)
    model.eval()
    x = torch.randn(4, IN)
    base_before = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    with torch.no_grad():
        comp = model(x)
        set_task(model, "generation")
        gen = model(x)
        set_task(model, "comprehension")
        comp_again = model(x)
        # One batch mixing both tasks row by row matches each task run alone.
        mixed = model(x, adapter_names=["comprehension", "generation", "comprehension", "generation"])
    assert not torch.allclose(comp, gen)
    assert torch.equal(comp, comp_again)
    torch.testing.assert_close(mixed[0::2], comp[0::2])
    torch.testing.assert_close(mixed[1::2], gen[1::2])
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n])
    with pytest.raises(InvalidRequest, match="unknown task 'segmentation'"):
        set_task(model, "segmentation")


def test_training_one_task_leaves_the_other_untouched():
    spec = HLoRASpec(r=4, alpha=8, dropout=0.0, num_experts=2, target_modules=["proj", "mlp"])
    model = apply_hlora(Tiny(), dict.fromkeys(TASKS, spec), task_type=None)
    _randomise(model)
    set_task(model, "generation")
    model(torch.randn(3, IN)).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".generation" in n for n in grads)


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of num_experts"):
        HLoraConfig(r=6, num_experts=4, target_modules=["proj"])
    recipe = {
        "name": "x",
        "model": {
            "family": "healthgpt",
            "hlora": {"comprehension": {"r": 6, "num_experts": 4}, "generation": {}},
        },
        "register": {"model_name": "x"},
    }
    with pytest.raises(ConfigError, match=r"model\.healthgpt\.hlora.*multiple"):
        parse_recipe(recipe)
    # The single form of saved models is refused in new recipes, by name; so is a missing task.
    recipe["model"]["hlora"] = {"r": 8, "num_experts": 4}
    with pytest.raises(ConfigError, match=r"hlora.*one spec per task.*\['num_experts', 'r'\]"):
        parse_recipe(recipe)
    recipe["model"]["hlora"] = {"comprehension": {"r": 8}}
    with pytest.raises(ConfigError, match="hlora needs exactly the tasks"):
        parse_recipe(recipe)
    recipe["model"]["hlora"] = {"comprehension": {}, "generation": {"target_modules": ["nothing_here"]}}
    with pytest.raises(ConfigError, match=r"model\.hlora\.generation\.target_modules \['nothing_here'\]"):
        apply_hlora(Tiny(), parse_recipe(recipe).model.hlora, task_type=None)


def test_per_task_specs_shape_each_adapter_and_old_single_form_loads(tmp_path):
    """HealthGPT-M3's comprehension and generation adapters differ in rank, alpha and scaling."""
    specs = {
        "comprehension": HLoRASpec(r=4, alpha=8, dropout=0.0, num_experts=2, target_modules=["proj"]),
        "generation": HLoRASpec(r=16, alpha=32, dropout=0.0, num_experts=4, target_modules=["proj", "mlp"]),
    }
    model = apply_hlora(Tiny(), specs, task_type=None)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, HLoraLinear)}
    proj = next(m for n, m in layers.items() if n.endswith("proj"))
    assert proj.lora_A["comprehension"].out_features == 4 and proj.lora_A["generation"].out_features == 16
    assert proj.scaling == {"comprehension": 8 / 4 * 2, "generation": 32 / 16 * 4}
    assert proj.lora_router["generation"].out_features == 4
    mlp = next(m for n, m in layers.items() if n.endswith("mlp"))
    assert set(mlp.lora_A) == {"generation"}  # comprehension does not target it

    import yaml

    saved = {
        "name": "old",
        "model": {"family": "healthgpt", "hlora": {"r": 8, "alpha": 16, "num_experts": 2}},
        "register": {"model_name": "old"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(saved))
    hlora = load_saved_recipe(tmp_path / "recipe.yaml").model.hlora
    assert hlora["comprehension"] == hlora["generation"] == HLoRASpec(r=8, alpha=16, num_experts=2)


def test_route_tasks_matches_switching_in_eval_and_reaches_every_adapter_in_training():
    spec = HLoRASpec(r=4, alpha=8, dropout=0.0, num_experts=2, target_modules=["proj", "mlp"])
    model = apply_hlora(Tiny(), dict.fromkeys(TASKS, spec), task_type=None)
    _randomise(model, seed=2)
    x = torch.randn(3, IN)
    model.eval()
    with torch.no_grad():
        set_task(model, "generation")
        gen = model(x)
        with route_tasks(model, ["generation"] * 3):
            routed = model(x)
    torch.testing.assert_close(routed, gen)
    model.train()
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    with route_tasks(model, ["generation"] * 3):
        model(x).sum().backward()
    untouched = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert not untouched  # the comprehension adapter is in the graph (zero gradient), as DDP requires
    comp_grads = [p.grad for n, p in model.named_parameters() if ".comprehension" in n]
    assert all(g.abs().sum() == 0 for g in comp_grads)
