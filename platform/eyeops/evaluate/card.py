"""A markdown model card: what the model is for, what it was trained and judged on, how it scored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from eyeops.data.schema import ODIR_LABEL_NAMES, Manifest
from eyeops.recipes import Recipe
from eyeops.refs import CheckpointRef, DatasetRef

Rows = Sequence[Mapping[str, str | float | int]]

_SYNTHETIC_WARNING = (
    "> **Warning — synthetic data.** This model was trained and evaluated on procedurally generated "
    "images, not on photographs of patients. Its scores say the pipeline works; they say nothing "
    "about clinical performance. Do not use it on patients."
)


def _table(rows: Rows) -> str:
    if not rows:
        return "_(empty)_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def is_synthetic(recipe: Recipe, manifest: Manifest | None) -> bool:
    """True when the recipe or the dataset says the data is procedurally generated."""
    sources = manifest.sources if manifest else []
    return recipe.data.source == "synthetic" or any("synthetic" in s.lower() for s in sources)


def _labels_text(labels: Sequence[str]) -> str:
    return ", ".join(f"{lab} ({ODIR_LABEL_NAMES[lab]})" if lab in ODIR_LABEL_NAMES else lab for lab in labels)


def render_card(
    recipe: Recipe,
    checkpoint: CheckpointRef,
    dataset: DatasetRef,
    *,
    split: str,
    num_samples: int,
    metrics: Mapping[str, float],
    tables: Mapping[str, Rows],
    notes: Sequence[str] = (),
    manifest: Manifest | None = None,
    labels: Sequence[str] = (),
) -> str:
    """The model card as markdown text."""
    synthetic = is_synthetic(recipe, manifest)
    headline = {k: v for k, v in metrics.items() if "/" not in k and k != "n"}
    out = [f"# Model card — {recipe.register.model_name}", ""]
    if synthetic:
        out += [_SYNTHETIC_WARNING, ""]
    out += [
        f"Recipe `{recipe.name}` (hash `{recipe.fingerprint()[:12]}`), family `{recipe.family}`, "
        f"run `{checkpoint.run_name}`, {checkpoint.step} optimizer steps. "
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    if recipe.description:
        out += [recipe.description.strip(), ""]
    out += [
        "## Intended use",
        "",
        "Research and engineering use: decision support for trained eye-care staff reviewing "
        + (f"images for these findings: {_labels_text(labels)}. " if labels else "ophthalmic cases. ")
        + "Every output must be reviewed by a qualified clinician.",
        "",
        "## Out-of-scope use",
        "",
        "- Autonomous diagnosis, triage or treatment decisions without clinician review.",
        "- Image types, devices or populations absent from the training data "
        "(see data lineage below); findings outside the label set.",
        *(["- Any use on patients: the model has seen synthetic images only."] if synthetic else []),
        "",
        "## Data lineage",
        "",
        f"- Dataset: `{dataset.name or dataset.uri}` — fingerprint `{dataset.fingerprint}`",
        f"- Dataset used in training: fingerprint `{checkpoint.dataset_fingerprint or 'not recorded'}`",
        f"- Evaluated on split `{split}`: {num_samples} samples",
        f"- Checkpoint fingerprint `{checkpoint.fingerprint}`",
    ]
    if manifest is not None:
        out.append(
            f"- Sources: {', '.join(manifest.sources) or 'not recorded'}; "
            f"patient-disjoint splits: {'yes' if manifest.patient_split_ok else 'NO'}; "
            f"quarantined records: {sum(manifest.quarantine_counts.values())}"
        )
        if manifest.counts:
            out += [
                "",
                _table(
                    [{"task/modality/split": k, "samples": v} for k, v in sorted(manifest.counts.items())]
                ),
            ]
    out += ["", "## Metrics", "", _table([{"metric": k, "value": v} for k, v in sorted(headline.items())])]
    for name, rows in tables.items():
        out += ["", f"### {name.replace('_', ' ')}", "", _table(rows)]
    out += ["", "## Known limits", ""]
    limits = list(notes)
    if synthetic:
        limits.append("Trained and evaluated on synthetic images only.")
    if num_samples < 200:
        limits.append(f"Small evaluation set ({num_samples} samples): wide confidence intervals.")
    if manifest is not None and not manifest.patient_split_ok:
        limits.append("Splits are NOT patient-disjoint: scores may be optimistic.")
    limits.append("Thresholds were not calibrated per site; performance under dataset shift is unknown.")
    out += [f"- {line}" for line in limits]
    return "\n".join(out) + "\n"
