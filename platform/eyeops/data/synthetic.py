"""Procedural colour fundus photographs whose ODIR labels are visible in the pixels.

The embedded default trains on these, so every sign is drawn clearly and only by its own label:
DR → microaneurysms, blot haemorrhages, hard exudates; AMD → macular drusen; glaucoma → large
cup-to-disc ratio; cataract → media haze and blur; myopia → choroidal tessellation, tilted disc
and peripapillary atrophy; hypertension → narrowed tortuous arterioles and cotton-wool spots;
other → old chorioretinal scars; normal → none of these. Shapes are drawn with PIL (C speed) and
composited with numpy, so hundreds of 256 px images take seconds. Each image has its own
``default_rng([seed, index])``: output is reproducible and independent of generation order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from eyeops.data.findings import Finding
from eyeops.data.schema import ODIR_LABELS, Eye

__all__ = ["COMORBID_PAIRS", "SyntheticImage", "generate", "render_fundus"]

# Pairs seen together in clinics (shared risk factors); other combinations are not generated so
# that every sign stays readable (e.g. heavy cataract never hides early DR dots).
COMORBID_PAIRS: tuple[tuple[str, str], ...] = (
    ("D", "H"),
    ("G", "M"),
    ("A", "C"),
    ("A", "H"),
    ("D", "G"),
    ("G", "C"),
    ("M", "C"),
    ("D", "O"),
)
_DISEASES = ("D", "G", "C", "A", "H", "M", "O")
_BILATERAL = {"D", "H", "M"}  # systemic or refractive: both eyes
_QUADRANTS = ("superotemporal", "inferotemporal", "superonasal", "inferonasal")


@dataclass(frozen=True)
class SyntheticImage:
    """One generated photograph with its ground truth."""

    image: np.ndarray  # H×W×3 uint8
    patient: str
    eye: Eye
    labels: tuple[int, ...]  # multi-hot over ODIR_LABELS
    findings: tuple[Finding, ...]
    index: int


def _multi_hot(codes: Sequence[str]) -> tuple[int, ...]:
    chosen = set(codes) or {"N"}
    return tuple(int(code in chosen) for code in ODIR_LABELS)


def _patient_diseases(rng: np.random.Generator, pair_fraction: float) -> list[str]:
    # One share per class (N included) keeps every label frequent enough to learn and to score.
    if rng.random() < pair_fraction:
        return list(COMORBID_PAIRS[rng.integers(len(COMORBID_PAIRS))])
    pick = rng.integers(len(_DISEASES) + 1)
    return [] if pick == len(_DISEASES) else [_DISEASES[pick]]


def generate(
    n: int, *, seed: int = 0, size: int = 256, pair_fraction: float = 0.15
) -> Iterator[SyntheticImage]:
    """``n`` images from ``ceil(n/2)`` patients, right then left eye of each, reproducibly."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 64:
        raise ValueError(f"size must be >= 64 px to draw lesions, got {size}")
    index = 0
    for k in range(math.ceil(n / 2)):
        prng = np.random.default_rng([seed, k, 7])
        diseases = _patient_diseases(prng, pair_fraction)
        affected = {e: set(diseases) for e in (Eye.OD, Eye.OS)}
        for code in diseases:
            if code not in _BILATERAL and prng.random() < 0.3:  # some unilateral disease
                affected[Eye.OD if prng.random() < 0.5 else Eye.OS].discard(code)
        for eye in (Eye.OD, Eye.OS):
            if index >= n:
                return
            codes = sorted(affected[eye], key=ODIR_LABELS.index)
            rng = np.random.default_rng([seed, index])
            pixels, findings = render_fundus(codes, eye=eye, size=size, rng=rng)
            yield SyntheticImage(
                pixels, f"SYN-{seed}-{k:06d}", eye, _multi_hot(codes), tuple(findings), index
            )
            index += 1


# --- drawing helpers -------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates, distance from the centre and the camera aperture (shared, read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - size / 2.0, yy - size / 2.0)
    edge = np.clip((0.47 * size - r) / (0.01 * size), 0, 1)[..., None]
    for a in (xx, yy, r, edge):
        a.setflags(write=False)
    return xx, yy, r, edge


def _gauss_spot(
    img: np.ndarray, xx: np.ndarray, yy: np.ndarray, centre: tuple[float, float], sigma: float, amount: float
) -> None:
    """Multiply (amount<0 darkens) or add a Gaussian spot, computed only within 3 sigma."""
    h, w = img.shape[:2]
    x0, x1 = max(int(centre[0] - 3 * sigma), 0), min(int(centre[0] + 3 * sigma) + 1, w)
    y0, y1 = max(int(centre[1] - 3 * sigma), 0), min(int(centre[1] + 3 * sigma) + 1, h)
    d2 = (xx[y0:y1, x0:x1] - centre[0]) ** 2 + (yy[y0:y1, x0:x1] - centre[1]) ** 2
    g = np.exp(-d2 / sigma**2)[..., None]
    if amount < 0:
        img[y0:y1, x0:x1] *= 1.0 + amount * g
    else:
        img[y0:y1, x0:x1] += amount * g


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a small random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _composite(
    img: np.ndarray, mask: Image.Image, colour: Sequence[float], blur: float = 0.0, strength: float = 1.0
) -> None:
    """Paint ``colour`` into ``img`` through ``mask``, touching only the mask's bounding box."""
    box = mask.getbbox()
    if box is None:
        return
    pad = math.ceil(3 * blur) + 1
    x0, y0 = max(box[0] - pad, 0), max(box[1] - pad, 0)
    x1, y1 = min(box[2] + pad, mask.width), min(box[3] + pad, mask.height)
    crop = mask.crop((x0, y0, x1, y1))
    if blur:
        crop = crop.filter(ImageFilter.GaussianBlur(blur))
    alpha = np.asarray(crop, dtype=np.float32)[..., None] * (strength / 255.0)
    region = img[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += alpha * np.asarray(colour, dtype=np.float32)


def _quadrant(x: float, y: float, cx: float, cy: float, temporal_sign: float) -> str:
    vertical = "superior" if y < cy else "inferior"
    side = "temporal" if (x - cx) * temporal_sign > 0 else "nasal"
    return f"{vertical[:-3]}o{side}"  # superotemporal, inferonasal, …


def _spots(
    rng: np.random.Generator,
    count: int,
    centre: tuple[float, float],
    r_min: float,
    r_max: float,
    avoid: tuple[float, float, float],
) -> list[tuple[float, float]]:
    """Uniform points in an annulus around ``centre``, outside the ``avoid`` circle (the disc)."""
    angle = rng.uniform(0, 2 * np.pi, count * 2)
    radius = np.sqrt(rng.uniform(r_min**2, r_max**2, count * 2))
    xs, ys = centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)
    keep = np.hypot(xs - avoid[0], ys - avoid[1]) > avoid[2]
    return list(zip(xs[keep][:count].tolist(), ys[keep][:count].tolist(), strict=True))


def _dots(size: int, points: Sequence[tuple[float, float]], radii: np.ndarray) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for (x, y), r in zip(points, radii, strict=False):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return mask


def _vessel_paths(
    rng: np.random.Generator, s: int, disc: tuple[float, float], fovea: tuple[float, float], tortuosity: float
) -> list[tuple[np.ndarray, float]]:
    """Polylines of the main vessels (temporal arcades, nasal trunks, branches) with relative width."""
    dx, dy = disc
    toward = 1.0 if fovea[0] > dx else -1.0
    t = np.linspace(0.0, 1.0, 150)
    paths: list[tuple[np.ndarray, float]] = []
    for vertical in (-1.0, 1.0):
        # Temporal arcade: an arc from the disc around the macula, ending temporal to the fovea.
        theta = t * rng.uniform(2.1, 2.5)
        reach, height = (dx - fovea[0]) * (1 + 0.25 * t), s * rng.uniform(0.2, 0.25)
        xs = fovea[0] + reach * np.cos(theta)
        ys = dy + (fovea[1] - dy) * t + vertical * height * np.sin(theta)
        paths.append((np.stack([xs, ys], 1), 1.0))
        for start in rng.uniform(0.25, 0.7, 2):  # branches toward the macula and the periphery
            i = int(start * (len(t) - 1))
            length = s * rng.uniform(0.12, 0.22)
            ang = math.atan2(ys[i] - dy, xs[i] - dx) + vertical * rng.uniform(-0.9, 0.9)
            bx = xs[i] + np.cos(ang) * length * t
            by = ys[i] + np.sin(ang) * length * t
            paths.append((np.stack([bx, by], 1), 0.6))
        # Nasal trunk.
        span = s * rng.uniform(0.25, 0.35)
        xs = dx - toward * span * t
        ys = dy + vertical * s * rng.uniform(0.15, 0.25) * np.sin(t * np.pi / 2 * 1.2)
        paths.append((np.stack([xs, ys], 1), 0.75))
    if tortuosity:
        out = []
        for pts, width in paths:
            seg = np.gradient(pts, axis=0)
            normal = np.stack([-seg[:, 1], seg[:, 0]], 1) / (
                np.linalg.norm(seg, axis=1, keepdims=True) + 1e-6
            )
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
            wiggle = tortuosity * s * np.sin(arc / (0.035 * s) * 2 * np.pi + rng.uniform(0, 6.3))
            out.append((pts + normal * wiggle[:, None] * np.minimum(arc / (0.05 * s), 1.0)[:, None], width))
        paths = out
    return paths


def _draw_vessels(size: int, paths: list[tuple[np.ndarray, float]], base_width: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for pts, rel in paths:
        n = len(pts)
        for i in range(0, n - 1, 15):  # taper: draw in chunks of decreasing width
            width = max(1, round(base_width * rel * (1.0 - 0.6 * i / n)))
            draw.line([tuple(p) for p in pts[i : i + 16].tolist()], fill=255, width=width, joint="curve")
    return mask


# --- the renderer ------------------------------------------------------------------------------------
def render_fundus(
    codes: Sequence[str], *, eye: Eye = Eye.OD, size: int = 256, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, list[Finding]]:
    """Draw one fundus photograph showing exactly the signs of ``codes`` (ODIR codes; [] = normal)."""
    unknown = [c for c in codes if c not in ODIR_LABELS]
    if unknown:
        raise ValueError(f"unknown ODIR label code(s) {unknown}; known: {', '.join(ODIR_LABELS)}")
    rng = rng or np.random.default_rng()
    has = set(codes) - {"N"}
    s = size
    c = s / 2.0
    xx, yy, r, edge = _grid(s)
    radius = 0.47 * s
    findings: list[Finding] = []

    # Background: orange-red retina, per-eye pigmentation, vignetting, smooth texture.
    base = np.array([0.80, 0.38, 0.17], np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    shade = 1.0 - 0.45 * (r / radius) ** 2 + 0.06 * _noise(rng, s, 6)
    img = shade[..., None] * base
    img *= 1.0 + 0.04 * _noise(rng, s, 24)[..., None]

    temporal = -1.0 if eye == Eye.OD else 1.0  # OD: disc on the viewer's right, macula to its left
    fovea = (c + rng.normal(0, 0.01 * s), c + rng.normal(0, 0.01 * s))
    disc = (c - temporal * rng.uniform(0.25, 0.29) * s, c + rng.normal(0, 0.02 * s))
    rd = s * rng.uniform(0.08, 0.09)

    if "M" in has:  # tessellation: dark polygonal spaces between choroidal vessels, everywhere
        ridge = np.exp(-((_noise(rng, s, 14) / 0.12) ** 2)) + np.exp(-((_noise(rng, s, 9) / 0.12) ** 2))
        img *= (0.72 + 0.28 * np.clip(ridge, 0, 1))[..., None]
        img[..., 0] *= 1.05
        findings.append(
            Finding(
                label="M",
                description="diffuse tessellated (tigroid) fundus with visible choroidal vessels",
                location="diffuse",
            )
        )

    _gauss_spot(img, xx, yy, fovea, 0.07 * s, -0.3)  # macular pigment
    _gauss_spot(img, xx, yy, fovea, 0.008 * s, 0.25)  # foveal reflex

    # Optic disc and cup (myopia: tilted oval disc with a temporal atrophy crescent).
    rx, ry, cdr = rd, rd * 1.08, rng.uniform(0.2, 0.42)
    if "M" in has:
        rx, ry = rd * 0.62, rd * 1.12
        crescent = Image.new("L", (s, s), 0)
        shift = temporal * rd * 0.45
        ImageDraw.Draw(crescent).ellipse(
            (
                disc[0] + shift - rd * 1.05,
                disc[1] - ry * 1.02,
                disc[0] + shift + rd * 1.05,
                disc[1] + ry * 1.02,
            ),
            fill=255,
        )
        _composite(img, crescent, (0.93, 0.86, 0.72), blur=1.0)
        findings.append(
            Finding(
                label="M",
                description="tilted oval optic disc with temporal peripapillary atrophy",
                location="optic disc",
            )
        )
    if "G" in has:
        cdr = rng.uniform(0.72, 0.9)
        findings.append(
            Finding(
                label="G",
                description=f"enlarged optic cup, vertical cup-to-disc ratio about "
                f"{cdr:.1f}, with a thin neuroretinal rim",
                location="optic disc",
            )
        )
    disc_mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(disc_mask).ellipse((disc[0] - rx, disc[1] - ry, disc[0] + rx, disc[1] + ry), fill=255)
    _composite(img, disc_mask, (0.96, 0.62, 0.40), blur=0.008 * s)
    cup_mask = Image.new("L", (s, s), 0)
    cx_, cy_ = cdr * rx * 0.95, cdr * ry
    ImageDraw.Draw(cup_mask).ellipse((disc[0] - cx_, disc[1] - cy_, disc[0] + cx_, disc[1] + cy_), fill=255)
    _composite(img, cup_mask, (1.0, 0.96, 0.86), blur=0.004 * s)

    # Vessels: veins darker and wider; hypertension narrows and twists the arterioles.
    hyper = "H" in has
    vein_paths = _vessel_paths(rng, s, disc, fovea, tortuosity=0.006 if hyper else 0.0)
    art_paths = _vessel_paths(
        rng, s, (disc[0], disc[1] + rng.normal(0, 0.01 * s)), fovea, tortuosity=0.012 if hyper else 0.0
    )
    _composite(img, _draw_vessels(s, vein_paths, 0.017 * s), (0.42, 0.07, 0.07), blur=0.5)
    art_width, art_colour = (0.006 * s, (0.86, 0.42, 0.30)) if hyper else (0.012 * s, (0.62, 0.13, 0.09))
    _composite(img, _draw_vessels(s, art_paths, art_width), art_colour, blur=0.4)
    if hyper:
        findings.append(
            Finding(
                label="H",
                description="generalised arteriolar narrowing with increased tortuosity (copper-wire reflex)",
                location="arcades",
            )
        )

    avoid = (disc[0], disc[1], rd * 1.6)
    spot = 0.006 * s  # one "unit" of lesion radius: 1.5 px at 256

    if "D" in has:
        pts = _spots(rng, int(rng.integers(22, 40)), fovea, 0.05 * s, 0.36 * s, avoid)
        _composite(img, _dots(s, pts, rng.uniform(1.0, 1.6, len(pts)) * spot), (0.38, 0.03, 0.04), blur=0.3)
        blots = _spots(rng, int(rng.integers(5, 11)), fovea, 0.08 * s, 0.34 * s, avoid)
        _composite(
            img, _dots(s, blots, rng.uniform(2.2, 3.8, len(blots)) * spot), (0.42, 0.04, 0.05), blur=0.8
        )
        quads = sorted(
            {_quadrant(x, y, fovea[0], fovea[1], temporal) for x, y in pts + blots}, key=_QUADRANTS.index
        )
        findings.append(
            Finding(
                label="D",
                description=f"{len(pts)} microaneurysms and {len(blots)} dot-blot haemorrhages",
                location=", ".join(quads),
            )
        )
        if rng.random() < 0.75:
            centre = _spots(rng, 1, fovea, 0.07 * s, 0.14 * s, avoid)[0]
            ex = _spots(rng, int(rng.integers(8, 20)), centre, 0.0, 0.06 * s, avoid)
            _composite(img, _dots(s, ex, rng.uniform(1.0, 1.8, len(ex)) * spot), (1.0, 0.9, 0.3), blur=0.3)
            findings.append(
                Finding(
                    label="D",
                    description="clustered hard exudates",
                    location=f"{_quadrant(*centre, fovea[0], fovea[1], temporal)} to the fovea",
                )
            )

    if "A" in has:
        dr = _spots(rng, int(rng.integers(18, 36)), fovea, 0.0, 0.12 * s, avoid)
        _composite(img, _dots(s, dr, rng.uniform(1.6, 3.0, len(dr)) * spot), (0.98, 0.93, 0.62), blur=1.0)
        findings.append(Finding(label="A", description=f"{len(dr)} soft confluent drusen", location="macula"))

    if "O" in has:
        sc = _spots(rng, int(rng.integers(14, 26)), (c, c), 0.3 * s, 0.42 * s, avoid)
        radii = rng.uniform(2.4, 3.6, len(sc)) * spot
        _composite(img, _dots(s, sc, radii), (0.22, 0.1, 0.05), blur=0.4)
        _composite(img, _dots(s, sc, radii * 0.5), (0.93, 0.88, 0.75), blur=0.4)
        findings.append(
            Finding(
                label="O",
                description=f"{len(sc)} round pigmented chorioretinal scars",
                location="mid-periphery",
            )
        )

    if hyper:
        cw = _spots(rng, int(rng.integers(3, 6)), disc, rd * 1.8, 0.22 * s, avoid)
        _composite(img, _dots(s, cw, rng.uniform(2.5, 4.0, len(cw)) * spot), (0.96, 0.96, 0.92), blur=1.8)
        findings.append(
            Finding(label="H", description=f"{len(cw)} cotton-wool spots", location="peripapillary")
        )

    if "C" in has:  # media opacity: the whole view is veiled and blurred
        grade = rng.uniform(0.4, 0.6)
        blurred = (
            np.asarray(
                Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).filter(
                    ImageFilter.GaussianBlur(0.014 * s)
                ),
                np.float32,
            )
            / 255.0
        )
        img = blurred * (1 - grade) + grade * np.array([0.78, 0.68, 0.58], np.float32) * shade[..., None]
        findings.append(
            Finding(
                label="C",
                description="hazy media with a blurred view of the disc and vessels",
                location="diffuse",
            )
        )

    img += 0.012 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    img *= edge  # camera aperture: black outside the field of view
    if not findings:
        findings.append(
            Finding(
                label="N",
                description="healthy optic disc, normal vessels and macula, no lesions",
                location="",
            )
        )
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), findings
