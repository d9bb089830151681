"""OphGLM on a tiny config with the real packaged MiniLM BERT: fusion prefix from image + [CLS],
the three steps' freezing, reuse of a trained fundus classifier, save/load, chat and classify."""

from __future__ import annotations

import time

import pytest
import torch
from eyeops_testing.vlm_tiny import save_tiny_llm
from PIL import Image

from eyeops.data.schema import Manifest, Message, Sample
from eyeops.errors import ConfigError, NotFoundError
from eyeops.inference import GenerationRequest, InferenceModel
from eyeops.models.common.processing import IMAGE_TOKEN_ID
from eyeops.models.ophglm.family import FAMILY
from eyeops.models.ophglm.modeling import group_parameter_names
from eyeops.recipes import StageSpec, parse_recipe

Q = Message(role="user", content="<image>\nIs there glaucoma? Answer yes or no.")
STAGES = [
    {"name": "image-encoder", "trainable": ["image_encoder"], "max_steps": 1},
    {"name": "fusion", "trainable": ["fusion"], "data_tasks": ["closed_qa"], "max_steps": 1},
    {"name": "sft", "trainable": ["lora"], "data_tasks": ["closed_qa", "text_qa"], "max_steps": 1},
]
ENCODER = {"backbone": "efficientnet_lite0", "weights": "none", "image_size": 64, "circular_crop": False}


def _recipe(llm_dir, **model):
    return parse_recipe(
        {
            "name": "tiny-ophglm",
            "model": {
                "family": "ophglm",
                "llm": str(llm_dir),
                "image_encoder": ENCODER,
                "prefix_tokens": 2,
                "fusion_hidden": 16,
                "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                **model,
            },
            "train": {"num_workers": 1, "batch_size": 2, "stages": STAGES},
            "evaluate": {"primary_metric": "closed_qa/accuracy"},
            "register": {"model_name": "tiny-ophglm"},
        }
    )


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from eyeops.data.store import write_samples

    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    samples = []
    for i in range(4):
        Image.new("RGB", (64, 64), (200, 40, 40) if i % 2 else (40, 40, 200)).save(
            root / "images" / f"{i}.png"
        )
        split = "train" if i < 3 else "test"
        common = {"patient_id": f"p{i}", "modality": "fundus", "images": [f"images/{i}.png"], "split": split}
        samples.append(
            Sample(id=f"c{i}", task="classify", labels=[1 - i % 2, 0, i % 2, 0, 0, 0, 0, 0], **common)
        )
        samples.append(
            Sample(
                id=f"q{i}",
                task="closed_qa",
                messages=[Q],
                answer="yes" if i % 2 else "no",
                options=["yes", "no"],
                **common,
            )
        )
    samples.append(
        Sample(
            id="t0",
            patient_id="p9",
            modality="none",
            task="text_qa",
            split="train",
            messages=[Message(role="user", content="What is glaucoma?")],
            answer="Optic nerve damage.",
        )
    )
    write_samples(samples, root)
    (root / "manifest.json").write_text(Manifest(name="tiny").model_dump_json())
    return root


def test_three_steps_freeze_and_prefix_fuses_image_and_question(llm_dir, data, tmp_path):
    recipe = _recipe(llm_dir)
    torch.manual_seed(0)
    model = FAMILY.build_model(recipe)
    collate = FAMILY.collate_fn(recipe)
    for stage in recipe.train.stages:
        sets = FAMILY.datasets(recipe, data, stage)
        n = len(sets["train"])
        assert n == {"image-encoder": 3, "fusion": 3, "sft": 4}[stage.name]
        batch = collate([sets["train"][i] for i in range(n)])
        FAMILY.apply_stage(model, stage)
        model.zero_grad()
        FAMILY.loss(model, batch).backward()
        want = set().union(*(group_parameter_names(model, g) for g in stage.trainable))
        got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got and got <= want
        assert {n for n, p in model.named_parameters() if p.requires_grad} == want
        assert not any(n.startswith("bert.") for n in got)  # BERT stays frozen throughout
    model.eval()
    batch = collate(
        [
            FAMILY.datasets(recipe, data, StageSpec(name="x", data_tasks=["closed_qa"]))["train"][i]
            for i in range(2)
        ]
    )
    with torch.no_grad():
        emb = model.embed(batch["input_ids"], batch["pixel_values"], batch["bert_ids"], batch["bert_mask"])
        slots = batch["input_ids"] == IMAGE_TOKEN_ID
        assert int(slots.sum()) == 2 * 2  # prefix_tokens per image
        other_q = batch["bert_ids"].clone()
        other_q[:, 1] = 2000  # a different question changes the fused prefix
        emb_q = model.embed(batch["input_ids"], batch["pixel_values"], other_q, batch["bert_mask"])
        emb_i = model.embed(
            batch["input_ids"], batch["pixel_values"].flip(0), batch["bert_ids"], batch["bert_mask"]
        )
    assert not torch.allclose(emb[slots], emb_q[slots]) and not torch.allclose(emb[slots], emb_i[slots])
    torch.testing.assert_close(emb[~slots], emb_q[~slots])

    FAMILY.save(model, recipe, tmp_path / "model")
    predictor = FAMILY.load(tmp_path / "model")
    assert isinstance(predictor, InferenceModel)
    image = Image.open(data / "images" / "1.png")
    answers = predictor.generate(
        [
            GenerationRequest(messages=[Q], images=[image], max_new_tokens=3),
            GenerationRequest(messages=[Message(role="user", content="hi")], max_new_tokens=3),
        ]
    )
    assert len(answers) == 2 and all(a.completion_tokens <= 3 for a in answers)
    result = predictor.classify([image])[0]
    with torch.no_grad():
        direct = torch.sigmoid(model.classifier(predictor.transform(image)[None]))[0]
    assert list(result.probabilities) == ["N", "D", "G", "C", "A", "H", "M", "O"]
    assert result.probabilities["G"] == pytest.approx(float(direct[2]), abs=1e-5)


def test_image_checkpoint_reuses_a_trained_fundus_classifier(llm_dir, tmp_path):
    from eyeops.models.classifier.family import FAMILY as CLASSIFIER

    cls_recipe = parse_recipe(
        {"name": "fc", "model": {"family": "classifier", **ENCODER}, "register": {"model_name": "fc"}}
    )
    torch.manual_seed(1)
    classifier = CLASSIFIER.build_model(cls_recipe)
    CLASSIFIER.save(classifier, cls_recipe, tmp_path / "fc")
    model = FAMILY.build_model(_recipe(llm_dir, image_checkpoint=str(tmp_path / "fc")))
    for (name, a), b in zip(
        model.classifier.net.state_dict().items(), classifier.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(NotFoundError, match="no fundus-classifier weights"):
        FAMILY.build_model(
            _recipe(llm_dir, image_checkpoint=str((tmp_path / "empty").mkdir() or tmp_path / "empty"))
        )
    with pytest.raises(ConfigError, match="unknown group 'connector'"):
        group_parameter_names(model, "connector")


@pytest.fixture(scope="module")
def untrained(llm_dir):
    from eyeops.models.ophglm.inference import OphGLMPredictor

    torch.manual_seed(0)
    recipe = _recipe(llm_dir)
    return OphGLMPredictor(recipe, FAMILY.build_model(recipe))


class _DecodeSteps:
    """Counts the LM's forward passes (one per decoded token) with the time of each."""

    def __init__(self, lm):
        self.times: list[float] = []
        self._handle = lm.register_forward_hook(lambda *_: self.times.append(time.perf_counter()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def _long_question(n: int) -> GenerationRequest:
    """Sampled (greedy decoding of the untrained LM repeats a newline, which strips to nothing)."""
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    return GenerationRequest(messages=[Q], images=[image], max_new_tokens=n, temperature=1.0)


def test_stream_delivers_the_first_token_before_the_answer_is_decoded(untrained):
    request = _long_question(120)
    torch.manual_seed(0)
    whole = untrained.generate([request])[0]
    assert whole.finish_reason == "length"  # the untrained LM does not stop: 120 tokens to decode
    torch.manual_seed(0)
    with _DecodeSteps(untrained.lm) as steps:
        stream = untrained.stream(request)
        first = next(stream)
        first_at, steps_at_first = time.perf_counter(), len(steps.times)
        rest = list(stream)
    assert len(steps.times) == 120
    assert steps_at_first < 60 and first_at < steps.times[-1]  # the decode was still running
    assert first + "".join(rest) == whole.text  # and the pieces join to generate's answer


def test_closing_a_stream_stops_decoding(untrained):
    request = _long_question(600)
    torch.manual_seed(2)
    # this seed's sample has no stop token in 600: left alone, the stream would decode all 600
    assert untrained.generate([request])[0].finish_reason == "length"
    torch.manual_seed(2)
    with _DecodeSteps(untrained.lm) as steps:
        stream = untrained.stream(request)
        next(stream)
        stream.close()  # the client left: decoding stops at the next token and the lock is free
        stopped_at = len(steps.times)
        time.sleep(0.2)
        assert len(steps.times) == stopped_at
    assert stopped_at < 300 and not untrained._lock.locked()


def test_step3_trains_on_a_mixed_odir_and_dialogue_dataset(llm_dir, tmp_path):
    """Issue 19: ODIR images + scraped dialogues prepared as one mix; step 3 (LoRA SFT) reads both
    the image-text and the text-only samples and learns from both in one batch."""
    from eyeops_testing.raw_data import write_odir, write_raw_dialogues

    from eyeops.data import prepare
    from eyeops.recipes import DataSpec

    spec = DataSpec(
        source="mix",
        image_size=64,
        tasks=["closed_qa"],
        val_fraction=0.0,
        test_fraction=0.0,
        mix=[
            {
                "source": "odir",
                "path": str(write_odir(tmp_path / "odir", patients=2, size=64)),
                "max_records": 2,
            },
            {"source": "raw_dialogue", "path": str(write_raw_dialogues(tmp_path / "dialogues.txt"))},
        ],
    )
    ref = prepare(spec, str(tmp_path / "mixed"), name="ophglm-mix")
    recipe = _recipe(llm_dir)
    sft = StageSpec(name="sft", trainable=["lora"], data_tasks=["closed_qa", "dialogue", "text_qa"])
    train = FAMILY.datasets(recipe, ref.uri, sft)["train"]
    assert sorted(s.source for s in train.samples) == ["odir"] * 4 + ["raw_dialogue"] * 2  # 2 eyes x 2 QA
    image_row = next(i for i, s in enumerate(train.samples) if s.images)
    text_rows = [i for i, s in enumerate(train.samples) if not s.images]
    batch = FAMILY.collate_fn(recipe)([train[i] for i in (image_row, *text_rows)])
    slots = batch["input_ids"] == IMAGE_TOKEN_ID
    assert slots[0].sum() == 2 and not slots[1:].any()  # prefix tokens only where there is an image

    torch.manual_seed(0)
    model = FAMILY.build_model(recipe)
    FAMILY.apply_stage(model, sft)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = FAMILY.loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all("lora" in n for n in lora) and any(
        not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora
    )
