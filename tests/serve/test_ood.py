"""Issue 17.6: answers carry an out-of-distribution verdict; unlike images get the message, not findings.

The served classifier (``registered``) was trained on synthetic fundus images and calibrated on
held-out ones (temperature + k-NN screen, as training does after its last step). Through the real
gateway process, the scikit-image retina photograph -- which the uncalibrated demo answered with
"AMD 100 %" -- and non-fundus images are flagged, while unseen synthetic fundus images mostly are
not. A tiny eye-vlm, calibrated by its family's hook on a prepared dataset, is served by
``eyeops serve`` and screened the same way in plain and streamed chat.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from eyeops_testing.serving import API_KEY, CHAT_KEY, VAL_SEED, b64, local_server
from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_recipe
from PIL import Image

from eyeops.data.synthetic import generate
from eyeops.evaluate.calibration import expected_calibration_errors
from eyeops.models.common.calibration import CALIBRATION_FILE, OOD_ANSWER, OOD_MESSAGE

pytestmark = pytest.mark.integration
LABELS = list("NDGCAHMO")
VLM_TRAIN, VLM_VAL = 200, 60  # the screen needs a realistic number of neighbours (see docs)
UNSEEN_SEED = 7  # not the served model's train (0), evaluation (1) or validation (VAL_SEED) images
assert UNSEEN_SEED != VAL_SEED


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _unlike_training() -> dict[str, bytes]:
    """A photograph of a person, a flat grey frame and noise: nothing a fundus model has seen."""
    from skimage import data

    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return {
        "astronaut": _png(data.astronaut()),
        "grey": _png(np.full((256, 256, 3), 128, dtype=np.uint8)),
        "noise": _png(noise),
    }


def _unseen_fundus(n: int, size: int = 64) -> list[bytes]:
    return [_png(s.image) for s in generate(n, seed=UNSEEN_SEED, size=size)]


# --- the classifier, through the real gateway process -------------------------------------------
def _classify(server, images: list[bytes]) -> list[dict]:
    response = httpx.post(
        server.url + "/v1/classify",
        json={"images_b64": [b64(i) for i in images]},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_retina_photograph_and_non_fundus_images_are_outside_training(gateway_server, retina_jpeg):
    images = {"retina": retina_jpeg, **_unlike_training()}
    for name, item in zip(images, _classify(gateway_server, list(images.values())), strict=True):
        assert item["out_of_distribution"] is True, (name, item)
        assert item["findings"] == [], name  # no "AMD 100 %": the model says it does not know
        assert item["message"] == OOD_MESSAGE == "outside what this model was trained on"
        assert item["ood_score"] > item["ood_threshold"] > 0
        assert list(item["probabilities"]) == LABELS  # still reported, for audit


def test_unseen_synthetic_fundus_images_are_mostly_answered(gateway_server):
    results = _classify(gateway_server, _unseen_fundus(8))
    results += _classify(gateway_server, _unseen_fundus(16)[8:])
    flags = [item["out_of_distribution"] for item in results]
    assert all(f is not None for f in flags)
    assert np.mean(flags) <= 0.25, flags  # the threshold is the 95th percentile of validation scores
    for item in (i for i in results if not i["out_of_distribution"]):  # answered as before
        probs = item["probabilities"]
        assert item["message"] is None
        assert item["findings"] == sorted((k for k, v in probs.items() if v >= 0.5), key=lambda k: -probs[k])


def test_registered_model_carries_and_applies_its_calibration(in_registry):
    """The MLflow-registered model holds the calibration; probabilities are sigmoid(logits / T)."""
    import mlflow.pyfunc

    from eyeops.registry import resolve
    from eyeops.serve.predictor import load_predictor

    ref = f"{in_registry.model_name}@champion"
    model_dir = resolve(f"models:/{ref}").model_dir
    record = json.loads((model_dir / CALIBRATION_FILE).read_text())
    assert record["temperature_mode"] == "global" and record["held_out"] == "val"
    model = load_predictor(ref).model
    (temperature,) = record["temperature"]
    assert temperature == pytest.approx(model.calibrator.record.temperature[0])

    held_out = [Image.fromarray(s.image) for s in generate(48, seed=UNSEEN_SEED + 1, size=64)]
    truth = np.array([s.labels for s in generate(48, seed=UNSEEN_SEED + 1, size=64)])
    with torch.inference_mode():
        _, logits = model.model.embed(torch.stack([model.transform(im) for im in held_out]))
    raw = torch.sigmoid(logits).numpy()
    calibrated = model.predict_proba(held_out)
    np.testing.assert_allclose(calibrated, torch.sigmoid(logits / temperature).numpy(), atol=1e-6)
    assert not np.allclose(calibrated, raw, atol=1e-3)  # the temperature really moved them
    ece_raw = np.mean(list(expected_calibration_errors(truth, raw, LABELS).values()))
    ece_calibrated = np.mean(list(expected_calibration_errors(truth, calibrated, LABELS).values()))
    assert ece_calibrated <= ece_raw + 1e-6, (ece_raw, ece_calibrated)

    # The MLflow pyfunc answers with the same verdicts.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{ref}")
    images = [b64(_unlike_training()["astronaut"]), b64(_unseen_fundus(1)[0])]
    frame = pyfunc.predict(pd.DataFrame({"image": images}))
    assert list(frame.columns) == [*LABELS, "out_of_distribution", "ood_score"]
    assert bool(frame["out_of_distribution"][0]) is True


# --- eye-vlm: calibrated by its family's hook, served by `eyeops serve` -----------------------------
def _vlm_dataset(root):
    """A prepared-layout dataset of closed-QA samples over synthetic fundus images (train + val)."""
    from eyeops.data.schema import Manifest, Message, Sample
    from eyeops.data.store import write_samples

    (root / "images").mkdir(parents=True)
    samples = []
    for i, s in enumerate(generate(VLM_TRAIN + VLM_VAL, seed=11, size=64)):
        Image.fromarray(s.image).save(root / "images" / f"{i}.png")
        samples.append(
            Sample(
                id=f"s{i}",
                patient_id=s.patient,
                modality="fundus",
                images=[f"images/{i}.png"],
                task="closed_qa",
                messages=[Message(role="user", content="<image>\nIs there glaucoma? Answer yes or no.")],
                answer="yes" if s.labels[2] else "no",
                options=["yes", "no"],
                split="train" if i < VLM_TRAIN else "val",
            )
        )
    write_samples(samples, root)
    (root / "manifest.json").write_text(Manifest(name="vlm-ood").model_dump_json())
    return root


@pytest.fixture(scope="module")
def vlm_server(tmp_path_factory):
    from eyeops.families import get_family
    from eyeops.recipes import parse_recipe

    llm = save_tiny_llm(tmp_path_factory.mktemp("ood-tiny-llm"))
    vision = {"kind": "timm", "name": "efficientnet_lite0", "weights": "packaged", "image_size": 64}
    recipe = parse_recipe(tiny_recipe(llm, tower="timm", vision=vision))
    family = get_family("vlm")
    torch.manual_seed(0)
    model = family.build_model(recipe)
    out = tmp_path_factory.mktemp("ood-vlm")
    family.save(model, recipe, out)
    family.calibrate(model, recipe, _vlm_dataset(tmp_path_factory.mktemp("ood-vlm-data")), out)
    with local_server(out, tmp_path_factory, "ood-vlm") as server:
        yield server


def _chat(server, image: bytes | None, **extra) -> httpx.Response:
    content: list[dict] = [{"type": "text", "text": "Is there glaucoma? Answer yes or no."}]
    if image is not None:
        url = "data:image/png;base64," + b64(image)
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    body = {"model": "tiny-vlm", "messages": [{"role": "user", "content": content}], "max_tokens": 3, **extra}
    headers = {"Authorization": f"Bearer {CHAT_KEY}"}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_vlm_answers_carry_the_verdict_and_unlike_images_get_the_message(vlm_server, retina_jpeg):
    flagged = []
    for image in _unseen_fundus(4):
        response = _chat(vlm_server, image)
        assert response.status_code == 200, response.text
        verdict = response.json()["eyeops_ood"]
        assert verdict["ood_score"] >= 0 and verdict["ood_threshold"] > 0
        flagged.append(verdict["out_of_distribution"])
    assert sum(flagged) <= 1, flagged

    unlike = _unlike_training()
    for name, image in (
        ("retina", retina_jpeg),
        ("astronaut", unlike["astronaut"]),
        ("grey", unlike["grey"]),
    ):
        body = _chat(vlm_server, image).json()
        assert body["eyeops_ood"]["out_of_distribution"] is True, name
        assert body["eyeops_ood"]["message"] == OOD_MESSAGE
        assert body["choices"][0]["message"]["content"] == OOD_ANSWER  # not decoded: no made-up answer

    streamed = _chat(vlm_server, unlike["noise"], stream=True)
    assert streamed.status_code == 200, streamed.text
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert chunks[0]["eyeops_ood"]["out_of_distribution"] is True  # the verdict before any text
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == OOD_ANSWER
    )

    assert _chat(vlm_server, None).json()["eyeops_ood"] is None  # nothing to screen in a text question
