"""train: fine-tune on Ray, here or through a KubeRay RayJob (``eyeops.pipeline.steps.train_step``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from eyeops.kube.objects import TRAINER_IMAGE


def train(
    recipe: str,
    dataset: Input[Dataset],
    overrides: str,
    target: str,
    run_name: str,
    image: str,
    gpu_pool: str,
    checkpoint: Output[Model],
):
    """Train the recipe on ``dataset``; ``checkpoint`` holds the CheckpointRef JSON.

    target 'local' runs Ray Train in this task's machine/pod; 'rayjob' submits a RayJob (image,
    gpu_pool JSON: accelerator, node selector, tolerations) and waits, streaming its status.
    """
    from eyeops.pipeline.steps import train_step

    ref = train_step(
        recipe,
        dataset_path=dataset.path,
        overrides=overrides,
        target=target,
        run_name=run_name,
        out_path=checkpoint.path,
        image=image,
        gpu_pool=gpu_pool,
    )
    checkpoint.metadata.update(
        {
            "uri": ref.uri,
            "fingerprint": ref.fingerprint,
            "step": ref.step,
            "family": ref.family,
            "dataset_fingerprint": ref.dataset_fingerprint,
        }
    )


def component(base_image: str = TRAINER_IMAGE):
    return dsl.component(train, base_image=base_image, install_kfp_package=False)


op = component()
