"""The MLflow pyfunc wrapper around a family's model directory.

The logged model carries the family's saved directory (weights, recipe, transforms) as the
artifact ``model_dir`` and the family name in ``model_config``; loading it goes through
``eyeops.families.get_family(family).load`` like every other consumer, so MLflow serving, our
servers and the evaluator all run the same inference code. Two interfaces, chosen by the
recipe's typed model spec (a label set means a classifier):

- ``classify``: column ``image`` (base64) → one probability column per label, then
  ``out_of_distribution`` and ``ood_score`` when the model has an OOD screen;
- ``chat``: column ``prompt`` (+ optional base64 ``image``) → column ``text`` (+ the same two
  columns when an image was screened).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image, ImageDraw, UnidentifiedImageError

from eyeops.data.schema import IMAGE_TOKEN, Message
from eyeops.errors import InvalidRequest
from eyeops.inference import GenerationRequest

IMAGE_COLUMN = "image"
PROMPT_COLUMN = "prompt"
TEXT_COLUMN = "text"
OOD_COLUMN, OOD_SCORE_COLUMN = "out_of_distribution", "ood_score"


# What the pyfunc imports at load time. Listed explicitly because MLflow's default inference
# re-imports the model in a subprocess (~10 s per log); eyeops itself ships in the serving image.
_RUNTIME_DISTS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "pillow",
    "pandas",
    "numpy",
    "pyyaml",
    "pydantic",
    "pydantic-settings",
)


def pip_requirements() -> list[str]:
    """Pinned requirements of the runtime distributions installed here."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in _RUNTIME_DISTS:
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def classify_signature(labels: list[str]) -> ModelSignature:
    """Input: a DataFrame column of base64-encoded images; output: one probability column per label,
    then the out-of-distribution verdict (absent for a model saved without an OOD screen)."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema(
            [ColSpec("double", label) for label in labels]
            + [
                ColSpec("boolean", OOD_COLUMN, required=False),
                ColSpec("double", OOD_SCORE_COLUMN, required=False),
            ]
        ),
    )


def chat_signature() -> ModelSignature:
    """Input: a ``prompt`` and an optional base64 ``image``; output: the generated ``text``."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", PROMPT_COLUMN), ColSpec("string", IMAGE_COLUMN, required=False)]),
        outputs=Schema(
            [
                ColSpec("string", TEXT_COLUMN),
                ColSpec("boolean", OOD_COLUMN, required=False),
                ColSpec("double", OOD_SCORE_COLUMN, required=False),
            ]
        ),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 128)]),
    )


def chat_example_input() -> pd.DataFrame:
    return pd.DataFrame({PROMPT_COLUMN: ["What is glaucoma?"]})


def example_input() -> pd.DataFrame:
    """A drawn fundus-like disc — never a dataset image, so no patient pixels reach the registry."""
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).ellipse((4, 4, 60, 60), fill=(170, 70, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(buf.getvalue()).decode("ascii")]})


def decode_image(value: object, row: int) -> Image.Image:
    if not isinstance(value, str | bytes):
        raise InvalidRequest(
            f"row {row}, column {IMAGE_COLUMN!r}: expected base64 text, got {type(value).__name__}"
        )
    text = value.decode() if isinstance(value, bytes) else value
    if text.startswith("data:"):  # accept data: URLs as the gateway does
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=True)
        image = Image.open(io.BytesIO(raw))
        return image.convert("RGB")
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"row {row}, column {IMAGE_COLUMN!r}: not valid base64 ({exc})") from None
    except (UnidentifiedImageError, OSError):
        raise InvalidRequest(f"row {row}, column {IMAGE_COLUMN!r}: not a decodable image") from None


class EyeopsPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the family model dir; ``predict`` classifies images or answers prompts (see module doc)."""

    def load_context(self, context) -> None:
        from eyeops.devices import resolve_device
        from eyeops.families import get_family

        config = context.model_config or {}
        self.model_dir = Path(context.artifacts["model_dir"])
        self.task = config.get("task", "classify")
        # EYEOPS_DEVICE where the pyfunc is served (auto: the accelerator when present).
        self.model = get_family(config["family"]).load(self.model_dir, device=resolve_device(None))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if self.task == "chat":
            return self._chat(model_input, params or {})
        if "classify" not in self.model.capabilities:
            raise InvalidRequest(
                f"model capabilities {sorted(self.model.capabilities)} do not include classify"
            )
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise InvalidRequest(f"expected a DataFrame with a {IMAGE_COLUMN!r} column of base64 images")
        images = [decode_image(v, i) for i, v in enumerate(model_input[IMAGE_COLUMN].tolist())]
        results = self.model.classify(images)
        columns = list(self.model.labels)
        if any(r.out_of_distribution is not None for r in results):
            columns += [OOD_COLUMN, OOD_SCORE_COLUMN]
        rows = [
            {**r.probabilities, OOD_COLUMN: r.out_of_distribution, OOD_SCORE_COLUMN: r.ood_score}
            for r in results
        ]
        return pd.DataFrame(rows, columns=columns)

    def _chat(self, model_input: pd.DataFrame, params: dict) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or PROMPT_COLUMN not in model_input.columns:
            raise InvalidRequest(f"expected a DataFrame with a {PROMPT_COLUMN!r} column")
        has_image = IMAGE_COLUMN in model_input.columns
        requests = []
        for i, row in enumerate(model_input.to_dict("records")):
            prompt = row[PROMPT_COLUMN]
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidRequest(f"row {i}, column {PROMPT_COLUMN!r}: expected non-empty text")
            images = []
            if has_image and isinstance(row[IMAGE_COLUMN], str | bytes):
                images = [decode_image(row[IMAGE_COLUMN], i)]
                if IMAGE_TOKEN not in prompt:  # one image, placed before the question
                    prompt = f"{IMAGE_TOKEN}\n{prompt}"
            requests.append(
                GenerationRequest(
                    messages=[Message(role="user", content=prompt)],
                    images=images,
                    max_new_tokens=int(params.get("max_new_tokens", 128)),
                )
            )
        results = self.model.generate(requests)
        frame = pd.DataFrame({TEXT_COLUMN: [r.text for r in results]})
        if any(r.out_of_distribution is not None for r in results):
            frame[OOD_COLUMN] = [r.out_of_distribution for r in results]
            frame[OOD_SCORE_COLUMN] = [r.ood_score for r in results]
        return frame
