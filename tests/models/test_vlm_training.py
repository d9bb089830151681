"""The offline-default VLM (packaged efficientnet_lite0 + SmolLM2) learns to read synthetic fundus images.

The learning test trains the eye-vlm recipe's model through the Family protocol, the way the
recipe does it: stage 1 aligns the connector on image captions (the data engine's open-QA
diagnosis answers, "The appearance is most consistent with glaucoma."), stage 2 tunes connector +
LoRA on closed QA (four-option diagnosis + yes/no). Closed-QA accuracy on held-out patients must
beat the untrained model, chance + 0.1 and always giving the most frequent answer.

It is skipped: within a CPU-test budget the model does not get there. What was measured (2 cores,
teacher-forced accuracy on held-out patients, `benchmarks/vlm_learning.py` for the real path):
- Perception is learnable but slow: connector-only caption alignment names the right disease in
  0/16 held-out captions after 15-30 steps, 0.56-0.63 after 45-60 (lr 3e-3; 1e-2 and a 1-token
  connector are no faster). A logistic probe on the frozen tower features gets 0.91-0.95.
- The LLM is the bottleneck: a *text oracle* (the true diagnosis written into the prompt instead
  of the image, LoRA only) needs ~60 steps to learn the yes/no comparison (0.48 -> 0.85) and does
  not learn the four-option letter lookup in 60 (0.21-0.33 vs 0.25).
- Together: 60 align + 50 instruct steps (4 min 12 s of training) give yes/no 0.625 vs chance 0.5
  on 96 held-out questions (benchmark), 45 + 60 give 0.52-0.65 depending on the step; one joint
  stage (captions + yes/no from the start, 90 steps) stays at chance. Not robust at ~8 CPU-min.
"""

from __future__ import annotations

import os

import pytest
import torch
from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_recipe
from PIL import Image

from eyeops.data.schema import Message
from eyeops.evaluate.runner import read_split
from eyeops.families import EvalContext
from eyeops.inference import GenerationRequest
from eyeops.models.common.processing import collate, open_image
from eyeops.models.vlm.family import FAMILY
from eyeops.models.vlm.modeling import _tokenizer
from eyeops.recipes import DataSpec, load_recipe, parse_recipe


def test_answer_only_loss_equals_the_full_logits_loss(tmp_path):
    """FAMILY.loss projects only answer positions onto the vocabulary; same loss as the LM's own."""
    recipe = parse_recipe(tiny_recipe(save_tiny_llm(tmp_path / "llm")))
    model = FAMILY.build_model(recipe).eval()
    tok = _tokenizer(recipe.model)
    proc = FAMILY.processor(recipe, tok)
    question = [Message(role="user", content="<image>\nIs there glaucoma? Answer yes or no.")]
    encoded = [  # answers of different lengths: labelled positions differ per row
        proc.encode(question, "yes", [Image.new("RGB", (40, 40), (180, 60, 30))]),
        proc.encode(question, "no, the optic disc looks normal", [Image.new("RGB", (40, 40), (90, 40, 20))]),
    ]
    batch = collate(encoded, tok.pad_token_id)
    full = model(**batch).loss
    fast = FAMILY.loss(model, batch)
    torch.testing.assert_close(fast, full)
    assert model(**batch, answer_logits_only=True).logits.shape[0] == sum(
        int((torch.tensor(e.labels[1:]) != -100).sum()) for e in encoded
    )


def _fundus_qa(tmp_path, monkeypatch, kinds: tuple[str, ...]):
    """480 synthetic fundus images (20 % held-out patients), keeping samples of the given kinds."""
    from eyeops.data import prepare
    from eyeops.data.store import load_samples, write_samples

    # The converted SmolLM2 is cached across tests/runs when EYEOPS_MODEL_CACHE is set.
    monkeypatch.setenv("EYEOPS_MODEL_CACHE", os.environ.get("EYEOPS_MODEL_CACHE", str(tmp_path / "models")))
    spec = DataSpec(
        source="synthetic",
        n=480,
        seed=3,
        image_size=128,
        tasks=["closed_qa", "open_qa"],
        val_fraction=0.0,
        test_fraction=0.2,
    )
    data_dir = tmp_path / "data"
    prepare(spec, str(data_dir), name="vlm-learning")
    # The data engine ids derived samples "<image id>-<kind>" (dx4, yesno, diagnosis, ...).
    write_samples([s for s in load_samples(data_dir) if s.id.endswith(kinds)], data_dir)
    return data_dir


def _offline_vlm(stages: list[dict]):
    """The eye-vlm recipe's offline model (one connector token per image), short prompts."""
    recipe = load_recipe("eye-vlm").with_overrides(
        {
            "model.system_prompt": "Answer concisely.",  # SmolLM2's default one is 3x longer
            "model.max_seq_len": 160,
            "model.eval_max_new_tokens": 4,
            "model.connector.grid": 1,
            "train.stages": stages,
        }
    )
    return recipe, FAMILY.build_model(recipe)


def _train(model, recipe, data_dir) -> None:
    """Each stage as the recipe says, batches of 8 drawn with a fixed seed."""
    collate_fn = FAMILY.collate_fn(recipe)
    generator = torch.Generator().manual_seed(0)
    for stage in recipe.train.stages:
        FAMILY.apply_stage(model, stage)
        model.train()
        train = FAMILY.datasets(recipe, data_dir, stage)["train"]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=recipe.train.weight_decay)
        for _ in range(stage.max_steps):
            idx = torch.randperm(len(train), generator=generator)[:8].tolist()
            FAMILY.loss(model, collate_fn([train[i] for i in idx])).backward()
            opt.step()
            opt.zero_grad()
    model.eval()


ALIGN = {"name": "align", "trainable": ["connector"], "data_tasks": ["open_qa"], "max_steps": 60, "lr": 3e-3}


@pytest.mark.slow
def test_caption_alignment_names_the_disease_of_held_out_patients(tmp_path, monkeypatch):
    """Stage 1 alone: the connector learns to put the image's disease into the frozen LLM's words.

    Held-out diagnosis captions ("The appearance is most consistent with glaucoma.") generated by
    the saved-and-reloaded model must name the right diagnosis far more often than always naming
    the most frequent one: image information reaches the LLM through tower, connector and scatter.
    """
    torch.manual_seed(0)
    data_dir = _fundus_qa(tmp_path, monkeypatch, ("-diagnosis",))
    recipe, model = _offline_vlm([ALIGN])
    test = read_split(data_dir, "test")
    diagnoses = test["answer"].str.split("consistent with ").str[-1].str.rstrip(".")
    requests = [
        GenerationRequest(
            messages=[Message(**m) for m in row.messages],
            images=[open_image(data_dir / p, where=row.id) for p in row.images],
            max_new_tokens=20,
        )
        for row in test.itertuples()
    ]

    def named(tag: str) -> float:
        FAMILY.save(model, recipe, tmp_path / tag)
        texts = [r.text.lower() for r in FAMILY.load(tmp_path / tag).generate(requests)]
        return sum(d in t for d, t in zip(diagnoses, texts, strict=True)) / len(texts)

    before = named("before")
    _train(model, recipe, data_dir)
    after = named("after")
    majority = float(diagnoses.value_counts(normalize=True).max())
    print(f"held-out captions naming their diagnosis: {before:.3f} -> {after:.3f} (majority {majority:.3f})")
    assert len(test) >= 24
    # Measured on the dev VM: 0.031 -> 0.594 (majority 0.344) on 32 captions; collapsing onto the
    # class prior, the failure mode this test exists for, scores at most the majority share.
    assert after > max(majority + 0.1, before + 0.2), (before, after, majority)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EYEOPS_LONG_TESTS"),
    reason="known gap (issue 8), set EYEOPS_LONG_TESTS=1 to run (~7 CPU-min): the 135M LLM needs ~60 LoRA "
    "steps to learn even the yes/no comparison from a text oracle and the connector ~50 caption steps to "
    "name the disease; 60 + 50 steps reach yes/no 0.625 vs chance 0.5, not robustly above chance + 0.1 "
    "(module docstring, benchmarks/vlm_learning.py)",
)
def test_closed_qa_accuracy_rises_above_chance(tmp_path, monkeypatch):
    """The best schedule measured: 60 caption-alignment steps, then 50 on yes/no closed QA + captions."""
    torch.manual_seed(0)
    data_dir = _fundus_qa(tmp_path, monkeypatch, ("-yesno", "-diagnosis"))
    instruct = {
        "name": "instruct",
        "trainable": ["connector", "lora"],
        "data_tasks": ["closed_qa", "open_qa"],
    }
    recipe, model = _offline_vlm([ALIGN, {**instruct, "max_steps": 50, "lr": 1e-3}])
    test = read_split(data_dir, "test")
    test = test[test["task"] == "closed_qa"]

    def accuracy(tag: str) -> float:
        FAMILY.save(model, recipe, tmp_path / tag)
        ctx = EvalContext(
            recipe=recipe,
            model=FAMILY.load(tmp_path / tag),
            data_dir=data_dir,
            samples=test,
            out_dir=tmp_path / f"eval-{tag}",
            manifest=None,
            batch_size=16,
        )
        return FAMILY.evaluate(ctx).metrics["closed_qa/accuracy"]

    before = accuracy("before")
    _train(model, recipe, data_dir)
    after = accuracy("after")
    chance = float((1.0 / test["options"].map(len)).mean())
    majority = float(test["answer"].value_counts(normalize=True).max())
    print(f"held-out closed QA: {before:.3f} -> {after:.3f} (chance {chance:.3f}, majority {majority:.3f})")
    assert after > max(chance + 0.1, majority), (before, after, chance, majority)
    assert after > before, (before, after, chance, majority)


def test_frozen_tower_batchnorm_keeps_its_statistics(tmp_path):
    """Tuning only the top tower block must not move the frozen blocks' BatchNorm running stats."""
    recipe = parse_recipe(tiny_recipe(save_tiny_llm(tmp_path / "llm"), tower="timm"))
    model = FAMILY.build_model(recipe)
    FAMILY.apply_stage(model, recipe.train.stages[-1])  # connector + lora + vision_last_blocks
    model.train()
    norms = [m for m in model.tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [m for m in norms if not any(p.requires_grad for p in m.parameters())]
    tuned = [m for m in norms if all(p.requires_grad for p in m.parameters())]
    assert frozen and tuned
    assert not any(m.training for m in frozen) and all(m.training for m in tuned)
    before = [m.running_mean.clone() for m in norms]
    model.image_features(torch.randn(2, 3, 64, 64), torch.tensor([[0, 0], [0, 0]]))  # global views only
    for m, old in zip(norms, before, strict=True):
        assert torch.equal(m.running_mean, old) == (m in frozen)
