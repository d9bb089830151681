"""A run journal: one JSON line per pipeline stage attempt (stage, timing, key metric, artefacts).

``run_local`` points ``EYEOPS_PIPELINE_JOURNAL`` at a file; every step run by kfp.local inherits
the variable and appends its record, including the precise error of a failed step, which kfp.local
itself reduces to "task failed". On a cluster the variable is unset and recording is a no-op
(the KFP UI holds the same facts).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from eyeops.errors import EyeopsError

JOURNAL_ENV = "EYEOPS_PIPELINE_JOURNAL"


class StageRecord(BaseModel):
    """What one attempt of one stage did."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    status: str = Field("running", description="succeeded | failed")
    started_at: str = ""
    duration_s: float = 0.0
    metric: str | None = None
    value: float | None = None
    artifacts: dict[str, str] = Field(default_factory=dict, description="name -> URI")
    ref: dict = Field(default_factory=dict, description="The stage's output ref as JSON.")
    error_type: str | None = None
    error: str | None = None


@contextmanager
def stage(name: str) -> Iterator[StageRecord]:
    """Time a stage and append its record (success or failure) to the journal, if one is set."""
    record = StageRecord(stage=name, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    start = time.perf_counter()
    try:
        yield record
        record.status = "succeeded"
    except EyeopsError as exc:
        record.status, record.error_type, record.error = "failed", type(exc).__name__, str(exc)
        raise
    except Exception as exc:  # unexpected: still journal it so the summary names the step
        record.status, record.error_type, record.error = "failed", type(exc).__name__, repr(exc)
        raise
    finally:
        record.duration_s = round(time.perf_counter() - start, 2)
        _append(record)


def _append(record: StageRecord) -> None:
    path = os.environ.get(JOURNAL_ENV)
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:  # one short line: atomic enough for one writer
        handle.write(record.model_dump_json() + "\n")


def read_journal(path: str | Path) -> list[StageRecord]:
    path = Path(path)
    if not path.is_file():
        return []
    return [StageRecord.model_validate(json.loads(line)) for line in path.read_text().splitlines() if line]
