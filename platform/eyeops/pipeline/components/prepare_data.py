"""prepare_data: materialise the recipe's dataset (``eyeops.pipeline.steps.prepare_step``)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from eyeops.kube.objects import TRAINER_IMAGE


def prepare_data(
    recipe: str, data_source: str, overrides: str, pipeline_run_id: str, dataset: Output[Dataset]
):
    """Import or generate the recipe's data; ``dataset`` holds the DatasetRef JSON."""
    from eyeops.pipeline.steps import prepare_step

    ref = prepare_step(
        recipe,
        data_source=data_source,
        overrides=overrides,
        pipeline_run_id=pipeline_run_id,
        out_path=dataset.path,
    )
    dataset.metadata.update({"uri": ref.uri, "fingerprint": ref.fingerprint, "num_samples": ref.num_samples})


def component(base_image: str = TRAINER_IMAGE):
    return dsl.component(prepare_data, base_image=base_image, install_kfp_package=False)


op = component()
