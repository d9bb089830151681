"""``eyeops pipeline run RECIPE --local``, ``eyeops pipeline compile [--all]`` and ``eyeops demo``."""

from __future__ import annotations

import json

import typer

pipeline_app = typer.Typer(
    help="Run the fine-tuning pipeline locally (kfp.local) or compile it.", no_args_is_help=True
)


@pipeline_app.command("run")
def run(
    recipe: str = typer.Argument(..., help="Recipe name (recipes/<name>.yaml)."),
    local: bool = typer.Option(
        True, "--local/--cluster", help="Run with kfp.local here; cluster runs go through the compiled YAML."
    ),
    data_source: str = typer.Option(
        "", "--data-source", "-d", help="'synthetic', 'synthetic:N' or SOURCE:PATH (odir:/data/odir.csv)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override KEY=JSON, e.g. --set train.max_steps=5."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream every task's log here."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Only print `eyeops plan` for the recipe (refused when it cannot fit)."
    ),
) -> None:
    """Run prepare → train → evaluate → register → (gate) → deploy and print a summary table.

    Without configured serving auth, the endpoint the run deploys gets a local API key, kept in
    ``<storage_root>/serve/api-key`` (created once, reused by later runs).
    """
    from eyeops.cli import console
    from eyeops.errors import ConfigError
    from eyeops.pipeline import run_local, summary_table
    from eyeops.pipeline.local import ensure_api_key, local_key_file
    from eyeops.recipes import load_recipe

    if not local:
        raise ConfigError(
            "cluster runs: `eyeops pipeline compile`, then upload "
            "pipelines/compiled/<recipe>.yaml to Kubeflow Pipelines"
        )
    if dry_run:
        from eyeops.cli.plan import plan_recipe

        plan_recipe(recipe, set_, [], None)
        return
    overrides = parse_sets(set_)
    load_recipe(recipe)  # an unknown recipe fails before a key file is made
    if ensure_api_key(key_file := local_key_file()) is not None:
        console.print(
            f"no EYEOPS_API_KEYS or EYEOPS_API_KEYS_FILE set: the endpoint takes the local key in {key_file} "
            f"(scopes classify, chat); to call it: export EYEOPS_API_KEY=$(cut -d: -f1 {key_file})",
            highlight=False,
            soft_wrap=True,
        )
    if verbose:
        summary = run_local(recipe, data_source=data_source, overrides=overrides)
    else:
        with console.status(f"running the {recipe} pipeline with kfp.local…"):
            summary = run_local(recipe, data_source=data_source, overrides=overrides, quiet=True)
    console.print(summary_table(summary))
    if summary.log:
        console.print(f"task logs: {summary.log}", highlight=False, soft_wrap=True)


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses (numbers, booleans, lists), else a string."""
    from eyeops.errors import ConfigError

    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


@pipeline_app.command("compile")
def compile_(
    recipe: str = typer.Argument(None, help="Recipe to compile (default: --all)."),
    all_: bool = typer.Option(False, "--all", help="Compile every recipe under recipes/."),
    out_dir: str = typer.Option(None, "--out-dir", help="Default: pipelines/compiled/."),
    image: str = typer.Option(None, "--image", help="eyeops image for every task (default: release image)."),
) -> None:
    """Compile the pipeline for a cluster to KFP IR YAML (deterministic)."""
    from eyeops.cli import console
    from eyeops.errors import ConfigError
    from eyeops.pipeline import compile_all, compile_pipeline

    if recipe and all_:
        raise ConfigError("give a RECIPE or --all, not both")
    paths = (
        compile_all(out_dir, image=image)
        if all_ or not recipe
        else [compile_pipeline(recipe, out_dir, image=image)]
    )
    for path in paths:
        console.print(f"compiled {path}")


def demo(
    n: int = typer.Option(None, "--n", help="Synthetic images to generate (default: the recipe's)."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the endpoint running."),
) -> None:
    """The whole platform in one command: data → Ray training → eval → MLflow → served endpoint."""
    from eyeops.demo import run_demo

    run_demo(n=n, keep_serving=keep_serving)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
    app.command("demo")(demo)
