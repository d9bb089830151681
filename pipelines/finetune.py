"""The fine-tuning pipeline, for readers and for KFP tooling run from a checkout: package code in
:mod:`eyeops.pipeline.finetune`; ``make pipelines`` compiles it into ``pipelines/compiled/``."""

from eyeops.pipeline.finetune import PIPELINE_NAME, ClusterTarget, build_pipeline

__all__ = ["PIPELINE_NAME", "ClusterTarget", "build_pipeline"]
