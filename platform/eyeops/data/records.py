"""What importers and the generator hand to the quality stage, before anything is written.

A :class:`RawRecord` still holds raw patient identifiers and source image locations; ``prepare``
turns it into a :class:`~eyeops.data.schema.Sample` only after decoding, de-identification and
splitting, so nothing raw ever reaches the Parquet table or the manifest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eyeops.data.findings import Finding
from eyeops.data.schema import Eye, Message, Modality, QuarantineEntry, Task


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One source image: a file on disk or pixels in memory (synthetic)."""

    ref: str  # where it came from, without PHI: "data.csv#row=17:Left-Fundus"
    path: str | None = None
    array: np.ndarray | None = None

    @property
    def key(self) -> str:
        """Identity for decoding once: the file path, or the ref for in-memory pixels."""
        return self.path if self.path is not None else f"mem:{self.ref}"


@dataclass(frozen=True)
class RawRecord:
    """One future sample with its raw identifiers."""

    key: str  # stable and PHI-free within the source, used in the sample id
    task: Task
    where: str  # "file row N" for quarantine reports
    images: tuple[ImageInput, ...] = ()
    target: ImageInput | None = None  # generate_image: the image the answer is (Sample.target_image)
    patient: str | None = None  # RAW id: hashed before anything is written
    eye: Eye | None = None
    modality: Modality = Modality.NONE
    messages: tuple[Message, ...] = ()
    answer: str | None = None
    options: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    findings: tuple[Finding, ...] = ()
    source: str = "unknown"
    license: str = "unknown"
    group: str | None = None  # split unit when there is no patient (a dialogue, a topic)
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportResult:
    """An importer's output: usable records plus the rows it rejected (never dropped silently)."""

    records: list[RawRecord] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    filtered: Counter[str] = field(default_factory=Counter)  # rows a filter left out, by reason
    notes: dict[str, str] = field(default_factory=dict)  # how the file was read (e.g. answer index base)
    masked: Counter[str] = field(default_factory=Counter)  # identifiers masked in free text, by kind
    generation: dict[str, Any] = field(default_factory=dict)  # the LLM engine's report (manifest)
    mix: list[dict[str, Any]] = field(default_factory=list)  # per-source counts of a mixed dataset

    def reject(self, where: str, reason: str) -> None:
        self.quarantine.append(QuarantineEntry(path=where, reason=reason))

    def skip(self, reason: str) -> None:
        """A valid row the filter leaves out: counted, not quarantined."""
        self.filtered[reason] += 1

    def counts(self) -> dict[str, int]:
        """``kept`` / ``filtered`` / ``rejected`` rows, for the manifest."""
        return {
            "kept": len(self.records),
            "filtered": sum(self.filtered.values()),
            "rejected": len(self.quarantine),
        }
