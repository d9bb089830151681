"""Calibrated probabilities and an out-of-distribution screen, fitted after training, saved with a model.

Two things travel in a model directory, beside the weights, so every server and the MLflow pyfunc
(which all load the directory through ``Family.load``) apply them:

- **temperature scaling** (Guo et al. 2017, "On calibration of modern neural networks"): the head's
  logits are divided by a temperature fitted on the validation split by minimising the binary
  cross-entropy -- one temperature for every label, or one per label. It changes how confident the
  probabilities are, never their order within a label.
- **a k-nearest-neighbour feature distance** (Sun et al. 2022, "Out-of-distribution detection with
  deep nearest neighbors"): the cosine distance from an image's backbone features (every stage's
  channel means, :func:`stage_means`) to its k-th nearest neighbour among the training images'.
  The threshold is a quantile (default 0.95)
  of the same score on held-out in-distribution images (the validation split; without one,
  leave-one-out over the training images), so about 5% of unseen in-distribution images are flagged.

The distance, not the energy of the logits, because the logits are what goes wrong: a head trained on
synthetic fundus images answers a real photograph with confident findings, while the photograph's
features lie far from every training image's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from eyeops.errors import ConfigError
from eyeops.models.common.calibration_spec import OODSpec

CALIBRATION_FILE = "calibration.json"
REFERENCE_FILE = "ood_reference.safetensors"
OOD_MESSAGE = "outside what this model was trained on"
OOD_ANSWER = f"This image is {OOD_MESSAGE}, so the model gives no answer about it."
T = TypeVar("T")
TemperatureMode = Literal["global", "per_label", "none"]
# A temperature outside this range means the fit ran away (e.g. a label with one class only).
_T_MIN, _T_MAX = 0.05, 20.0
_MIN_VAL = 4  # fewer validation images than this: no temperature is fitted


class Screening(BaseModel):
    """The OOD verdict on one input (the fields every classify and VLM answer carries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    out_of_distribution: bool
    ood_score: float = Field(description="k-NN cosine distance to the training images (higher: stranger).")
    ood_threshold: float = Field(description="Scores above this are flagged.")

    def answer_fields(self) -> dict[str, object]:
        """The fields of a :class:`~eyeops.inference.ClassifyResult`/``GenerationResult``."""
        return {**self.model_dump(), "message": OOD_MESSAGE if self.out_of_distribution else None}


class CalibrationRecord(BaseModel):
    """``calibration.json``: what was fitted, on how much data, and how it moved the validation loss."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature_mode: TemperatureMode
    temperature: list[float] = Field(description="One per label, one for all, or none (no scaling).")
    ood_method: Literal["knn_cosine"] = "knn_cosine"
    ood_neighbours: int | None = None
    ood_quantile: float | None = None
    ood_threshold: float | None = None
    reference_count: int = 0
    held_out: Literal["val", "leave_one_out", "none"] = "none"
    counts: dict[str, int] = Field(default_factory=dict, description="Images used per split.")
    val_nll: dict[str, float] = Field(default_factory=dict, description="BCE before/after scaling.")
    notes: list[str] = Field(default_factory=list)


def stage_means(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[N, sum(C)]``: each feature map's channel means (over space), L2-normalised per map.

    The screen compares these rather than the pooled pre-logits: covariate shift (a real photograph
    against rendered training images) shows in the low- and mid-level statistics, and on the
    synthetic-trained classifier the multi-stage means put the scikit-image retina at about 3x the
    threshold where pre-logits put it at about 2x (docs/architecture.md, "Calibration").
    """
    return torch.cat([F.normalize(m.float().mean(dim=(2, 3)), dim=1) for m in maps], dim=1)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items (images are read lazily, a batch at a time)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- fitting -------------------------------------------------------------------------------------
def reference_rows(n: int, max_reference: int, seed: int) -> torch.Tensor:
    """Indices of the OOD screen's neighbours among ``n`` training items: all of them, or a seeded
    random ``max_reference`` (never the first ones: a dataset's order is not random)."""
    if n <= max_reference:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_reference]


def _bce(logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits / temperature, targets)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, mode: TemperatureMode) -> torch.Tensor:
    """Temperatures minimising the BCE of ``sigmoid(logits / T)`` (shape ``[1]`` or ``[labels]``).

    A per-label temperature whose label holds a single class in ``targets`` (nothing to calibrate
    against) takes the global temperature instead.
    """
    logits, targets = logits.double(), targets.double()
    if mode == "none":
        return torch.ones(1, dtype=torch.float64)
    width = 1 if mode == "global" else logits.shape[1]
    log_t = torch.zeros(width, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _bce(logits, targets, log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = log_t.detach().exp().clamp(_T_MIN, _T_MAX)
    if mode == "per_label":
        one_class = (targets.min(0).values == targets.max(0).values).nonzero().flatten()
        if len(one_class):
            temperature[one_class] = fit_temperature(logits, targets, "global")
    if not torch.isfinite(temperature).all() or _bce(logits, targets, temperature) > _bce(
        logits, targets, torch.ones(1, dtype=torch.float64)
    ):
        return torch.ones(width, dtype=torch.float64)  # never worse than no scaling on the fit data
    return temperature


def knn_distance(
    features: torch.Tensor, reference: torch.Tensor, k: int, *, leave_one_out: bool = False
) -> torch.Tensor:
    """Cosine distance from each row of ``features`` to its k-th nearest row of ``reference``.

    Both are L2-normalised here. ``leave_one_out``: ``features`` *is* ``reference`` and each row's
    match with itself is skipped.
    """
    query = F.normalize(features.float(), dim=1)
    bank = F.normalize(reference.float(), dim=1)
    distance = 1.0 - query @ bank.T
    if leave_one_out:
        distance.fill_diagonal_(float("inf"))
    k = min(k, bank.shape[0] - (1 if leave_one_out else 0))
    if k < 1:
        raise ConfigError("the OOD screen needs at least two training images")
    return distance.topk(k, dim=1, largest=False).values[:, -1]


def fit_calibration(
    *,
    ood: OODSpec,
    temperature_mode: TemperatureMode,
    train_features: torch.Tensor,
    val_features: torch.Tensor | None = None,
    val_logits: torch.Tensor | None = None,
    val_targets: torch.Tensor | None = None,
    seed: int = 0,
) -> Calibrator:
    """Fit the temperature on the validation logits and the OOD threshold on validation features."""
    notes: list[str] = []
    counts = {"train": int(train_features.shape[0])}
    n_val = 0 if val_features is None else int(val_features.shape[0])
    if n_val:
        counts["val"] = n_val
    temperature, val_nll = [], {}
    if temperature_mode != "none" and val_logits is not None and val_targets is not None:
        if len(val_logits) >= _MIN_VAL:
            t = fit_temperature(val_logits, val_targets, temperature_mode)
            temperature = [float(v) for v in t]
            val_nll = {
                "before": float(_bce(val_logits.double(), val_targets.double(), torch.ones(1))),
                "after": float(_bce(val_logits.double(), val_targets.double(), t)),
            }
        else:
            notes.append(f"temperature not fitted: {len(val_logits)} validation images (need {_MIN_VAL})")
    elif temperature_mode != "none":
        notes.append("temperature not fitted: no validation split")

    reference, threshold, held_out = None, None, "none"
    if ood.enabled:
        reference = train_features.float()
        if reference.shape[0] > ood.max_reference:
            reference = reference[reference_rows(reference.shape[0], ood.max_reference, seed)]
            notes.append(f"OOD reference: {ood.max_reference} of {counts['train']} training images")
        if n_val >= _MIN_VAL:
            scores, held_out = knn_distance(val_features, reference, ood.neighbours), "val"
        else:
            scores = knn_distance(reference, reference, ood.neighbours, leave_one_out=True)
            held_out = "leave_one_out"
            notes.append("OOD threshold from leave-one-out training scores (no validation split)")
        threshold = float(np.quantile(scores.numpy(), ood.quantile))
        reference = F.normalize(reference, dim=1).contiguous()
    record = CalibrationRecord(
        temperature_mode=temperature_mode if temperature else "none",
        temperature=temperature,
        ood_neighbours=ood.neighbours if ood.enabled else None,
        ood_quantile=ood.quantile if ood.enabled else None,
        ood_threshold=threshold,
        reference_count=0 if reference is None else int(reference.shape[0]),
        held_out=held_out,
        counts=counts,
        val_nll=val_nll,
        notes=notes,
    )
    return Calibrator(record, reference)


# --- applying ------------------------------------------------------------------------------------
class Calibrator:
    """The fitted temperature and OOD screen of one model, as loaded from its directory."""

    def __init__(self, record: CalibrationRecord, reference: torch.Tensor | None) -> None:
        if (record.ood_threshold is None) != (reference is None):
            raise ConfigError("calibration: an OOD threshold needs its reference features and vice versa")
        self.record, self.reference = record, reference
        self._temperature = torch.tensor(record.temperature or [1.0], dtype=torch.float32)

    @property
    def screens(self) -> bool:
        return self.reference is not None

    def scale(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / T`` (unchanged when no temperature was fitted)."""
        if not self.record.temperature:
            return logits
        return logits / self._temperature.to(logits.device)

    def screen(self, features: torch.Tensor) -> list[Screening | None]:
        """The OOD verdict per row of pooled features (``None`` each when there is no screen)."""
        if self.reference is None or self.record.ood_threshold is None:
            return [None] * len(features)
        k = self.record.ood_neighbours or 1
        scores = knn_distance(features.float().cpu(), self.reference, k).tolist()
        threshold = self.record.ood_threshold
        return [
            Screening(
                out_of_distribution=s > threshold,
                ood_score=round(float(s), 6),
                ood_threshold=round(threshold, 6),
            )
            for s in scores
        ]

    def save(self, model_dir: Path) -> None:
        from safetensors.torch import save_file

        model_dir = Path(model_dir)
        (model_dir / CALIBRATION_FILE).write_text(self.record.model_dump_json(indent=2))
        if self.reference is not None:
            save_file({"features": self.reference.contiguous()}, str(model_dir / REFERENCE_FILE))

    @classmethod
    def load(cls, model_dir: Path) -> Calibrator | None:
        """The calibration saved in ``model_dir``; ``None`` for a model saved without one."""
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            record = CalibrationRecord.model_validate(json.loads(path.read_text()))
        except ValueError as exc:
            raise ConfigError(f"{path}: not a valid calibration record ({exc})") from None
        reference = None
        if record.ood_threshold is not None:
            from safetensors.torch import load_file

            ref_path = Path(model_dir) / REFERENCE_FILE
            if not ref_path.is_file():
                raise ConfigError(f"{path} has an OOD threshold but {ref_path.name} is missing")
            reference = load_file(str(ref_path))["features"].float()
        return cls(record, reference)


def screen_all(calibrator: Calibrator | None, features: torch.Tensor) -> list[Screening | None]:
    """``calibrator.screen(features)``, or no verdicts for a model without a calibration."""
    return [None] * len(features) if calibrator is None else calibrator.screen(features)


def worst(screenings: Sequence[Screening | None]) -> Screening | None:
    """One verdict for several images (a VLM request): the highest score relative to its threshold."""
    found = [s for s in screenings if s is not None]
    if not found:
        return None
    return max(found, key=lambda s: s.ood_score - s.ood_threshold)
