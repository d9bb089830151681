"""The pipeline layer: KFP steps, local runs (kfp.local), compilation for a cluster, run summaries.

Public API: :func:`run_local`, :func:`compile_pipeline`, :func:`compile_all`,
:class:`PipelineSummary`, :func:`summary_table`. Heavy imports (kfp, stage libraries) are deferred.
"""

from eyeops.pipeline.summary import PipelineSummary, StageRow, summary_table


def run_local(*args, **kwargs) -> PipelineSummary:
    from eyeops.pipeline.local import run_local as _run_local

    return _run_local(*args, **kwargs)


def compile_pipeline(*args, **kwargs):
    from eyeops.pipeline.compile import compile_pipeline as _compile

    return _compile(*args, **kwargs)


def compile_all(*args, **kwargs):
    from eyeops.pipeline.compile import compile_all as _compile_all

    return _compile_all(*args, **kwargs)


__all__ = ["PipelineSummary", "StageRow", "compile_all", "compile_pipeline", "run_local", "summary_table"]
