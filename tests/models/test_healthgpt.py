"""HealthGPT on tiny configs: image tokens with mean-initialised embeddings, H-LoRA on the LLM only,
per-task feature layers, the three stages' freezing, save/load, mixed-task generation with a PNG,
the generation tasks with target images (data, serving, PSNR/SSIM/MSE per task)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_healthgpt_recipe
from PIL import Image

from eyeops.data.schema import Manifest, Message, Sample
from eyeops.errors import ConfigError, InvalidRequest
from eyeops.inference import GenerationRequest, InferenceModel
from eyeops.models.common.hlora import HLoraLinear
from eyeops.models.healthgpt.family import FAMILY
from eyeops.models.healthgpt.modeling import START, group_parameter_names, index_token
from eyeops.recipes import parse_recipe

Q = Message(role="user", content="<image>\nIs there glaucoma? Answer yes or no.")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    llm_dir = save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))
    return parse_recipe(tiny_healthgpt_recipe(llm_dir))


@pytest.fixture(scope="module")
def model(recipe):
    torch.manual_seed(0)
    return FAMILY.build_model(recipe)


def _image(colour=(180, 60, 30)):
    return Image.new("RGB", (40, 40), colour)


def _write_dataset(root):
    from eyeops.data.store import write_samples

    (root / "images").mkdir(parents=True)
    samples = []
    for i in range(4):
        _image((200, 40, 40) if i % 2 else (40, 40, 200)).save(root / "images" / f"{i}.png")
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
                split="train" if i < 3 else "test",
            )
        )
    write_samples(samples, root)
    (root / "manifest.json").write_text(Manifest(name="tiny").model_dump_json())
    return root


def test_image_tokens_mean_initialised_and_hlora_on_llm_only(recipe, model):
    from eyeops.models.healthgpt.modeling import _tokenizer

    tok = _tokenizer(recipe.model)
    start, idx0 = tok.convert_tokens_to_ids([START, index_token(0)])
    emb = model.lm.get_input_embeddings().weight
    old = len(tok) - 16 - 3  # <start_index>, 16 codes, <end_index>, <pixel_newline> (the seed's order)
    assert emb.shape[0] == len(tok)
    torch.testing.assert_close(emb[start], emb[:old].mean(0))
    torch.testing.assert_close(emb[idx0], emb[:old].mean(0))
    adapted = [n for n, m in model.named_modules() if isinstance(m, HLoraLinear)]
    assert adapted and all(n.startswith("lm.") and "lm_head" not in n for n in adapted)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapted} >= {"q_proj", "down_proj"}
    # per-task vision layers: comprehension reads layer 3 (of 0..4), generation layer 1
    assert model.connectors["comprehension"].layers == [3] and model.connectors["generation"].layers == [1]


def test_three_stages_freeze_what_they_must(recipe, model, tmp_path):
    data = _write_dataset(tmp_path / "data")
    sets = FAMILY.datasets(recipe, data)
    tasks = sorted(t for t, _ in (sets["train"][i] for i in range(len(sets["train"]))))
    assert tasks == ["comprehension"] * 3 + ["generation"] * 3
    gen_item = next(
        sets["train"][i] for i in range(len(sets["train"])) if sets["train"][i][0] == "generation"
    )
    assert sum(label >= 0 for label in gen_item[1].labels) >= 16 + 2  # the image's code tokens are the answer
    batch = FAMILY.collate_fn(recipe)([sets["train"][i] for i in (0, 3)])
    assert sorted(batch["tasks"]) == ["comprehension", "generation"]
    for stage in recipe.train.stages:
        FAMILY.apply_stage(model, stage)
        model.zero_grad()
        FAMILY.loss(model, batch).backward()
        want = set().union(*(group_parameter_names(model, g) for g in stage.trainable))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == want
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == want  # every trainable tensor is reached (DDP-safe), nothing frozen is
        assert not any(n.startswith(("vq.", "tower.")) for n in trainable)
        base_llm = group_parameter_names(model, "llm") - group_parameter_names(model, "embeddings")
        assert not (trainable & base_llm)
    with pytest.raises(ConfigError, match="unknown group 'lora'"):
        group_parameter_names(model, "lora")


def test_save_load_and_mixed_task_generation(recipe, model, tmp_path):
    FAMILY.save(model, recipe, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "healthgpt.json").read_text())
    assert "psnr_db" in meta["vq"] and meta["tasks"] == ["comprehension", "generation"]
    predictor = FAMILY.load(tmp_path / "model")
    assert isinstance(predictor, InferenceModel) and "generate_image" in predictor.capabilities
    gen = GenerationRequest(
        messages=[Message(role="user", content="<image>\nReconstruct it.")],
        images=[_image()],
        task="generation",
    )
    chat = GenerationRequest(messages=[Q], images=[_image()], max_new_tokens=4)
    mixed = predictor.generate([gen, chat])
    alone = [predictor.generate([gen])[0], predictor.generate([chat])[0]]
    assert [r.text for r in mixed] == [r.text for r in alone]  # one batch serves both tasks correctly
    assert mixed[0].images_png == alone[0].images_png and not mixed[1].images_png
    png = Image.open(io.BytesIO(mixed[0].images_png[0]))
    png.load()
    assert png.format == "PNG" and png.size == (32, 32)
    # the comprehension adapter really differs from the generation one on the same prompt
    with torch.no_grad():
        logits = {}
        for task in ("comprehension", "generation"):
            inputs = predictor.inputs([chat.model_copy(update={"task": task})])
            from eyeops.models.common.hlora import route_tasks

            with route_tasks(predictor.model.lm, [task]):
                logits[task] = predictor.model.lm(**inputs).logits
    assert not torch.allclose(logits["comprehension"], logits["generation"])
    with pytest.raises(InvalidRequest, match="unknown task 'segment'"):
        predictor.generate([GenerationRequest(messages=[Q], images=[_image()], task="segment")])
    with pytest.raises(InvalidRequest, match="reconstruction task takes exactly one input image, got 0"):
        predictor.generate(
            [GenerationRequest(messages=[Message(role="user", content="draw")], task="reconstruction")]
        )


def _write_pairs(root):
    """A dataset of every generation task (distinct input and target images) plus one closed QA."""
    from eyeops.data.image_pairs import GENERATION_TASKS, generation_prompt
    from eyeops.data.store import write_samples

    (root / "images").mkdir(parents=True)
    samples = []
    for i, task in enumerate(GENERATION_TASKS):
        _image((40 * i, 90, 200 - 40 * i)).save(root / "images" / f"in{i}.png")
        _image((200 - 40 * i, 60, 40 * i)).save(root / "images" / f"out{i}.png")
        for split in ("train", "test"):
            samples.append(
                Sample(
                    id=f"g{i}-{split}",
                    patient_id=f"p{i}-{split}",
                    modality="fundus",
                    images=[] if task == "text_to_image" else [f"images/in{i}.png"],
                    target_image=f"images/out{i}.png",
                    task="generate_image",
                    messages=[
                        Message(role="user", content=generation_prompt(task, eye="OD", findings=["drusen"]))
                    ],
                    split=split,
                    meta={"generation": task},
                )
            )
    samples.append(
        Sample(id="q", images=["images/in0.png"], task="closed_qa", messages=[Q], answer="no", split="test")
    )
    write_samples(samples, root)
    (root / "manifest.json").write_text(Manifest(name="pairs").model_dump_json())
    return root


def test_generation_tasks_with_target_images(recipe, model, tmp_path):
    import pandas as pd

    from eyeops.data.image_pairs import GENERATION_TASKS
    from eyeops.families import EvalContext
    from eyeops.models.common.vq import image_tokens
    from eyeops.models.healthgpt.evaluation import generation_metrics
    from eyeops.models.healthgpt.family import image_answer

    data = _write_pairs(tmp_path / "pairs")
    sets = FAMILY.datasets(recipe, data)
    items = [sets["train"].items[i] for i in range(len(sets["train"]))]
    assert sorted(t for t, _ in items) == ["generation"] * len(
        GENERATION_TASKS
    )  # no implicit reconstructions
    # the answer is the *target* image's codes, not the input's
    task, encoded = sets["train"][0]
    sample = items[0][1]
    target = Image.open(data / sample.target_image).convert("RGB")
    tok = sets["train"].processor.tokenizer
    want = tok(image_answer(image_tokens(sets["train"].vq, target)), add_special_tokens=False)["input_ids"]
    got = [t for t in encoded.labels if t >= 0]
    assert got[: len(want)] == want

    FAMILY.save(model, recipe, tmp_path / "model")
    predictor = FAMILY.load(tmp_path / "model")
    assert {t for t, c in predictor.tasks.items() if c == "generate_image"} == {
        "generation",
        *GENERATION_TASKS,
    }
    ask = Message(role="user", content="Generate a fundus photograph of a left eye with drusen.")
    requests = [  # one batch, every image task in it
        GenerationRequest(messages=[ask], images=[] if task == "text_to_image" else [_image()], task=task)
        for task in GENERATION_TASKS
    ]
    for task, result in zip(GENERATION_TASKS, predictor.generate(requests), strict=True):
        assert result.images_png[0][:4] == b"\x89PNG" and task in result.text
    with pytest.raises(InvalidRequest, match="text_to_image task draws from the prompt alone"):
        predictor.generate([GenerationRequest(messages=[ask], images=[_image()], task="text_to_image")])
    with pytest.raises(InvalidRequest, match="super_resolution task takes exactly one input image, got 0"):
        predictor.generate([GenerationRequest(messages=[ask], task="super_resolution")])

    from eyeops.data.store import load_samples

    rows = pd.DataFrame([s.model_dump(mode="json") for s in load_samples(data, split="test")])
    ctx = EvalContext(recipe, predictor, data, rows, tmp_path / "eval", None, batch_size=4)
    metrics, tables, artifacts = generation_metrics(ctx)
    for task in GENERATION_TASKS:
        assert metrics[f"generation/{task}/n"] == 1
        assert metrics[f"generation/{task}/mse"] > 0 and -1 <= metrics[f"generation/{task}/ssim"] <= 1
        assert metrics[f"generation/{task}/vq_psnr_db"] > 0
    assert metrics["generation/n"] == len(GENERATION_TASKS) and len(tables["generation"]) == len(
        GENERATION_TASKS
    )
    grid = Image.open(artifacts["generation_grid"])
    assert grid.size == (3 * 32, len(GENERATION_TASKS) * 32)
