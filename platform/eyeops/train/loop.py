"""The per-worker training loop shared by every model family.

It only uses the :class:`eyeops.families.Family` protocol and an :class:`~eyeops.train.strategies.Engine`:
build the model, walk the recipe's stages (``family.apply_stage``), draw micro-batches from a
per-worker shard of the data, accumulate gradients, step the LR schedule, report metrics every
``log_every_steps`` and a checkpoint every ``checkpoint_every_steps`` through ``ray.train.report``,
and resume from ``ray.train.get_checkpoint()`` (model, optimizer, scheduler, step) after a failure
or when a run is started again under the same name. Rank 0 writes the final model with ``family.save``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import ray.train
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from eyeops.data import local_dataset_dir
from eyeops.families import Family, get_family
from eyeops.recipes import Recipe, StageSpec, parse_recipe
from eyeops.train.strategies import StepPlan, construction, is_zero3, make_engine, resolve_precision

META_FILE = "meta.json"
MODEL_DIR = "model"


@dataclass
class StagePlan:
    """One stage with its data and its slice of the global step counter ``[start, end)``."""

    index: int
    spec: StageSpec
    train_set: Dataset
    batches_per_epoch: int
    start: int
    end: int
    lr: float


def plan_stages(recipe: Recipe, family: Family, data_dir: Path, world_size: int) -> list[StagePlan]:
    """Resolve every stage's dataset, length in optimizer steps and learning rate."""
    cfg = recipe.train
    specs = cfg.stages or [StageSpec(name="train", max_steps=cfg.max_steps)]
    plans, start = [], 0
    for index, spec in enumerate(specs):
        train_set = family.datasets(recipe, data_dir, spec)["train"]
        # DistributedSampler pads the last round so every rank sees the same number of batches.
        per_rank = math.ceil(len(train_set) / world_size)
        batches = max(1, math.ceil(per_rank / cfg.batch_size))
        steps = spec.max_steps or math.ceil((spec.epochs or cfg.epochs) * batches / cfg.grad_accum_steps)
        plans.append(StagePlan(index, spec, train_set, batches, start, start + steps, spec.lr or cfg.lr))
        start += steps
    return plans


def _micro_batches(
    plan: StagePlan, recipe: Recipe, family: Family, rank: int, world: int, skip: int
) -> Iterator[Mapping[str, Any]]:
    """An endless stream of this rank's micro-batches, epoch after epoch, after ``skip`` of them.

    Skipping works on sampler indices, so resuming mid-epoch decodes no images it throws away
    and sees exactly the batches the interrupted run would have seen next.
    """
    cfg = recipe.train
    sampler = DistributedSampler(
        plan.train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False
    )
    epoch, offset = divmod(skip, plan.batches_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        indices = list(sampler)[offset * cfg.batch_size :]
        loader = DataLoader(
            plan.train_set,
            batch_size=cfg.batch_size,
            sampler=indices,
            collate_fn=family.collate_fn(recipe),
            num_workers=cfg.dataloader_workers,
        )
        yield from loader
        epoch, offset = epoch + 1, 0


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _mean_across_workers(value: float, device: torch.device) -> float:
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item()) / torch.distributed.get_world_size()


def _read_resume_point() -> tuple[ray.train.Checkpoint | None, dict[str, Any]]:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, {}
    with checkpoint.as_directory() as directory:
        return checkpoint, json.loads((Path(directory) / META_FILE).read_text())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``recipe`` (JSON form), ``data_dir``, ``run_name``."""
    recipe = parse_recipe(config["recipe"], origin=f"run {config['run_name']}")
    data_dir = Path(config["data_dir"])
    if not data_dir.is_dir():  # a worker on another node than the driver: fetch the dataset there
        data_dir = local_dataset_dir(config["dataset_uri"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = recipe.train
    torch.manual_seed(cfg.seed)  # identical initial heads on every rank
    family = get_family(recipe.family)
    precision = resolve_precision(recipe, device)
    with construction(recipe, precision):  # ZeRO-3: partitioned while it is built
        model = family.build_model(recipe)
    stages = plan_stages(recipe, family, data_dir, world)
    total = stages[-1].end

    checkpoint, meta = _read_resume_point()
    step = int(meta.get("step", 0))
    resumed_from = step if checkpoint is not None else None
    if rank == 0 and resumed_from is not None:
        print(f"[eyeops] {config['run_name']}: resuming from step {step}/{total}", flush=True)

    extra_metrics: dict[str, float] = {"total_steps": float(total)}
    if resumed_from is not None:
        extra_metrics["resumed_from_step"] = float(resumed_from)
    run_start, first_step_done, timed_samples = time.perf_counter(), None, 0
    engine = None
    for plan in stages:
        last = plan is stages[-1]
        if step >= plan.end and not last:
            continue  # finished before the checkpoint we resume from
        family.apply_stage(model, plan.spec)
        engine = make_engine(
            model,
            recipe,
            StepPlan(plan.lr, plan.end - plan.start, min(cfg.warmup_steps, plan.end - plan.start), precision),
            device,
        )
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                # Optimizer state only fits the stage that wrote it; a later stage keeps just weights.
                engine.load(Path(directory), full=meta.get("stage") == plan.index)
            checkpoint = None
        model.train()
        stream = _micro_batches(
            plan, recipe, family, rank, world, skip=max(0, step - plan.start) * cfg.grad_accum_steps
        )
        window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
        while step < plan.end:
            for micro in range(cfg.grad_accum_steps):
                boundary = micro == cfg.grad_accum_steps - 1
                batch = _to_device(next(stream), device)
                with engine.accumulate(boundary):
                    loss = family.loss(engine.model, batch)
                    engine.backward(loss)
                engine.step(boundary)
                window_loss, window_n = window_loss + float(loss.detach()), window_n + 1
            step += 1
            samples = cfg.batch_size * cfg.grad_accum_steps * world
            if first_step_done is None:
                first_step_done = time.perf_counter()  # throughput excludes the warm-up step
            else:
                timed_samples += samples
            is_ckpt = step % cfg.checkpoint_every_steps == 0 and step < total
            if step % cfg.log_every_steps == 0 or is_ckpt or step == plan.end:
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "step": step,
                    "stage": plan.index,
                    "epoch": (step - plan.start) * cfg.grad_accum_steps / plan.batches_per_epoch,
                    "loss": _mean_across_workers(window_loss / max(window_n, 1), device),
                    "lr": engine.lr(),
                    "samples_per_s": window_n / cfg.grad_accum_steps * samples / max(elapsed, 1e-9),
                    **extra_metrics,
                }
                if rank == 0:
                    print(
                        f"[eyeops] {config['run_name']} step {step}/{total} stage {plan.spec.name} "
                        f"loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                        f"{metrics['samples_per_s']:.1f} samples/s",
                        flush=True,
                    )
                if is_ckpt:
                    _report_checkpoint(
                        engine,
                        family,
                        recipe,
                        rank,
                        metrics,
                        final=False,
                        meta={"step": step, "stage": plan.index},
                    )
                else:
                    ray.train.report(metrics)
                window_loss, window_n, window_start = 0.0, 0, time.perf_counter()

    timed = time.perf_counter() - (first_step_done or run_start)
    final = {
        "step": step,
        "total_steps": float(total),
        "train_seconds": time.perf_counter() - run_start,
        "train_samples_per_s": timed_samples / timed if timed_samples else 0.0,
        **extra_metrics,
    }
    _report_checkpoint(
        engine,
        family,
        recipe,
        rank,
        final,
        final=True,
        meta={"step": step, "stage": stages[-1].index},
        data_dir=data_dir,
    )


def _report_checkpoint(
    engine,
    family: Family,
    recipe: Recipe,
    rank: int,
    metrics: dict[str, Any],
    *,
    final: bool,
    meta: dict[str, Any],
    data_dir: Path | None = None,
) -> None:
    """Save the training state (and, when ``final``, the calibrated model dir); report it to Ray Train."""
    with tempfile.TemporaryDirectory(prefix="eyeops-ckpt-") as tmp:
        directory = Path(tmp)
        wrote = engine.save(directory, rank, extra=meta)
        with engine.gathered():
            if final and rank == 0:
                family.save(engine.unwrap(), recipe, directory / MODEL_DIR)
                # Temperature + OOD screen, fitted on held-out data. Not under ZeRO-3: its forward
                # hooks gather parameters collectively, which one rank alone cannot do.
                if data_dir is not None and not is_zero3(recipe):
                    family.calibrate(engine.unwrap(), recipe, data_dir, directory / MODEL_DIR)
        if rank == 0:
            (directory / META_FILE).write_text(json.dumps(meta))
        keep = wrote or rank == 0
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if keep else None)
