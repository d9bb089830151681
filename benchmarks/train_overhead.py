"""Training-loop overhead: eyeops' loop under Ray Train (1 worker) vs a bare torch loop.

Both train the same model (the fundus-classifier recipe's efficientnet_lite0 with packaged
weights) on the same batches of the same prepared dataset, with the same optimizer, LR schedule,
gradient clipping and thread count, in one invocation. Throughput is samples/s over every
optimizer step after the first (the first step pays allocation and lazy initialisation). The
Ray side includes its metric reports every ``log_every`` steps (barrier + controller RPC) but no
periodic checkpoints: writing weights is I/O, not loop overhead. Ray start-up and worker start
are excluded from both (they are paid once per run, not per step).
The bare loop runs before and after the Ray run; the mean of the two is the baseline, so drift
from other load on the machine hurts neither side systematically.

    python benchmarks/train_overhead.py [--steps 60] [--batch 16] [--image-size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import torch
from torch.utils.data import DataLoader

from eyeops.data import prepare
from eyeops.families import get_family
from eyeops.recipes import DataSpec, Recipe, StageSpec, load_recipe
from eyeops.refs import DatasetRef
from eyeops.train.strategies import StepPlan, build_optimizer, build_scheduler


def bare_loop(recipe: Recipe, data_dir: Path, steps: int) -> float:
    """The same work as one eyeops worker, written as the plain torch loop one would hand-write."""
    family = get_family(recipe.family)
    torch.manual_seed(recipe.train.seed)
    model = family.build_model(recipe)
    family.apply_stage(model, StageSpec(name="train"))
    train_set = family.datasets(recipe, data_dir)["train"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, recipe, recipe.train.lr)
    plan = StepPlan(recipe.train.lr, steps, recipe.train.warmup_steps, "fp32")
    scheduler = build_scheduler(optimizer, recipe, plan)
    generator = torch.Generator().manual_seed(recipe.train.seed)
    model.train()
    done, start, samples = 0, None, 0
    while done < steps:
        loader = DataLoader(
            train_set,
            batch_size=recipe.train.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=family.collate_fn(recipe),
        )
        for batch in loader:
            loss = family.loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.train.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if start is None:
                start = time.perf_counter()
            else:
                samples += len(batch["labels"])
            if done == steps:
                break
    return samples / (time.perf_counter() - start)


def ray_loop(recipe: Recipe, dataset: DatasetRef, steps: int, storage: Path) -> float:
    from eyeops.train import train

    ref = train(
        recipe,
        dataset,
        run_name="overhead",
        storage_path=str(storage),
        overrides={
            "train.num_workers": 1,
            "train.max_steps": steps,
            "train.checkpoint_every_steps": steps + 1,
        },
    )
    return ref.metrics["train_samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="eyeops-bench-") as tmp:
        os.environ["EYEOPS_STORAGE_ROOT"] = str(Path(tmp) / "root")
        dataset = prepare(
            DataSpec(source="synthetic", n=128, image_size=max(64, args.image_size), seed=0),
            str(Path(tmp) / "data"),
            name="bench",
        )
        recipe = load_recipe("fundus-classifier").with_overrides(
            {
                "model.image_size": args.image_size,
                "train.batch_size": args.batch,
                # The Ray worker gets as many CPUs (so OMP/torch threads) as the bare loop uses.
                "train.resources_per_worker": {"CPU": args.threads},
            }
        )
        torch.set_num_threads(args.threads)
        before = bare_loop(recipe, Path(dataset.uri), args.steps)
        under_ray = ray_loop(recipe, dataset, args.steps, Path(tmp) / "runs")
        after = bare_loop(recipe, Path(dataset.uri), args.steps)

    bare = (before + after) / 2
    overhead = (bare - under_ray) / bare * 100
    print(
        f"train_overhead: bare {bare:.1f} samples/s (runs {before:.1f}, {after:.1f}), "
        f"eyeops loop on Ray (1 worker) {under_ray:.1f} samples/s, overhead {overhead:+.1f}% "
        f"(goal <= 5%) | efficientnet_lite0 {args.image_size}px batch {args.batch} {args.steps} steps "
        f"{args.threads} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
