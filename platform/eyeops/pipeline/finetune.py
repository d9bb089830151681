"""The fine-tuning pipeline: prepare → train → evaluate → register → (gate passed) → deploy.

``build_pipeline()`` returns the ``@dsl.pipeline`` function. Embedded runs (kfp.local) use it as
is; ``build_pipeline(cluster=ClusterTarget(...))`` attaches the Kubernetes specifics with
kfp-kubernetes — GPU accelerator and limit, GPU node-pool selector and tolerations on the train
task (and on the evaluate task when the recipe's ``evaluate.device`` is ``cuda[:N]``), Secrets as
env on every task. Components never carry Kubernetes settings themselves.
"""

from kfp import dsl
from kfp import kubernetes as kfp_k8s
from pydantic import BaseModel, ConfigDict, Field

from eyeops.kube.objects import (
    DEFAULT_CONFIG_ENV,
    DEFAULT_SECRET_ENV,
    HF_TOKEN_SECRET,
    LLM_API_KEY_SECRET,
    SERVER_IMAGE,
    TRAINER_IMAGE,
    ConfigEnv,
    GpuPool,
    SecretEnv,
)
from eyeops.pipeline.components import deploy, evaluate, prepare_data, register, train

PIPELINE_NAME = "eyeops-finetune"


class ClusterTarget(BaseModel):
    """Kubernetes settings compiled into the pipeline for a cluster run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    image: str = Field(TRAINER_IMAGE, description="The eyeops image every task (and RayJob pod) runs.")
    serve_image: str = Field(SERVER_IMAGE, description="The image of the endpoints the deploy step creates.")
    pool: GpuPool = Field(default_factory=GpuPool)
    # The S3 keys, and the Hugging Face token of gated repos where Secret eyeops-hf-token exists.
    secret_env: tuple[SecretEnv, ...] = (*DEFAULT_SECRET_ENV, HF_TOKEN_SECRET)
    # The LLM data engine's endpoint key, where Secret eyeops-llm-api-key exists: the prepare task only.
    prepare_secret_env: tuple[SecretEnv, ...] = (LLM_API_KEY_SECRET,)
    config_env: tuple[ConfigEnv, ...] = DEFAULT_CONFIG_ENV
    train_retries: int = Field(2, ge=0)
    evaluate_gpus: int = Field(
        0, ge=0, description="GPUs of the evaluate task (recipe evaluate.device: cuda → 1, cuda:N → N+1)."
    )


def _settings_as_env(
    task: dsl.PipelineTask, cluster: ClusterTarget, extra: tuple[SecretEnv, ...] = ()
) -> None:
    """Secrets (credentials) and the ConfigMap (storage root, MLflow URL) as the task's env."""
    secrets: dict[str, dict[str, str]] = {}
    for item in (*cluster.secret_env, *extra):
        secrets.setdefault(item.secret, {})[item.key] = item.env
    for name, keys in sorted(secrets.items()):
        kfp_k8s.use_secret_as_env(
            task, secret_name=name, secret_key_to_env=dict(sorted(keys.items())), optional=True
        )
    maps: dict[str, dict[str, str]] = {}
    for item in cluster.config_env:
        maps.setdefault(item.config_map, {})[item.key] = item.env
    for name, keys in sorted(maps.items()):
        kfp_k8s.use_config_map_as_env(
            task, config_map_name=name, config_map_key_to_env=dict(sorted(keys.items())), optional=True
        )


def _on_gpu_pool(task: dsl.PipelineTask, pool: GpuPool, gpus: int, cpu: str, memory: str) -> None:
    """``gpus`` of the pool's accelerator, its nodeSelector and tolerations, and CPU/memory limits."""
    task.set_accelerator_type(pool.accelerator).set_accelerator_limit(gpus)
    task.set_cpu_limit(cpu).set_memory_limit(memory)
    for key, value in sorted(pool.node_selector.items()):
        kfp_k8s.add_node_selector(task, label_key=key, label_value=value)
    for tol in pool.tolerations:
        kfp_k8s.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)


def build_pipeline(cluster: ClusterTarget | None = None, *, train_retries: int = 1):
    """The ``@dsl.pipeline`` function; ``cluster`` adds the Kubernetes specifics (compile only)."""
    image = cluster.image if cluster else TRAINER_IMAGE
    serve_image = cluster.serve_image if cluster else SERVER_IMAGE
    prepare_op, train_op, evaluate_op, register_op, deploy_op = (
        module.component(image) for module in (prepare_data, train, evaluate, register, deploy)
    )
    pool_json = cluster.pool.model_dump_json() if cluster else ""
    retries = cluster.train_retries if cluster else train_retries

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="eyeops fine-tuning: data → Ray Train → evaluation → MLflow gate → serving.",
    )
    def finetune(
        recipe: str = "fundus-classifier",
        data_source: str = "",
        overrides: str = "{}",
        train_target: str = "local",
        deploy_backend: str = "",
    ):
        run_id, run_name = dsl.PIPELINE_JOB_ID_PLACEHOLDER, dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        prep = prepare_op(recipe=recipe, data_source=data_source, overrides=overrides, pipeline_run_id=run_id)
        dataset = prep.outputs["dataset"]
        fit = train_op(
            recipe=recipe,
            dataset=dataset,
            overrides=overrides,
            target=train_target,
            run_name=run_name,
            image=image,
            gpu_pool=pool_json,
        )
        # Ray Train resumes from its last checkpoint inside one attempt; a retry covers a lost pod.
        fit.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
        checkpoint = fit.outputs["checkpoint"]
        score = evaluate_op(recipe=recipe, checkpoint=checkpoint, dataset=dataset, overrides=overrides)
        gate = register_op(
            recipe=recipe,
            checkpoint=checkpoint,
            report=score.outputs["report"],
            dataset=dataset,
            overrides=overrides,
            pipeline_run_id=run_id,
            pipeline_run_name=run_name,
        )
        # kfp.local resolves only a component's single return value ("Output") in conditions.
        with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition, not Python
            serve = deploy_op(
                recipe=recipe,
                model=gate.outputs["model"],
                overrides=overrides,
                backend=deploy_backend,
                image=serve_image,
            )
        for task in (prep, fit, score, gate, serve):
            task.set_caching_options(False)  # every run is a new experiment; never reuse a stale stage
        if cluster is not None:
            _on_gpu_pool(fit, cluster.pool, max(1, cluster.pool.gpus_per_worker), "8", "32G")
            if cluster.evaluate_gpus:  # the recipe's evaluate.device asks for CUDA: it gets the GPU
                _on_gpu_pool(score, cluster.pool, cluster.evaluate_gpus, "4", "32G")
            for task in (prep, fit, score, gate, serve):
                _settings_as_env(task, cluster, cluster.prepare_secret_env if task is prep else ())
                task.set_env_variable("EYEOPS_MODE", "cluster")

    return finetune
