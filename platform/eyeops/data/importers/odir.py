"""ODIR-5K: one spreadsheet row per patient, a fundus photograph of each eye.

Columns ``ID, Patient Age, Patient Sex, Left-Fundus, Right-Fundus, Left-Diagnostic Keywords,
Right-Diagnostic Keywords, N, D, G, C, A, H, M, O`` (csv or xlsx). The N…O columns are
patient-level; each eye's own labels come from its diagnostic keywords (so a unilateral
cataract does not label the healthy eye), and the row's columns are checked against them.
"""

from __future__ import annotations

import re
from pathlib import Path

from eyeops.data.findings import Finding
from eyeops.data.importers._common import read_rows, require_columns, source_path, text, where
from eyeops.data.records import ImageInput, ImportResult, RawRecord
from eyeops.data.schema import ODIR_LABELS, Eye, Modality, Task

__all__ = ["COLUMNS", "keyword_codes", "load"]

COLUMNS = (
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    *ODIR_LABELS,
)
# Keywords about the photograph, not the eye: they carry no label.
_QUALITY = ("lens dust", "low image quality", "image offset", "optic disk photographically invisible")
_NOT_FUNDUS = ("no fundus image", "anterior segment image")
_RULES = (  # (pattern, code) in priority order; anything else abnormal is O (other)
    (r"normal fundus", "N"),
    (r"diabetic|non ?proliferative|proliferative", "D"),
    (r"glaucoma", "G"),
    (r"cataract", "C"),
    (r"macular degeneration", "A"),
    (r"hypertensi", "H"),
    (r"myopi", "M"),
)
_IMAGE_DIRS = ("", "Training Images", "images", "ODIR-5K_Training_Images", "Testing Images")


def keyword_codes(keywords: str) -> tuple[list[str], list[str], bool]:
    """``(codes, keywords, is_fundus)`` for one eye's keyword string (ODIR separates with ，or ,)."""
    words = [w.strip() for w in re.split(r"[，,;]", keywords) if w.strip()]
    codes: list[str] = []
    fundus = True
    for word in words:
        low = word.lower()
        if any(q in low for q in _NOT_FUNDUS):
            fundus = False
            continue
        if any(q in low for q in _QUALITY):
            continue
        code = next((c for pattern, c in _RULES if re.search(pattern, low)), "O")
        if code not in codes:
            codes.append(code)
    if len(codes) > 1 and "N" in codes:
        codes.remove("N")
    return codes or ["N"], words, fundus


def _find_image(base: Path, name: str) -> Path:
    for sub in _IMAGE_DIRS:
        candidate = base / sub / name
        if candidate.is_file():
            return candidate
    return base / name


def load(path: str | None, *, kind: str = "odir", image_dir: str | None = None) -> ImportResult:
    """Two records (OD, OS) per valid row; invalid rows and non-fundus images are quarantined."""
    src = source_path(path, kind=kind)
    base = Path(image_dir) if image_dir else src.parent
    rows = list(read_rows(src))
    require_columns(src, rows[0][1] if rows else None, COLUMNS)
    result = ImportResult(label_names=list(ODIR_LABELS))
    for row_no, row in rows:
        patient = text(row["ID"])
        if not patient:
            result.reject(where(src, row_no, "ID"), "empty patient ID")
            continue
        flags, bad = [], None
        for code in ODIR_LABELS:
            value = text(row[code])
            if value not in ("0", "1", "0.0", "1.0"):
                bad = (code, value)
                break
            flags.append(int(float(value)))
        if bad is not None:
            result.reject(where(src, row_no, bad[0]), f"label must be 0 or 1, got {bad[1]!r}")
            continue
        patient_codes = "".join(c for c, f in zip(ODIR_LABELS, flags, strict=True) if f)
        age = text(row["Patient Age"])
        meta = {"patient_labels": patient_codes, "sex": text(row["Patient Sex"]).lower()}
        if age.isdigit():  # a decade band: age is a quasi-identifier
            meta["age_band"] = f"{min(int(age), 90) // 10 * 10}s"
        eye_codes = set()
        for eye, side in ((Eye.OD, "Right"), (Eye.OS, "Left")):
            name = text(row[f"{side}-Fundus"])
            codes, words, fundus = keyword_codes(text(row[f"{side}-Diagnostic Keywords"]))
            ref = where(src, row_no, f"{side}-Fundus")
            if not name:
                result.reject(ref, "no image file named")
                continue
            if not fundus:
                result.reject(ref, f"not a fundus photograph (keywords: {', '.join(words)})")
                continue
            eye_codes.update(codes)
            labels = tuple(int(c in codes) for c in ODIR_LABELS)
            findings = tuple(
                Finding(label=keyword_codes(w)[0][0], description=w)
                for w in words
                if not any(q in w.lower() for q in _QUALITY + _NOT_FUNDUS)
            )
            result.records.append(
                RawRecord(
                    key=f"{row_no:05d}-{eye}",
                    task=Task.CLASSIFY,
                    where=where(src, row_no),
                    images=(ImageInput(ref=ref, path=str(_find_image(base, name))),),
                    patient=patient,
                    eye=eye,
                    modality=Modality.FUNDUS,
                    labels=labels,
                    findings=findings,
                    source="odir",
                    license="ODIR-5K (research use)",
                    meta={**meta, "keywords": ", ".join(words)},
                )
            )
        # The columns describe the patient: they must agree with what the eyes' keywords say.
        expected = "".join(c for c in ODIR_LABELS if c in eye_codes and (c != "N" or eye_codes == {"N"}))
        if eye_codes and expected != patient_codes:
            for record in result.records[-2:]:
                if record.key.startswith(f"{row_no:05d}-"):
                    record.meta["label_check"] = f"columns {patient_codes or '-'} vs keywords {expected}"
    return result
