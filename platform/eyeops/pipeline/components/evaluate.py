"""evaluate: score the checkpoint on the held-out split (``eyeops.pipeline.steps.evaluate_step``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from eyeops.kube.objects import TRAINER_IMAGE


def evaluate(
    recipe: str,
    checkpoint: Input[Model],
    dataset: Input[Dataset],
    overrides: str,
    report: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Evaluate; ``report`` holds the EvalReport JSON, ``metrics`` the flat metrics, ``summary`` Markdown."""
    from eyeops.pipeline.steps import evaluate_step

    result = evaluate_step(
        recipe,
        checkpoint_path=checkpoint.path,
        dataset_path=dataset.path,
        overrides=overrides,
        out_path=report.path,
        markdown_path=summary.path,
    )
    for name, value in sorted(result.metrics.items()):
        metrics.log_metric(name, float(value))
    report.metadata.update(
        {
            "uri": result.uri,
            "primary_metric": result.primary_metric,
            "primary_value": float(result.primary_value),
        }
    )


def component(base_image: str = TRAINER_IMAGE):
    return dsl.component(evaluate, base_image=base_image, install_kfp_package=False)


op = component()
