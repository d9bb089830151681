"""H-LoRA (HealthGPT): a LoRA whose rank is split into ``k`` experts mixed per token by a router.

Per adapted Linear: ``A: in -> r``, ``B: r -> out``, router ``R: in -> k`` and

    y = W x + B( repeat_interleave(softmax(R x), r/k) * dropout(A x) ) * s,   s = alpha / r * k

so each of the ``k`` rank-``r/k`` experts is weighted by its router probability for that token.
With ``k = 1`` the gate is 1 everywhere and H-LoRA is plain LoRA with ``s = alpha / r``.

It is a peft LoRA layer, not a patch: :class:`HLoraLinear` subclasses peft's ``lora.Linear`` and
is dispatched through ``LoraConfig._register_custom_module`` (peft's documented hook for custom
LoRA layers). The router is named ``lora_router`` so peft treats it as adapter state everywhere
(``requires_grad`` marking, ``set_adapter``, ``get_peft_model_state_dict``, ``delete_adapter``).
Several adapters (one per task) live side by side; :func:`set_task` switches the active one
without touching the base weights, and ``adapter_names=[...]`` mixes tasks inside one batch.
Merging is refused when ``k > 1``: the per-token router cannot be folded into a weight matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from eyeops.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    from eyeops.models.common.specs import HLoRASpec

ROUTER = "lora_router"


@dataclass
class HLoraConfig(LoraConfig):
    """peft ``LoraConfig`` plus the number of experts the rank is split into."""

    num_experts: int = field(default=1, metadata={"help": "k: experts of rank r/k mixed per token."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_experts < 1 or self.r % self.num_experts:
            raise ConfigError(
                f"H-LoRA: rank r={self.r} must be a positive multiple of num_experts={self.num_experts}"
            )
        if self.use_dora:
            raise ConfigError("H-LoRA does not combine with DoRA (use_dora must be false)")
        self._register_custom_module({nn.Linear: HLoraLinear})


class HLoraLinear(LoraLinear):
    """peft ``lora.Linear`` with a per-token router over ``k`` rank-``r/k`` experts."""

    adapter_layer_names = (*LoraLinear.adapter_layer_names, ROUTER)
    other_param_names = (*LoraLinear.other_param_names, "num_experts")

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any
    ) -> None:
        if not isinstance(config, HLoraConfig):
            raise ConfigError(f"HLoraLinear needs an HLoraConfig, got {type(config).__name__}")
        if not hasattr(self, ROUTER):  # first adapter: nn.Module is initialised by now
            self.lora_router = nn.ModuleDict({})
            self.num_experts: dict[str, int] = {}
        k = config.num_experts
        if r % k:
            raise ConfigError(f"H-LoRA: rank {r} of {adapter_name!r} is not a multiple of {k} experts")
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        self.num_experts[adapter_name] = k
        self.scaling[adapter_name] = lora_alpha / r * k  # HealthGPT: each expert's update is r/k wide
        # Dropout on the rank-space activations (A x), as H-LoRA defines it, not on the input.
        self.lora_router[adapter_name] = nn.Linear(self.in_features, k, bias=False)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        # Re-run so the router just created gets the same requires_grad as A and B.
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def hlora_delta(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """The adapter's contribution ``B(gate * dropout(A x)) * s`` for inputs ``x``."""
        lora_a, lora_b = self.lora_A[adapter], self.lora_B[adapter]
        x = self._cast_input_dtype(x, lora_a.weight.dtype)
        k = self.num_experts[adapter]
        hidden = self.lora_dropout[adapter](lora_a(x))
        if k > 1:
            gate = torch.softmax(self.lora_router[adapter](x), dim=-1)
            hidden = hidden * gate.repeat_interleave(self.r[adapter] // k, dim=-1)
        return lora_b(hidden) * self.scaling[adapter]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter in self.lora_A:
                result = result + self.hlora_delta(x, adapter)
        return result.to(dtype)

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> torch.Tensor:
        """Each batch row through its own task's adapter (``__base__``: none)."""
        if len(adapter_names) != x.shape[0]:
            raise InvalidRequest(f"{len(adapter_names)} adapter names for a batch of {x.shape[0]}")
        result = self.base_layer(x, *args, **kwargs)
        dtype = result.dtype
        if self.training:
            # Every adapter runs on the whole batch and is masked per row: each trainable tensor takes
            # part in the graph (DDP needs that) even when a micro-batch holds one task only.
            shape = (-1,) + (1,) * (x.dim() - 1)
            for adapter in self.lora_A:
                mask = torch.tensor([n == adapter for n in adapter_names], dtype=dtype, device=x.device)
                result = result + self.hlora_delta(x, adapter).to(dtype) * mask.view(shape)
            return result
        if len(set(adapter_names)) == 1:  # one task in the batch: no row gathering needed
            adapter = adapter_names[0]
            return result if adapter not in self.lora_A else result + self.hlora_delta(x, adapter).to(dtype)
        for adapter in set(adapter_names):
            if adapter == "__base__" or adapter not in self.lora_A:
                continue
            rows = [i for i, name in enumerate(adapter_names) if name == adapter]
            result[rows] += self.hlora_delta(x[rows], adapter).to(dtype)
        return result

    def _refuse_routed(self, adapter: str) -> None:
        if self.num_experts.get(adapter, 1) > 1:
            raise ConfigError(
                f"H-LoRA adapter {adapter!r} has {self.num_experts[adapter]} routed experts: its update "
                "depends on each token, so it cannot be merged into the base weights (export the adapter)"
            )

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        self._refuse_routed(adapter)
        return super().get_delta_weight(adapter)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for adapter in adapter_names or self.active_adapters:
            self._refuse_routed(adapter)  # before any weight is touched
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def __repr__(self) -> str:
        return "hlora." + nn.Module.__repr__(self)


# --- building and switching ------------------------------------------------------------------------
def hlora_config(spec: HLoRASpec, task_type: str | None = "CAUSAL_LM") -> HLoraConfig:
    """The peft config for a recipe's ``model.hlora`` section (``task_type`` None: any nn.Module)."""
    targets: Any = spec.target_modules
    return HLoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        num_experts=spec.num_experts,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        task_type=task_type,
    )


def apply_hlora(
    model: nn.Module, specs: Mapping[str, HLoRASpec], task_type: str | None = "CAUSAL_LM"
) -> PeftModel:
    """Wrap a model with one H-LoRA adapter per task, each shaped by its own spec (the first is active).

    Tasks may differ in rank, alpha, experts and targets (HealthGPT-M3: comprehension r64/α128,
    generation r256/α512): peft keeps one config per adapter.
    """
    tasks = list(specs)
    if not tasks:
        raise ConfigError("H-LoRA needs at least one task")
    peft_model: Any = None
    for task in tasks:
        config = hlora_config(specs[task], task_type)
        try:
            with warnings.catch_warnings():  # peft 0.21 asks transformers 5 the deprecated question
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                if peft_model is None:
                    peft_model = get_peft_model(model, config, adapter_name=task)
                else:
                    peft_model.add_adapter(task, config)
        except ValueError as exc:
            raise ConfigError(
                f"model.hlora.{task}.target_modules {specs[task].target_modules}: {exc}"
            ) from None
    peft_model.set_adapter(tasks[0])
    return peft_model


def set_task(model: PeftModel, task: str) -> None:
    """Make ``task``'s adapter the active one (base weights untouched, nothing reloaded)."""
    if task not in model.peft_config:
        raise InvalidRequest(
            f"unknown task {task!r} (this model has adapters for {', '.join(model.peft_config)})"
        )
    if model.active_adapter != task:
        model.set_adapter(task)


@contextmanager
def route_tasks(model: nn.Module, tasks: Sequence[str]) -> Iterator[None]:
    """Inside the block, batch row ``i`` of every forward goes through adapter ``tasks[i]``.

    Unlike peft's ``adapter_names=`` argument this also works while training and needs no global
    switch, so concurrent requests for different tasks can share a replica (and a batch).
    """
    names = list(tasks)

    def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "adapter_names": names}

    handles = [
        m.register_forward_pre_hook(inject, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, HLoraLinear)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def refuse_merge(model: nn.Module) -> None:
    """Raise when any adapter routes between experts (its weights cannot be merged)."""
    for module in model.modules():
        if isinstance(module, HLoraLinear):
            routed = {a: k for a, k in module.num_experts.items() if k > 1}
            if routed:
                name, k = next(iter(routed.items()))
                raise ConfigError(
                    f"merged-weight export is impossible for H-LoRA adapter {name!r} with {k} routed "
                    "experts; save the adapters and the base reference instead"
                )
