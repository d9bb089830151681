"""Typed hand-offs between stages.

``prepare -> DatasetRef``, ``train -> CheckpointRef``, ``evaluate -> EvalReport``,
``register -> ModelVersionRef``, ``deploy -> Endpoint``. Each is small, frozen and JSON
serialisable, and points at its content by URI (local path, ``file://`` or ``s3://``) plus a
fingerprint, so any stage can run in another process or pod and lineage stays explicit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Ref(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetRef(_Ref):
    """A prepared dataset directory: ``samples.parquet``, ``images/``, ``manifest.json``."""

    uri: str = Field(description="Local path, file:// or s3:// URI of the dataset directory.")
    fingerprint: str = Field(description="Manifest fingerprint: sha256 over every file's sha256.")
    name: str = ""
    num_samples: int = 0


class CheckpointRef(_Ref):
    """A trained model directory written by ``Family.save`` (loadable with ``Family.load``)."""

    uri: str
    fingerprint: str = Field(description="sha256 over the model directory's files.")
    recipe_name: str
    family: str
    run_name: str
    step: int = Field(description="Optimizer steps taken in total (across resumes).")
    resumed_from_step: int | None = Field(None, description="Step of the checkpoint a retry resumed from.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Last reported training metrics.")
    dataset_fingerprint: str = ""
    ray_checkpoint_uri: str | None = Field(None, description="Latest Ray Train checkpoint (for resume).")


class EvalReport(_Ref):
    """Evaluation of one checkpoint on one dataset split."""

    uri: str = Field(description="Directory with metrics.json, tables, plots and the model card.")
    split: str
    num_samples: int
    metrics: dict[str, float] = Field(
        description="Flat metrics, e.g. macro_auc, f1/D, modality/fundus/macro_auc."
    )
    primary_metric: str
    tables: dict[str, list[dict[str, str | float | int]]] = Field(
        default_factory=dict, description="Breakdown tables (per class, per modality, per eye) as rows."
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="name -> path of plots / card / tables."
    )

    @property
    def primary_value(self) -> float:
        return self.metrics[self.primary_metric]


class ModelVersionRef(_Ref):
    """A registered MLflow model version and the gate's decision about it."""

    name: str
    version: int
    alias: Literal["champion", "challenger"]
    run_id: str
    model_uri: str = Field(description="models:/<name>/<version>")
    gate_passed: bool
    gate_reason: str
    metric: str
    value: float
    champion_value: float | None = None


class Endpoint(_Ref):
    """A running model endpoint."""

    url: str = Field(description="Base URL of the gateway (…/v1/classify, …/v1/chat/completions).")
    backend: Literal["local", "kserve", "ray"]
    model_name: str
    version: int
    pid: int | None = Field(None, description="Local serving process id (embedded mode).")
