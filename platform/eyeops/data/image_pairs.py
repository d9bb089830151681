"""Image-generation samples with target images (HealthGPT's generation tasks).

Each ``generate_image`` sample pairs a prompt (and, except for text-to-image, an input image) with
the image the answer must be (:attr:`~eyeops.data.records.RawRecord.target`). From one labelled
fundus photograph the engine derives one sample per task:

- ``reconstruction`` — input and target are the photograph itself;
- ``super_resolution`` — the input is the photograph downscaled ``SR_FACTOR``× (stored at the
  dataset's size, so it is blurred, as a low-resolution capture upsampled), the target the original;
- ``modality_conversion`` — the target is a fluorescein-angiogram-style rendering of the same eye
  (grey, vessels and disc bright, background dark): a paired second modality;
- ``text_to_image`` — no input image; the prompt names the eye and the findings, the target is the
  photograph.

The task is recorded in ``meta["generation"]`` (``meta["target_modality"]`` for conversions), so
evaluation can score each task on its own. Synthetic renderings are labelled as such: the angiogram
is a deterministic transform of the photograph, not a real FFA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from eyeops.data.records import ImageInput, RawRecord
from eyeops.data.schema import IMAGE_TOKEN, ODIR_LABEL_NAMES, Message, Modality, Task

__all__ = [
    "GENERATION_PROMPTS",
    "GENERATION_TASKS",
    "SR_FACTOR",
    "angiogram",
    "downscaled",
    "generation_prompt",
    "generation_records",
]

GENERATION_TASKS = ("reconstruction", "super_resolution", "modality_conversion", "text_to_image")
SR_FACTOR = 4
# The user turn of each task; text_to_image is filled with the eye and the findings.
GENERATION_PROMPTS = {
    "reconstruction": f"{IMAGE_TOKEN}\nReconstruct this fundus photograph as an image.",
    "super_resolution": f"{IMAGE_TOKEN}\nThis fundus photograph is low resolution: generate it sharp.",
    "modality_conversion": f"{IMAGE_TOKEN}\nConvert this colour fundus photograph into an angiogram.",
    "text_to_image": "Generate a colour fundus photograph of {eye} showing {findings}.",
}
_EYES = {"OD": "a right eye", "OS": "a left eye", "OU": "an eye"}


def generation_prompt(task: str, *, eye: str | None = None, findings: Sequence[str] = ()) -> str:
    """The user turn of a generation ``task`` (text_to_image: built from ``eye`` and ``findings``)."""
    if task not in GENERATION_PROMPTS:
        raise ValueError(f"unknown generation task {task!r} (known: {', '.join(GENERATION_TASKS)})")
    if task != "text_to_image":
        return GENERATION_PROMPTS[task]
    seen = ", ".join(dict.fromkeys(findings)) or "a normal retina"
    return GENERATION_PROMPTS[task].format(eye=_EYES.get(eye or "", "an eye"), findings=seen)


def downscaled(pixels: np.ndarray, factor: int = SR_FACTOR) -> np.ndarray:
    """The low-resolution input of super-resolution: ``factor``× smaller (box filter)."""
    image = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    small = (max(1, image.width // factor), max(1, image.height // factor))
    return np.asarray(image.resize(small, Image.Resampling.BOX))


def angiogram(pixels: np.ndarray) -> np.ndarray:
    """A fluorescein-angiogram-style rendering: vessels and disc bright on a dark grey fundus.

    The green channel carries the vessel contrast of a colour photograph (vessels dark); its local
    darkness (blurred minus sharp) becomes the dye-filled vessels, the bright disc stays bright.
    """
    rgb = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    green = np.asarray(rgb, np.float32)[..., 1] / 255.0
    radius = max(1.0, rgb.width / 64)
    blurred = np.asarray(
        Image.fromarray((green * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)), np.float32
    )
    vessels = np.clip(blurred / 255.0 - green, 0.0, None)
    field = (np.asarray(rgb, np.float32).max(-1) > 20).astype(np.float32)  # the camera's circular field
    disc = np.clip((green - 0.75) * 4.0, 0.0, 1.0)
    grey = np.clip(0.25 * green + 4.0 * vessels + 0.6 * disc, 0.0, 1.0) * field
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _pixels(image: ImageInput) -> np.ndarray:
    if image.array is not None:
        return np.asarray(image.array)
    with Image.open(image.path or "") as pil:
        return np.asarray(pil.convert("RGB"))


def _label_words(labels: Sequence[int], label_names: Sequence[str]) -> list[str]:
    codes = [name for name, on in zip(label_names, labels, strict=False) if on and name != "N"]
    return [ODIR_LABEL_NAMES.get(code, code) for code in codes]


def generation_records(
    record: RawRecord, tasks: Sequence[str] = GENERATION_TASKS, *, label_names: Sequence[str] = ()
) -> list[RawRecord]:
    """One ``generate_image`` record per task from a record with one fundus image.

    Records without exactly one image yield nothing. Derived images are in-memory arrays with refs
    under the source's, so quarantine reports still point at the source row.
    """
    if len(record.images) != 1:
        return []
    source = record.images[0]
    pixels = _pixels(source) if {"super_resolution", "modality_conversion"} & set(tasks) else None
    findings = [f.description for f in record.findings] or _label_words(record.labels, label_names)
    eye = record.eye.value if record.eye else None
    out = []
    for task in tasks:
        images: tuple[ImageInput, ...] = (source,)
        target = source
        meta = {**record.meta, "generation": task}
        if task == "super_resolution":
            assert pixels is not None
            images = (ImageInput(ref=f"{source.ref}:x{SR_FACTOR}-down", array=downscaled(pixels)),)
        elif task == "modality_conversion":
            assert pixels is not None
            target = ImageInput(ref=f"{source.ref}:angiogram", array=angiogram(pixels))
            meta["target_modality"] = Modality.FFA.value
        elif task == "text_to_image":
            images = ()
        prompt = generation_prompt(task, eye=eye, findings=findings)
        out.append(
            replace(
                record,
                key=f"{record.key}-gen-{task}",
                task=Task.GENERATE_IMAGE,
                images=images,
                target=target,
                messages=(Message(role="user", content=prompt),),
                answer=None,
                options=(),
                meta=meta,
            )
        )
    return out
