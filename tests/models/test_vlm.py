"""The VLM family on tiny configs: every tower x connector x resolution mode, masks, stage
freezing (gradients reach exactly the unfrozen groups), save/load, batched generation, streaming."""

from __future__ import annotations

import json

import pytest
import torch
from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_recipe
from PIL import Image

from eyeops.data.schema import Manifest, Message, Sample
from eyeops.errors import ConfigError, DataError, InvalidRequest
from eyeops.inference import GenerationRequest, InferenceModel
from eyeops.models.common.processing import IGNORE_INDEX, IMAGE_TOKEN_ID, collate
from eyeops.models.vlm.family import FAMILY
from eyeops.models.vlm.modeling import group_parameter_names
from eyeops.recipes import StageSpec, parse_recipe

Q = Message(role="user", content="<image>\nIs there glaucoma? Answer yes or no.")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


def _image(w=48, h=40, colour=(180, 60, 30)):
    return Image.new("RGB", (w, h), colour)


def _batch(recipe, images_per_sample=(1, 1)):
    tok = _tok(recipe)
    proc = FAMILY.processor(recipe, tok)
    encoded = []
    for n in images_per_sample:
        content = "\n".join(["<image>"] * n) + "\nIs there glaucoma?"
        encoded.append(
            proc.encode(
                [Message(role="user", content=content)], "yes", [_image(40 + 30 * k, 40) for k in range(n)]
            )
        )
    return encoded, collate(encoded, tok.pad_token_id), tok


def _tok(recipe):
    from eyeops.models.vlm.modeling import _tokenizer

    return _tokenizer(recipe.model)


def _grads_exactly(model, names):
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    frozen_with_grad = {n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None}
    assert not frozen_with_grad
    return got, names


@pytest.mark.parametrize("tower", ["siglip", "clip", "timm"])
@pytest.mark.parametrize("connector", ["mlp2x_gelu", "ldc"])
@pytest.mark.parametrize("resolution", ["single", "anyres"])
def test_forward_masks_and_stage_gradients(llm_dir, tower, connector, resolution):
    recipe = parse_recipe(tiny_recipe(llm_dir, tower=tower, connector=connector, resolution=resolution))
    model = FAMILY.build_model(recipe)
    encoded, batch, tok = _batch(recipe, images_per_sample=(1, 2))
    # Image slots: exactly as many as the features the model produces for these images and plans.
    assert (
        int((batch["input_ids"] == IMAGE_TOKEN_ID).sum())
        == model.image_features(batch["pixel_values"], batch["image_plans"]).shape[0]
    )
    if resolution == "anyres":  # the 2-image sample's wide image gets a 1x2 plan
        assert batch["pixel_values"].shape[0] > 3
    else:
        assert batch["pixel_values"].shape[0] == 3
    # Labels: only the answer and the end-of-turn marker are trained.
    for e in encoded:
        answer = [t for t, lab in zip(e.input_ids, e.labels, strict=True) if lab != IGNORE_INDEX]
        assert tok.decode(answer).strip().startswith("yes") and tok.eos_token in tok.decode(answer)
        assert all(
            lab == IGNORE_INDEX for t, lab in zip(e.input_ids, e.labels, strict=True) if t == IMAGE_TOKEN_ID
        )
    for stage in recipe.train.stages:
        FAMILY.apply_stage(model, stage)
        model.zero_grad(set_to_none=True)
        loss = FAMILY.loss(model, batch)
        assert torch.isfinite(loss)
        loss.backward()
        expected = set().union(*(group_parameter_names(model, g) for g in stage.trainable))
        got = {n for n, p in model.named_parameters() if p.grad is not None}
        assert got == expected, (stage.name, sorted(expected ^ got)[:5])
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    names = group_parameter_names(model, "connector")
    assert any(n.startswith("merger.") for n in names) == (resolution == "anyres")
    assert group_parameter_names(model, "vision_last_blocks") and all(
        n.startswith("tower.") for n in group_parameter_names(model, "vision_last_blocks")
    )


def test_unknown_group_and_missing_lora(llm_dir):
    recipe = parse_recipe(tiny_recipe(llm_dir, stages=[{"name": "s", "trainable": ["connector"]}]))
    model = FAMILY.build_model(recipe)
    with pytest.raises(ConfigError, match="unknown group 'head'"):
        FAMILY.apply_stage(model, StageSpec(name="x", trainable=["head"]))
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        FAMILY.apply_stage(model, StageSpec(name="x", trainable=["lora"]))


def test_placeholder_mismatch_and_oversize_are_clear_errors(llm_dir):
    recipe = parse_recipe(tiny_recipe(llm_dir, max_seq_len=70))
    proc = FAMILY.processor(recipe, _tok(recipe))
    with pytest.raises(InvalidRequest, match="2 <image> placeholders but 1 images"):
        proc.encode([Message(role="user", content="<image><image> compare")], "no", [_image()])
    # No placeholder: the images are put before the question.
    e = proc.encode([Message(role="user", content="what is shown?")], "a disc", [_image(), _image()])
    assert e.input_ids.count(IMAGE_TOKEN_ID) == 2 * proc.tokens_per_view
    with pytest.raises(
        DataError, match=r"sample .s1.: prompt with image tokens is \d+ tokens, over model.max_seq_len 70"
    ):
        proc.encode([Message(role="user", content="<image>" * 4)], "no", [_image()] * 4, where="sample 's1'")


def _write_dataset(root, n=6):
    from eyeops.data.store import write_samples

    (root / "images").mkdir(parents=True)
    samples = []
    for i in range(n):
        colour = (200, 40, 40) if i % 2 else (40, 40, 200)
        _image(64, 64, colour).save(root / "images" / f"{i}.png")
        samples.append(
            Sample(
                id=f"s{i}",
                patient_id=f"p{i}",
                modality="fundus",
                images=[f"images/{i}.png"],
                task="closed_qa",
                messages=[Q],
                answer="yes" if i % 2 else "no",
                options=["yes", "no"],
                labels=[0, 0, i % 2, 0, 0, 0, 0, 0],
                split="train" if i < 4 else "test",
            )
        )
    samples.append(
        Sample(
            id="r0",
            patient_id="p9",
            modality="fundus",
            images=["images/0.png"],
            task="report",
            messages=[Message(role="user", content="<image>\nWrite the report.")],
            answer="Examination Type: colour fundus photograph.",
            split="train",
        )
    )
    write_samples(samples, root)
    (root / "manifest.json").write_text(Manifest(name="tiny").model_dump_json())
    return root


def test_datasets_save_load_and_generate(llm_dir, tmp_path):
    recipe = parse_recipe(tiny_recipe(llm_dir, tower="timm", connector="ldc", resolution="anyres"))
    data = _write_dataset(tmp_path / "data")
    sets = FAMILY.datasets(recipe, data)
    assert len(sets["train"]) == 5 and len(sets["test"]) == 2
    only_reports = FAMILY.datasets(
        recipe, data, StageSpec(name="align", trainable=["connector"], data_tasks=["report"])
    )
    assert len(only_reports["train"]) == 1
    batch = FAMILY.collate_fn(recipe)([sets["train"][i] for i in range(3)])
    model = FAMILY.build_model(recipe)
    for stage in recipe.train.stages:  # one optimiser step per stage changes the trained groups
        FAMILY.apply_stage(model, stage)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        FAMILY.loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    FAMILY.save(model, recipe, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "vlm.json").read_text())
    # The LM is a reference (a saved dir); the randomly initialised tower is not, so it is saved whole.
    assert meta["groups"] == ["connector", "lora", "vision", "vision_last_blocks"]
    predictor = FAMILY.load(tmp_path / "model")
    assert isinstance(predictor, InferenceModel) and predictor.capabilities == {"chat", "report"}
    with torch.no_grad():
        reloaded = predictor.model(**batch).logits  # LoRA merged on load: same function
    torch.testing.assert_close(reloaded, expected, atol=1e-4, rtol=1e-4)

    requests = [
        GenerationRequest(messages=[Q], images=[_image()], max_new_tokens=5),
        GenerationRequest(
            messages=[Message(role="user", content="<image><image> compare the two visits")],
            images=[_image(), _image(90, 40)],
            max_new_tokens=3,
        ),
        GenerationRequest(messages=[Message(role="user", content="hello")], max_new_tokens=4),
    ]
    results = predictor.generate(requests)
    assert [r.completion_tokens <= q.max_new_tokens for r, q in zip(results, requests, strict=True)] == [
        True
    ] * 3
    assert results[0].prompt_tokens > results[2].prompt_tokens  # image tokens count as prompt
    # Batched and single decoding agree (left padding is masked correctly).
    assert predictor.generate([requests[0]])[0].text == results[0].text
    assert "".join(predictor.stream(requests[0])) == results[0].text
    stream = predictor.stream(GenerationRequest(messages=[Q], images=[_image()], max_new_tokens=200))
    next(stream, None)
    stream.close()  # client disconnects: decoding stops and the lock is released
    assert not predictor._lock.locked()
    with pytest.raises(InvalidRequest, match="not classify"):
        predictor.classify([_image()])


def test_model_saved_before_connector_input_norm_still_loads(llm_dir, tmp_path):
    """A saved recipe without ``connector.input_norm`` (older eyeops) loads with the norms off."""
    import yaml

    data = tiny_recipe(llm_dir, connector="ldc")
    data["model"]["connector"]["input_norm"] = False
    recipe = parse_recipe(data)
    model = FAMILY.build_model(recipe)
    FAMILY.save(model, recipe, tmp_path / "old")
    saved = yaml.safe_load((tmp_path / "old" / "recipe.yaml").read_text())
    del saved["model"]["connector"]["input_norm"]  # what an older eyeops wrote
    (tmp_path / "old" / "recipe.yaml").write_text(yaml.safe_dump(saved))
    loaded = FAMILY.load(tmp_path / "old").model
    assert loaded.connector.norms is None
    torch.testing.assert_close(loaded.connector.state_dict(), model.connector.state_dict())
