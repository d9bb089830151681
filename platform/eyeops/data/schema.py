"""The data model every stage shares: one ``Sample`` per Parquet row, a ``Manifest`` per dataset,
and a ``DatasetRef`` (URI + fingerprint, defined in ``eyeops.refs``) passed between stages."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from eyeops.refs import DatasetRef

ODIR_LABELS: tuple[str, ...] = ("N", "D", "G", "C", "A", "H", "M", "O")
ODIR_LABEL_NAMES: dict[str, str] = {
    "N": "normal",
    "D": "diabetic retinopathy",
    "G": "glaucoma",
    "C": "cataract",
    "A": "age-related macular degeneration",
    "H": "hypertensive retinopathy",
    "M": "pathological myopia",
    "O": "other abnormality",
}


class Eye(StrEnum):
    OD = "OD"  # right eye
    OS = "OS"  # left eye
    OU = "OU"  # both eyes


class Modality(StrEnum):
    FUNDUS = "fundus"
    OCT = "oct"
    FFA = "ffa"
    ICGA = "icga"
    SLIT_LAMP = "slit_lamp"
    UBM = "ubm"
    CT = "ct"
    FLUORESCEIN_STAINING = "fluorescein_staining"
    EXTERNAL = "external"
    MRI = "mri"  # benchmarks beyond the eye (VQA-RAD, SLAKE, OmniMedVQA)
    XRAY = "xray"
    OTHER = "other"  # any other imaging; the source's own name is kept in meta["modality"]
    NONE = "none"


class Task(StrEnum):
    CLASSIFY = "classify"
    CLOSED_QA = "closed_qa"
    OPEN_QA = "open_qa"
    REPORT = "report"
    DIALOGUE = "dialogue"
    MCQ = "mcq"
    TEXT_QA = "text_qa"
    PRETRAIN_TEXT = "pretrain_text"
    GENERATE_IMAGE = "generate_image"


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Message(BaseModel):
    """One chat turn; a user turn may contain ``<image>`` placeholders, one per entry of ``images``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str


IMAGE_TOKEN = "<image>"

__all__ = [
    "IMAGE_TOKEN",
    "ODIR_LABELS",
    "ODIR_LABEL_NAMES",
    "DatasetRef",
    "Eye",
    "FileEntry",
    "Manifest",
    "Message",
    "Modality",
    "QuarantineEntry",
    "Sample",
    "Split",
    "Task",
]


class Sample(BaseModel):
    """One row of a dataset's Parquet table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique within the dataset.")
    patient_id: str | None = Field(None, description="Salted hash of the source patient id; never raw.")
    eye: Eye | None = None
    modality: Modality = Modality.NONE
    images: list[str] = Field(default_factory=list, description="Paths relative to the dataset root.")
    target_image: str | None = Field(
        None,
        description="Image-generation target (path relative to the dataset root): the image a "
        "generate_image sample answers with (super-resolved, converted modality, drawn from text).",
    )
    task: Task
    messages: list[Message] = Field(default_factory=list)
    answer: str | None = Field(None, description="Target text (answer letter, free text or report).")
    options: list[str] = Field(default_factory=list, description="Closed-QA / MCQ options, in order.")
    labels: list[int] = Field(default_factory=list, description="Multi-hot over the dataset label set.")
    source: str = "unknown"
    license: str = "unknown"
    split: Split | None = None
    meta: dict[str, str] = Field(default_factory=dict, description="Free string metadata (topic, keywords).")

    @field_validator("labels")
    @classmethod
    def _multi_hot(cls, value: list[int]) -> list[int]:
        if any(v not in (0, 1) for v in value):
            raise ValueError(f"labels must be multi-hot 0/1, got {value}")
        return value


class QuarantineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(description="Path of the rejected file/record as given by the source (no PHI).")
    reason: str
    sample_id: str | None = None


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    sha256: str
    bytes: int


class Manifest(BaseModel):
    """What a prepared dataset contains; written as ``manifest.json`` next to the Parquet table."""

    model_config = ConfigDict(extra="forbid")

    name: str
    label_names: list[str] = Field(default_factory=list)
    files: list[FileEntry] = Field(default_factory=list)
    counts: dict[str, int] = Field(
        default_factory=dict, description="Sample counts keyed 'task/modality/split'."
    )
    quarantine: list[QuarantineEntry] = Field(default_factory=list)
    quarantine_counts: dict[str, int] = Field(default_factory=dict, description="Rejected records by reason.")
    near_duplicates: list[tuple[str, str]] = Field(default_factory=list)
    patient_split_ok: bool = Field(True, description="No patient id appears in two splits.")
    sources: list[str] = Field(default_factory=list)
    fingerprint: str = Field("", description="sha256 over the sorted file hashes.")
    created_at: str = ""
    image_format: str = Field("", description="'png' (lossless) or 'jpeg' (q95) for stored images.")
    image_size: int | None = Field(None, description="Longer side of stored images in pixels.")
    deid: str = Field("", description="How patient ids were pseudonymised (salt policy).")
    patients_per_split: dict[str, int] = Field(default_factory=dict)
    duplicates_dropped: int = Field(0, description="Exact duplicate samples removed.")
    spec: dict[str, Any] = Field(default_factory=dict, description="The DataSpec that produced it.")
    benchmark: str | None = Field(None, description="Benchmark layout of an evaluation-only dataset.")
    filter: list[str] = Field(
        default_factory=list, description="Subject/keyword filter the importer applied."
    )
    import_counts: dict[str, int] = Field(
        default_factory=dict, description="Importer rows kept / filtered / rejected."
    )
    filtered_counts: dict[str, int] = Field(default_factory=dict, description="Rows filtered out, by reason.")
    import_notes: dict[str, str] = Field(default_factory=dict, description="How the source was read.")
    masked: dict[str, int] = Field(
        default_factory=dict, description="Identifiers masked in free text (dialogues), by kind."
    )
    generation: dict[str, Any] = Field(
        default_factory=dict,
        description="LLM engine: endpoint, model, prompts, calls, counts (generated / verified / "
        "rejected) and every verdict; empty for the template engine.",
    )
    mix: list[dict[str, Any]] = Field(
        default_factory=list, description="Mixed datasets: each source's weight, cap and counts."
    )
