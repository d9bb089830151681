"""deploy: serve the new champion (``eyeops.pipeline.steps.deploy_step``)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from eyeops.kube.objects import TRAINER_IMAGE


def deploy(
    recipe: str, model: Input[Model], overrides: str, backend: str, image: str, endpoint: Output[Artifact]
) -> str:
    """Start/refresh the local server or create/patch the InferenceService/RayService; returns the URL."""
    from eyeops.pipeline.steps import deploy_step

    ref = deploy_step(
        recipe,
        version_path=model.path,
        overrides=overrides,
        backend=backend,
        out_path=endpoint.path,
        image=image,
    )
    endpoint.metadata.update({"url": ref.url, "backend": ref.backend, "version": ref.version})
    return ref.url


def component(base_image: str = TRAINER_IMAGE):
    return dsl.component(deploy, base_image=base_image, install_kfp_package=False)


op = component()
