"""fundus-classifier calibration: temperature and OOD screen fitted on a trained model's held-out images.

``calibrate_classifier`` runs the trained model (eval transform, no augmentation) over training
images (the OOD screen's neighbours) and validation images (the temperature's fit data and the OOD
threshold's in-distribution scores). The family calls it on rank 0 after the last training step and
saves the result in the model directory (:mod:`eyeops.models.common.calibration`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from PIL import Image

from eyeops.models.classifier.modeling import FundusClassifier, FundusTransform
from eyeops.models.classifier.spec import ClassifierModel
from eyeops.models.common.calibration import Calibrator, chunked, fit_calibration


@torch.inference_mode()
def embed_images(
    model: FundusClassifier, transform: FundusTransform, images: Iterable[Image.Image], batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled features, logits)`` of ``images`` on the model's device, read in batches (CPU out)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        for chunk in chunked(images, batch_size):
            f, z = model.embed(torch.stack([transform(im) for im in chunk]).to(device))
            feats.append(f.float().cpu())
            logits.append(z.float().cpu())
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, len(model.labels))
    return torch.cat(feats), torch.cat(logits)


def calibrate_classifier(
    model: FundusClassifier,
    spec: ClassifierModel,
    *,
    train_images: Iterable[Image.Image],
    val_images: Iterable[Image.Image] = (),
    val_labels: Sequence[Sequence[int]] = (),
    batch_size: int = 32,
) -> Calibrator:
    """The temperature (``spec.temperature_scaling``) and OOD screen (``spec.ood``) of a trained model."""
    transform = FundusTransform(spec.image_size, circular_crop=spec.circular_crop)
    train_features, _ = embed_images(model, transform, train_images, batch_size)
    val_features, val_logits = embed_images(model, transform, val_images, batch_size)
    has_val = val_features.shape[0] > 0
    return fit_calibration(
        ood=spec.ood,
        temperature_mode=spec.temperature_scaling,
        train_features=train_features,
        val_features=val_features if has_val else None,
        val_logits=val_logits if has_val else None,
        val_targets=torch.tensor([list(v) for v in val_labels], dtype=torch.float32) if has_val else None,
    )
