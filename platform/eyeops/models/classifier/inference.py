"""fundus-classifier inference: batched multi-label classification behind the InferenceModel protocol."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
from PIL import Image

from eyeops.devices import place, resolve_device
from eyeops.errors import InvalidRequest
from eyeops.inference import Capability, ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.classifier.modeling import FundusClassifier, FundusTransform
from eyeops.models.classifier.spec import ClassifierModel
from eyeops.models.common.calibration import Calibrator, Screening, screen_all


# --- inference -----------------------------------------------------------------------------------
class ClassifierPredictor:
    """A loaded classifier: :class:`eyeops.inference.InferenceModel` with ``classify`` only.

    With a ``calibrator`` (saved by training in the model directory) the logits are temperature
    scaled and every image is screened: an out-of-distribution image gets no findings, only the
    verdict and its message.
    """

    capabilities: frozenset[Capability] = frozenset({"classify"})
    tasks: Mapping[str, Capability] = MappingProxyType({})
    default_task: str | None = None

    def __init__(
        self,
        model: FundusClassifier,
        spec: ClassifierModel,
        threshold: float,
        device: str | torch.device,
        calibrator: Calibrator | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model, self.spec, self.threshold = place(model, self.device).eval(), spec, threshold
        self.labels = list(spec.labels)
        self.transform = FundusTransform(spec.image_size, circular_crop=spec.circular_crop)
        self.calibrator = calibrator

    @torch.inference_mode()
    def _scores(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[Screening | None]]:
        if not images:
            return np.zeros((0, len(self.labels)), dtype=np.float32), []
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        features, logits = self.model.embed(batch)
        if self.calibrator is not None:
            logits = self.calibrator.scale(logits.float())
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        return probs, screen_all(self.calibrator, features)

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, num_labels) sigmoid probabilities of the (temperature-scaled) logits."""
        return self._scores(images)[0]

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        probabilities, screenings = self._scores(images)
        results = []
        for row, screening in zip(probabilities, screenings, strict=True):
            probs = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
            findings = sorted(
                (lb for lb, p in probs.items() if p >= self.threshold), key=lambda lb: -probs[lb]
            )
            verdict = screening.answer_fields() if screening is not None else {}
            if screening is not None and screening.out_of_distribution:
                findings = []  # the model knows nothing about such images: no findings to report
            results.append(ClassifyResult(probabilities=probs, findings=findings, **verdict))
        return results

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        raise InvalidRequest("this model is a fundus classifier: it cannot generate text (use classify)")

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        raise InvalidRequest("this model is a fundus classifier: it cannot stream text (use classify)")
