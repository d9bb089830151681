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


# --- inference -----------------------------------------------------------------------------------
class ClassifierPredictor:
    """A loaded classifier: :class:`eyeops.inference.InferenceModel` with ``classify`` only."""

    capabilities: frozenset[Capability] = frozenset({"classify"})
    tasks: Mapping[str, Capability] = MappingProxyType({})
    default_task: str | None = None

    def __init__(
        self, model: FundusClassifier, spec: ClassifierModel, threshold: float, device: str | torch.device
    ) -> None:
        self.device = resolve_device(device)
        self.model, self.spec, self.threshold = place(model, self.device).eval(), spec, threshold
        self.labels = list(spec.labels)
        self.transform = FundusTransform(spec.image_size, circular_crop=spec.circular_crop)

    @torch.inference_mode()
    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, num_labels) sigmoid probabilities."""
        if not images:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        return torch.sigmoid(self.model(batch).float()).cpu().numpy()

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        results = []
        for row in self.predict_proba(images):
            probs = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
            findings = sorted(
                (lb for lb, p in probs.items() if p >= self.threshold), key=lambda lb: -probs[lb]
            )
            results.append(ClassifyResult(probabilities=probs, findings=findings))
        return results

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        raise InvalidRequest("this model is a fundus classifier: it cannot generate text (use classify)")

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        raise InvalidRequest("this model is a fundus classifier: it cannot stream text (use classify)")
