"""register: log, register in MLflow, gate against the champion (``steps.register_step``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from eyeops.kube.objects import TRAINER_IMAGE


def register(
    recipe: str,
    checkpoint: Input[Model],
    report: Input[Artifact],
    dataset: Input[Dataset],
    overrides: str,
    pipeline_run_id: str,
    pipeline_run_name: str,
    model: Output[Model],
) -> bool:
    """Register the checkpoint with lineage tags; ``model`` holds the ModelVersionRef JSON.

    Returns whether the gate passed (the new version is ``@champion``), which guards deploy.
    """
    from eyeops.pipeline.steps import register_step

    version = register_step(
        recipe,
        checkpoint_path=checkpoint.path,
        report_path=report.path,
        dataset_path=dataset.path,
        overrides=overrides,
        pipeline_run_id=pipeline_run_id,
        pipeline_run_name=pipeline_run_name,
        out_path=model.path,
    )
    model.metadata.update(
        {
            "name": version.name,
            "version": version.version,
            "alias": version.alias,
            "model_uri": version.model_uri,
            "gate_reason": version.gate_reason,
        }
    )
    return version.gate_passed


def component(base_image: str = TRAINER_IMAGE):
    return dsl.component(register, base_image=base_image, install_kfp_package=False)


op = component()
