"""Quality gates every image and record passes before it is stored.

- decode every image (missing / zero-byte / non-image / truncated → quarantined with the reason);
- re-encode from bare pixels after applying EXIF orientation, so EXIF, ICC, XMP and text chunks
  are gone; files are named by pixel hash, never by the source name (which often holds an id);
- de-identify patients with HMAC-SHA256 (see :func:`resolve_salt` for the salt policy);
- drop exact duplicate samples, flag near-duplicate images by perceptual hash;
- split by patient (or other group), stratified by label, and verify no patient spans two splits.

Decoding runs on a thread pool: PIL releases the GIL while it decodes, resizes and encodes, and
JPEGs are decoded at reduced scale (``draft``) when the target is much smaller than the source.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from eyeops.data.records import ImageInput
from eyeops.data.schema import Split

__all__ = [
    "ImageResult",
    "check_patient_split",
    "deidentify",
    "find_near_duplicates",
    "ingest_images",
    "process_image",
    "resolve_salt",
    "split_groups",
]

SALT_ENV = "EYEOPS_DEID_SALT"
Image.MAX_IMAGE_PIXELS = 200_000_000  # fundus montages are large; beyond this is a decompression bomb


@dataclass(frozen=True)
class ImageResult:
    """Outcome of ingesting one source image: a stored file, or the reason it was rejected."""

    key: str
    ref: str
    rel_path: str | None = None
    sha256: str = ""  # of the stored file
    bytes: int = 0
    pixel_hash: str = ""  # sha256 of the stored RGB pixels: exact-duplicate identity
    phash: str = ""  # perceptual hash (hex): near-duplicate identity
    width: int = 0
    height: int = 0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _decode(image: ImageInput, size: int) -> Image.Image:
    """Decoded, oriented, RGB pixels with the longer side equal to ``size``; raises ValueError."""
    if image.array is not None:
        pil = Image.fromarray(np.ascontiguousarray(image.array)).convert("RGB")
    else:
        path = Path(image.path or "")
        if not path.is_file():
            raise ValueError("file not found")
        if path.stat().st_size == 0:
            raise ValueError("empty file (0 bytes)")
        try:
            pil = Image.open(path)
        except UnidentifiedImageError:
            raise ValueError("not an image (format not recognised)") from None
        except Image.DecompressionBombError as exc:
            raise ValueError(f"image too large: {exc}") from None
        with pil:
            try:
                if pil.format == "JPEG":  # decode at 1/2, 1/4, 1/8 scale directly from DCT
                    pil.draft("RGB", (size, size))
                pil.load()
                pil = ImageOps.exif_transpose(pil).convert("RGB")
            except (OSError, SyntaxError, ValueError) as exc:
                raise ValueError(f"truncated or corrupt image ({exc})") from None
    if min(pil.size) < 8:
        raise ValueError(f"image too small ({pil.width}x{pil.height} px)")
    scale = size / max(pil.size)
    if scale != 1.0:
        target = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return pil


def process_image(image: ImageInput, *, size: int, fmt: str, images_dir: Path) -> ImageResult:
    """Decode, check, strip metadata, hash and store one image. Never raises for bad input."""
    try:
        pil = _decode(image, size)
    except ValueError as exc:
        return ImageResult(key=image.key, ref=image.ref, reason=str(exc))
    pixels = np.asarray(pil)
    pixel_hash = hashlib.sha256(pixels.tobytes() + repr(pixels.shape).encode()).hexdigest()
    # A fresh image from bare pixels carries no EXIF/ICC/XMP/text from the source.
    clean = Image.fromarray(pixels, mode="RGB")
    buf = io.BytesIO()
    if fmt == "png":
        clean.save(buf, format="PNG", compress_level=1)
    else:
        clean.save(buf, format="JPEG", quality=95, subsampling=0)
    data = buf.getvalue()
    rel = f"images/{pixel_hash[:24]}.{'png' if fmt == 'png' else 'jpg'}"
    target = images_dir.parent / rel
    if not target.exists():  # content-addressed: identical pixels are stored once
        tmp = target.with_suffix(target.suffix + f".{os.getpid()}.{id(data)}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return ImageResult(
        key=image.key,
        ref=image.ref,
        rel_path=rel,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        pixel_hash=pixel_hash,
        phash=str(imagehash.phash(clean, hash_size=16)),
        width=clean.width,
        height=clean.height,
    )


def ingest_images(
    images: Iterable[ImageInput],
    *,
    out_dir: str | Path,
    size: int,
    fmt: str = "png",
    workers: int | None = None,
    progress=None,
) -> dict[str, ImageResult]:
    """Ingest every distinct image (by :attr:`ImageInput.key`) on a thread pool; results by key."""
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"image format must be 'png' or 'jpeg', got {fmt!r}")
    images_dir = Path(out_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    unique: dict[str, ImageInput] = {}
    for image in images:
        unique.setdefault(image.key, image)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    results: dict[str, ImageResult] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(
            lambda im: process_image(im, size=size, fmt=fmt, images_dir=images_dir), unique.values()
        ):
            results[result.key] = result
            if progress is not None:
                progress()
    return results


# --- de-identification -----------------------------------------------------------------------------
def resolve_salt() -> tuple[bytes, str]:
    """The de-identification salt and a description of the policy for the manifest.

    ``EYEOPS_DEID_SALT`` (a secret, e.g. from a Kubernetes Secret): the same patient gets the same
    pseudonym in every dataset and re-run, so patient-level splits can hold across datasets and the
    fingerprint is reproducible. Without it a random per-dataset salt is used and then discarded:
    pseudonyms cannot be linked across datasets nor reversed by hashing guessed ids (ODIR ids are
    small integers), at the price of byte-identical re-runs.
    """
    salt = os.environ.get(SALT_ENV)
    if salt:
        return salt.encode(), f"hmac-sha256, secret salt from ${SALT_ENV} (stable across datasets)"
    return secrets.token_bytes(32), "hmac-sha256, random per-dataset salt (discarded; not linkable)"


def deidentify(raw_id: str, salt: bytes) -> str:
    """A pseudonymous patient id: ``p-`` + 20 hex of HMAC-SHA256(salt, raw id)."""
    return "p-" + hmac.new(salt, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


# --- duplicates ---------------------------------------------------------------------------------------
def find_near_duplicates(phashes: dict[str, str], max_distance: int = 12) -> list[tuple[str, str]]:
    """Pairs of distinct images whose 256-bit perceptual hashes differ in ≤ ``max_distance`` bits."""
    names = sorted(phashes)
    if len(names) < 2:
        return []
    bits = np.stack([np.unpackbits(np.frombuffer(bytes.fromhex(phashes[n]), np.uint8)) for n in names])
    bits = bits.astype(np.int16)
    pairs: list[tuple[str, str]] = []
    chunk = 512  # bounded memory: chunk × N × 256 comparisons at a time
    for start in range(0, len(names), chunk):
        block = bits[start : start + chunk]
        dist = block.shape[1] - (block @ bits.T + (1 - block) @ (1 - bits).T)  # Hamming distance
        rows, cols = np.nonzero(dist <= max_distance)
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + i < j:
                pairs.append((names[start + i], names[j]))
    return pairs


# --- splitting -----------------------------------------------------------------------------------------
def split_groups(
    strata: dict[str, str], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, Split]:
    """Assign every group (patient) to one split, stratified by ``strata`` (e.g. its rarest label).

    Groups are shuffled within each stratum and dealt to the split furthest below its share, in
    that stratum plus overall, so every label with a few patients reaches val and test and the
    overall fractions stay on target.
    """
    targets = {
        Split.TRAIN: 1.0 - val_fraction - test_fraction,
        Split.VAL: val_fraction,
        Split.TEST: test_fraction,
    }
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for group in sorted(strata):
        by_stratum[strata[group]].append(group)
    overall: Counter[Split] = Counter()
    assigned: dict[str, Split] = {}
    total = 0
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        rng.shuffle(members)
        local: Counter[Split] = Counter()
        for i, group in enumerate(members, 1):
            total += 1
            # Local deficit keeps each label in every split; the overall deficit keeps the totals
            # on target even when every stratum is tiny.
            split = max(targets, key=lambda s: targets[s] * (i + total) - local[s] - overall[s])
            assigned[group] = split
            local[split] += 1
            overall[split] += 1
    return assigned


def check_patient_split(rows: Sequence[tuple[str | None, Split | None]]) -> tuple[bool, list[str]]:
    """(ok, offending patient ids) for (patient_id, split) pairs: no patient in two splits."""
    seen: dict[str, set] = defaultdict(set)
    for patient, split in rows:
        if patient is not None:
            seen[patient].add(split)
    bad = sorted(p for p, splits in seen.items() if len(splits) > 1)
    return not bad, bad
