"""How one worker's model is wrapped, stepped and checkpointed: DDP (default) or DeepSpeed ZeRO.

The loop only talks to :class:`Engine`: ``accumulate`` around forward+backward of a micro-batch,
``backward``, ``step`` at an accumulation boundary, ``save``/``load`` of the full training state,
and ``unwrap`` to reach the plain module for ``Family.save``. One engine is built per stage, because
the set of trainable parameters (and so the optimizer and the DDP buckets) changes between stages.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eyeops.devices import mixed_precision
from eyeops.recipes import Recipe

STATE_FILE = "train_state.pt"
DS_TAG = "deepspeed"
# id(module) -> its current DeepSpeed engine (weak: a collected engine already destroyed itself).
_LIVE_DS_ENGINES: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class StepPlan:
    """What an engine needs to know about the stage it trains."""

    lr: float
    total_steps: int
    warmup_steps: int
    precision: str  # "fp32" | "bf16" | "fp16"


def resolve_precision(recipe: Recipe, device: torch.device) -> str:
    """Map ``train.mixed_precision`` to what this device can do (auto: bf16/fp16 on GPU, fp32 on CPU).

    The rule evaluation and serving follow (:func:`eyeops.devices.mixed_precision`): bf16 on a GPU
    without native bf16 (T4, V100) trains in fp16, logged, rather than in emulated bf16.
    """
    return mixed_precision(recipe.train.mixed_precision, device)


def build_optimizer(params: list[nn.Parameter], recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    # No weight decay on biases and norm scales (1-D tensors): the usual AdamW practice.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_factor(kind: str, step: int, warmup: int, total: int) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps: linear warmup, then the schedule.

    The curves of ``transformers.get_scheduler`` (cosine / linear / constant with warmup), except
    that warmup's first step is not at LR 0; written out because importing transformers costs each
    Ray worker several seconds.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, plan: StepPlan):
    kind = recipe.train.scheduler
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, kind, warmup=plan.warmup_steps, total=plan.total_steps)
    )


def follow_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, base_lr: float) -> None:
    """After loading a checkpoint, set the LRs *this* run's schedule gives the restored step.

    A checkpoint holds the LR its own run would use next; a rerun that lengthens a stage (or changes
    its lr) must go on along the new schedule, not, say, at LR 0 because the old cosine had ended.
    """
    scheduler.base_lrs = [base_lr for _ in scheduler.optimizer.param_groups]
    lrs = [base_lr * fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["initial_lr"], group["lr"] = base_lr, lr
    scheduler._last_lr = lrs  # what get_last_lr() reports; step() would warn before an optimizer step


class Engine:
    """The interface the loop drives; see the module docstring."""

    model: nn.Module

    def accumulate(self, boundary: bool) -> contextlib.AbstractContextManager: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self, boundary: bool) -> None:
        """Called after every micro-batch; the optimizer only steps at an accumulation boundary."""
        ...

    def lr(self) -> float: ...
    def unwrap(self) -> nn.Module: ...
    def save(self, directory: Path, rank: int, extra: dict[str, Any]) -> bool:
        """Write the training state; returns whether this rank wrote files to report."""
        ...

    def load(self, directory: Path, full: bool = True) -> dict[str, Any]:
        """Restore the weights and, when ``full``, the optimizer/scheduler; returns the saved ``extra``."""
        ...

    def gathered(self) -> contextlib.AbstractContextManager:
        """Context in which ``unwrap()`` holds complete parameters (ZeRO-3 partitions them)."""
        return contextlib.nullcontext()


class DDPEngine(Engine):
    """torch DDP via ``ray.train.torch.prepare_model``, AdamW, optional autocast + GradScaler."""

    def __init__(self, module: nn.Module, recipe: Recipe, plan: StepPlan, device: torch.device) -> None:
        from ray.train.torch import prepare_model

        self.module, self.device, self.plan = module, device, plan
        self.clip, self.accum = recipe.train.grad_clip_norm, recipe.train.grad_accum_steps
        self.model = prepare_model(module, move_to_device=device)
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, recipe, plan.lr)
        self.scheduler = build_scheduler(self.optimizer, recipe, plan)
        self.scaler = torch.amp.GradScaler("cuda", enabled=plan.precision == "fp16")
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision)

    @contextlib.contextmanager
    def accumulate(self, boundary: bool) -> Iterator[None]:
        # Between boundaries skip DDP's gradient all-reduce: gradients just add up locally.
        skip_sync = not boundary and hasattr(self.model, "no_sync")  # a single worker has no DDP wrapper
        sync = self.model.no_sync() if skip_sync else contextlib.nullcontext()
        autocast = (
            torch.autocast(self.device.type, dtype=self._dtype) if self._dtype else contextlib.nullcontext()
        )
        with sync, autocast:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.accum).backward()

    def step(self, boundary: bool) -> None:
        if not boundary:
            return
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            trainable = [p for p in self.module.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def unwrap(self) -> nn.Module:
        return self.module

    def save(self, directory: Path, rank: int, extra: dict[str, Any]) -> bool:
        if rank != 0:  # DDP replicas are identical: one copy is the whole state
            return False
        torch.save(
            {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "extra": extra,
            },
            directory / STATE_FILE,
        )
        return True

    def load(self, directory: Path, full: bool = True) -> dict[str, Any]:
        state = torch.load(directory / STATE_FILE, map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        if not full:
            return state["extra"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        follow_schedule(self.scheduler, self.plan.lr)
        return state["extra"]


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO (stage from the recipe); the process group Ray set up is reused."""

    def __init__(self, module: nn.Module, recipe: Recipe, plan: StepPlan, device: torch.device) -> None:
        import deepspeed

        self.zero_stage, self.plan = recipe.train.deepspeed.zero_stage, plan
        # Under ZeRO-3 the parameters were partitioned at construction (see ``construction``);
        # moving the module would gather nothing and only touch the empty placeholders.
        self.module = module if self.zero_stage == 3 else module.to(device)
        # The previous stage's engine left gradient hooks on the parameters; a parameter training
        # in both stages would feed the dead ZeRO optimizer too (extra copies and collectives).
        previous = _LIVE_DS_ENGINES.pop(id(module), None)
        if previous is not None:
            previous.destroy()
        config = deepspeed_config(recipe, plan)
        params = [p for p in module.parameters() if p.requires_grad]
        # A client AdamW keeps CPU runs working (DeepSpeed's fused Adam needs CUDA).
        optimizer = build_optimizer(params, recipe, plan.lr)
        scheduler = build_scheduler(optimizer, recipe, plan)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False
        )
        _LIVE_DS_ENGINES[id(module)] = self.model

    def accumulate(self, boundary: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine tracks accumulation boundaries itself

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # scales by 1/gradient_accumulation_steps

    def step(self, boundary: bool) -> None:
        # DeepSpeed counts micro-batches itself and only updates at its own boundary; the loop's
        # boundaries agree because both use train.grad_accum_steps.
        self.model.step()

    def lr(self) -> float:
        return float(self.model.get_lr()[0])

    def unwrap(self) -> nn.Module:
        return self.model.module

    def save(self, directory: Path, rank: int, extra: dict[str, Any]) -> bool:
        # Every rank writes its ZeRO optimizer shard; Ray merges the ranks' directories.
        self.model.save_checkpoint(str(directory), tag=DS_TAG, client_state={"extra": extra})
        return True

    def load(self, directory: Path, full: bool = True) -> dict[str, Any]:
        _, client = self.model.load_checkpoint(
            str(directory),
            tag=DS_TAG,
            load_module_only=not full,
            load_optimizer_states=full,
            load_lr_scheduler_states=full,
        )
        if client is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        if full:
            follow_schedule(self.scheduler, self.plan.lr)
        return client["extra"]

    def gathered(self) -> contextlib.AbstractContextManager:
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.module.parameters()), modifier_rank=None)


def deepspeed_config(recipe: Recipe, plan: StepPlan) -> dict[str, Any]:
    """The DeepSpeed config dict from ``train`` and ``train.deepspeed`` (``extra`` merged last)."""
    spec = recipe.train.deepspeed
    zero: dict[str, Any] = {"stage": spec.zero_stage, "overlap_comm": spec.overlap_comm}
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if spec.offload_param:
        zero["offload_param"] = {"device": "cpu"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": recipe.train.batch_size,
        "gradient_accumulation_steps": recipe.train.grad_accum_steps,
        "gradient_clipping": recipe.train.grad_clip_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": plan.precision == "bf16"},
        "fp16": {"enabled": plan.precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we report metrics ourselves
        "wall_clock_breakdown": False,
    }
    return _merge(config, spec.extra)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


def is_zero3(recipe: Recipe) -> bool:
    return recipe.train.strategy == "deepspeed" and recipe.train.deepspeed.zero_stage == 3


@contextlib.contextmanager
def construction(recipe: Recipe, precision: str) -> Iterator[None]:
    """Where ``Family.build_model`` runs: under ZeRO-3, inside ``deepspeed.zero.Init``.

    Every parameter is then partitioned across the workers as its module is created, and
    transformers' ``from_pretrained`` (told through ``HfDeepSpeedConfig``) loads each weight
    straight into its partition, so no worker ever holds the whole model. Other strategies build
    the whole model on each worker, as before.
    """
    if not is_zero3(recipe):
        yield
        return
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    config = deepspeed_config(recipe, StepPlan(recipe.train.lr, 1, 0, precision))
    # transformers sees ZeRO-3 through a weak global: alive only while the model is built, so
    # later loads in this process (a reload for evaluation) build whole models again.
    hf_config = HfDeepSpeedConfig(config)
    try:
        with deepspeed.zero.Init(config_dict_or_path=config):
            yield
    finally:
        del hf_config


def make_engine(module: nn.Module, recipe: Recipe, plan: StepPlan, device: torch.device) -> Engine:
    """The engine for ``train.strategy``."""
    if recipe.train.strategy == "deepspeed":
        return DeepSpeedEngine(module, recipe, plan, device)
    return DDPEngine(module, recipe, plan, device)
