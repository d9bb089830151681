"""Ingest throughput: eyeops' image ingest vs a plain PIL decode + resize of the same files.

Sources are full-size fundus JPEGs made from scikit-image's real retina photograph (1411×1411,
CC0), each slightly different. The baseline opens, converts and resizes every file to 256 px in
one thread and writes nothing. eyeops' ingest does strictly more per image (EXIF orientation,
metadata strip, pixel sha256, 256-bit perceptual hash, PNG encode, file write) but decodes JPEGs
at reduced DCT scale and spreads the work over a thread pool.

    python benchmarks/ingest.py [--n 48] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from skimage import data as skdata

from eyeops.data.quality import ingest_images
from eyeops.data.records import ImageInput


def make_sources(folder: Path, n: int) -> list[Path]:
    retina = Image.fromarray(skdata.retina())
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        angle = float(rng.uniform(-8, 8))
        img = ImageEnhance.Brightness(retina.rotate(angle)).enhance(float(rng.uniform(0.9, 1.1)))
        path = folder / f"src_{i:04d}.jpg"
        img.save(path, quality=95)
        paths.append(path)
    return paths


def plain_pil(paths: list[Path], size: int) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            scale = size / max(rgb.size)
            rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BICUBIC)
    return time.perf_counter() - start


def eyeops_ingest(paths: list[Path], size: int, out: Path) -> float:
    start = time.perf_counter()
    results = ingest_images([ImageInput(ref=p.name, path=str(p)) for p in paths], out_dir=out, size=size)
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results.values()), "benchmark sources must all ingest"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eyeops-bench-") as tmp:
        root = Path(tmp)
        (root / "src").mkdir()
        paths = make_sources(root / "src", args.n)
        for p in paths:  # warm the page cache so both sides read from memory
            p.read_bytes()
        base = min(plain_pil(paths, args.size) for _ in range(args.repeats))
        ours = min(eyeops_ingest(paths, args.size, root / f"out{r}") for r in range(args.repeats))
    base_rate, our_rate = args.n / base, args.n / ours
    ratio = our_rate / base_rate
    print(f"sources: {args.n} JPEGs 1411x1411 → {args.size}px, cpus={os.cpu_count()}, {platform.machine()}")
    print(f"plain PIL decode+resize (1 thread, no output): {base_rate:8.1f} images/s")
    print(f"eyeops ingest (decode, strip, hash, phash, PNG, write): {our_rate:8.1f} images/s")
    print(f"ratio eyeops/plain: {ratio:.2f}x")
    print(
        f"RESULTS.md | ingest | {args.n} fundus JPEGs 1411px → {args.size}px | {our_rate:.1f} img/s vs "
        f"{base_rate:.1f} img/s plain PIL | {ratio:.2f}x |"
    )


if __name__ == "__main__":
    main()
