"""``eyeops plan RECIPE``: parameters and GPU memory per worker; refuses a plan that cannot fit."""

from __future__ import annotations

import typer

from eyeops.plan import Plan


def print_plan(result: Plan) -> None:
    """The plan as two tables (stages, strategies) and its notes."""
    from rich.table import Table

    from eyeops.cli import console
    from eyeops.plan import fmt_params

    gpu = "not checked" if result.gpu_memory_gib is None else f"{result.gpu_memory_gib:g} GiB"
    ckpt = "on" if result.gradient_checkpointing else "off"
    console.print(
        f"[bold]{result.recipe}[/bold] ({result.family}): {fmt_params(result.params)} parameters; "
        f"{result.precision}; {result.strategy} × {result.workers} worker(s); batch {result.batch_size}"
        f" × seq {result.max_seq_len}; gradient checkpointing {ckpt}"
        f"; GPU {result.accelerator_type or '-'} ({gpu})",
        highlight=False,
        soft_wrap=True,
    )
    stages = Table(title="per stage, GiB per worker", show_header=True)
    for col in ("stage", "trainable", "weights", "grads", "optimizer", "activations", "overhead", "total"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for s in result.stages:
        m = s.memory
        stages.add_row(
            s.name,
            fmt_params(s.trainable),
            *(f"{v:.2f}" for v in (m.weights, m.gradients, m.optimizer)),
            f"{m.activations:.2f}",
            f"{m.overhead:.2f}",
            f"{m.total:.2f}",
        )
    console.print(stages)
    strategies = Table(title="peak GiB per worker by strategy", show_header=True)
    for col in ("strategy", "checkpointing", "no checkpointing"):
        strategies.add_column(col, justify="left" if col == "strategy" else "right")
    for name, row in result.by_strategy.items():
        mark = " *" if name == result.strategy else ""
        strategies.add_row(f"{name}{mark}", f"{row['checkpointing']:.2f}", f"{row['no_checkpointing']:.2f}")
    console.print(strategies)
    if result.peak.host_offload:
        console.print(f"host memory for offloaded optimizer state: {result.peak.host_offload:.2f} GiB")
    verdict = {None: "fit: not checked", True: "fits", False: "does NOT fit"}[result.fits]
    console.print(f"{verdict} (peak {result.peak.total:.2f} GiB per worker)", highlight=False)
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]", highlight=False, soft_wrap=True)


def parse_configs(items: list[str]) -> dict[str, str]:
    """``HUB_ID=PATH`` pairs (PATH: a config.json or a directory holding one)."""
    from eyeops.errors import ConfigError

    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ConfigError(f"--config {item!r}: expected HUB_ID=PATH/TO/config.json")
        out[key] = path
    return out


def plan_recipe(
    recipe: str, sets: list[str], configs: list[str], gpu_memory_gib: float | None, as_json: bool = False
) -> Plan:
    """Load, override, plan and print; raises :class:`eyeops.plan.PlanError` when it cannot fit."""
    from eyeops.cli import console
    from eyeops.cli.pipeline import parse_sets
    from eyeops.plan import plan, require_fit
    from eyeops.recipes import load_recipe

    loaded = load_recipe(recipe)
    overrides = parse_sets(sets)
    if overrides:
        loaded = loaded.with_overrides(overrides)
    result = plan(loaded, configs=parse_configs(configs), gpu_memory_gib=gpu_memory_gib)
    if as_json:
        console.print_json(result.model_dump_json())
    else:
        print_plan(result)
    return require_fit(result)


def plan_command(
    recipe: str = typer.Argument(..., help="Recipe name (recipes/<name>.yaml) or a YAML path."),
    set_: list[str] = typer.Option([], "--set", help="Override KEY=JSON, e.g. --set train.batch_size=2."),
    config: list[str] = typer.Option(
        [], "--config", help="HUB_ID=PATH: the config.json of a backbone not available offline."
    ),
    gpu_memory_gib: float = typer.Option(
        None, "--gpu-memory-gib", help="GPU memory per worker (default: by train.accelerator_type)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON only."),
) -> None:
    """Parameters, trainable parameters per stage and GPU memory per worker, built on the meta device.

    Exits non-zero when the plan cannot fit the pool's GPU (train.accelerator_type).
    """
    plan_recipe(recipe, set_, config, gpu_memory_gib, as_json)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
