"""The pipeline layer: KFP steps, local runs (kfp.local), compilation for a cluster, run summaries.

Public API: :func:`run_local`, :func:`compile_pipeline`, :func:`compile_all`,
:class:`PipelineSummary`, :func:`summary_table`. kfp and the stage libraries are imported only
when a run or a compile starts.
"""

from eyeops.pipeline.compile import compile_all, compile_pipeline
from eyeops.pipeline.local import run_local
from eyeops.pipeline.summary import PipelineSummary, StageRow, summary_table

__all__ = ["PipelineSummary", "StageRow", "compile_all", "compile_pipeline", "run_local", "summary_table"]
