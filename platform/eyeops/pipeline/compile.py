"""Compile the fine-tuning pipeline to KFP IR YAML for a cluster: ``pipelines/compiled/<recipe>.yaml``.

Output is deterministic (same code + recipe → same bytes) so the checked-in YAML diffs cleanly and
CI can verify it is current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eyeops.recipes import list_recipes, load_recipe

_CHECKOUT = Path(__file__).resolve().parents[3]


def default_out_dir() -> Path:
    """``pipelines/compiled`` of the eyeops checkout this runs from, else of the working directory
    (an installed eyeops compiles anywhere: the pipeline and its components are package code)."""
    checkout = _CHECKOUT / "pipelines" / "compiled"
    return checkout if checkout.is_dir() else Path.cwd() / "pipelines" / "compiled"


COMPILED_DIR = default_out_dir()


def load_pipelines_module() -> Any:
    """The fine-tuning pipeline definition, :mod:`eyeops.pipeline.finetune`."""
    from eyeops.pipeline import finetune

    return finetune


def cluster_target(recipe_name: str, image: str | None = None) -> Any:
    """The Kubernetes settings for a recipe: its GPU count per worker on the default GPU pool."""
    finetune = load_pipelines_module()
    from eyeops.kube.objects import TRAINER_IMAGE, GpuPool

    recipe = load_recipe(recipe_name)
    gpus = int(recipe.train.resources_per_worker.get("GPU", 1))
    return finetune.ClusterTarget(
        image=image or TRAINER_IMAGE,
        pool=GpuPool(gpus_per_worker=max(1, gpus)),
        evaluate_gpus=recipe.evaluate.gpus,  # evaluate.device cuda[:N]: the evaluate task's GPUs
    )


def compile_pipeline(
    recipe_name: str, out_dir: str | Path | None = None, *, image: str | None = None
) -> Path:
    """Compile the cluster pipeline with ``recipe_name`` as the default recipe; returns the YAML path."""
    from kfp import compiler

    finetune = load_pipelines_module()
    target = cluster_target(recipe_name, image)
    out = Path(out_dir) if out_dir else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{recipe_name}.yaml"
    compiler.Compiler().compile(
        finetune.build_pipeline(target),
        package_path=str(path),
        pipeline_name=f"eyeops-finetune-{recipe_name}",
        pipeline_parameters={"recipe": recipe_name, "train_target": "local", "deploy_backend": "kserve"},
    )
    return path


def compile_all(out_dir: str | Path | None = None, *, image: str | None = None) -> list[Path]:
    """Compile every recipe :func:`~eyeops.recipes.list_recipes` knows."""
    return [compile_pipeline(name, out_dir, image=image) for name in list_recipes()]
