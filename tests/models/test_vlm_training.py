"""The offline-default VLM (packaged efficientnet_lite0 + SmolLM2) learns to read synthetic fundus images.

The learning test trains the eye-vlm recipe's model through the Family protocol, the way the
recipe does it: stage 1 aligns the connector on image captions (the data engine's open-QA
diagnosis answers, "The appearance is most consistent with glaucoma."), stage 2 tunes connector +
LoRA on closed QA (four-option diagnosis + yes/no). Closed-QA accuracy on held-out patients must
beat the untrained model, chance + 0.1 and always giving the most frequent answer.

Why a caption stage: trained on closed QA alone, 40 CPU steps learn the answer format and priors
(always "A", always "No") but not the image: every example carries one answer token, and the
letter depends on the image only through the shuffled options. A caption names the disease
directly, so the connector learns to put it into the LLM's embedding space first.

Measured (still skipped): a logistic-regression probe on the same frozen tower features separates
the 8 synthetic classes at 0.91-0.95 on held-out patients, yet after 30 connector-only caption
steps (loss 3.8 -> 0.5) every held-out caption names the same disease: within a CPU-test budget
the connector learns the caption's wording and the class prior, not the class. 30 + 30 steps
(closed QA mixed with captions in stage 2, lr 2e-3) end the same way: 0.36, always "D" / "No".
With per-layer input LayerNorm in the connector (tokens ~4.7 vs word embeddings ~3.2, was ~13),
this test's 15 + 25 steps reach align loss 1.05 (was 1.25) but held-out closed QA 0.34 vs chance
0.375: still always "A" / "No". Input scale was not the bottleneck.
"""

from __future__ import annotations

import os

import pytest
import torch
from _vlm_helpers import save_tiny_llm, tiny_recipe
from PIL import Image

from eyeops.data.schema import Message
from eyeops.evaluate.runner import EvalContext, read_split
from eyeops.models.vlm import FAMILY, _tokenizer
from eyeops.models.vlm_processing import collate
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


@pytest.mark.slow
@pytest.mark.skip(
    reason="known gap (issue 8): after 15 caption-alignment + 25 closed-QA steps the model still answers "
    "the priors ('A', 'No'): held-out closed-QA 0.34 (input-normalised connector; 0.36 without) vs chance "
    "0.375 on 96 samples (closed QA alone: 0.27); the 4-minute CPU budget allows ~60 steps of ~5 CPU-s"
)
def test_closed_qa_accuracy_rises_above_chance(tmp_path, monkeypatch):
    from eyeops.data import prepare
    from eyeops.data.store import load_samples, write_samples

    # The converted SmolLM2 is cached across tests/runs when EYEOPS_MODEL_CACHE is set.
    monkeypatch.setenv("EYEOPS_MODEL_CACHE", os.environ.get("EYEOPS_MODEL_CACHE", str(tmp_path / "models")))
    torch.manual_seed(0)
    spec = DataSpec(
        source="synthetic",
        n=240,
        seed=3,
        image_size=128,
        tasks=["closed_qa", "open_qa"],
        val_fraction=0.0,
        test_fraction=0.2,
    )
    data = prepare(spec, str(tmp_path / "data"), name="vlm-closed-qa")
    data_dir = tmp_path / "data"
    # Keep closed QA and the diagnosis captions (the data engine ids them "<image id>-diagnosis").
    kept = [s for s in load_samples(data_dir) if s.task == "closed_qa" or s.id.endswith("-diagnosis")]
    write_samples(kept, data_dir)
    recipe = load_recipe("eye-vlm").with_overrides(
        {
            "model.system_prompt": "Answer concisely.",  # SmolLM2's default one is 3x longer
            "model.max_seq_len": 160,
            "train.stages": [
                {
                    "name": "align",
                    "trainable": ["connector"],
                    "data_tasks": ["open_qa"],
                    "max_steps": 15,
                    "lr": 3e-3,
                },
                {
                    "name": "instruct",
                    "trainable": ["connector", "lora"],
                    "data_tasks": ["closed_qa"],
                    "max_steps": 25,
                    "lr": 1e-3,
                },
            ],
        }
    )
    model = FAMILY.build_model(recipe)
    collate_fn = FAMILY.collate_fn(recipe)
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
    generator = torch.Generator().manual_seed(0)
    for stage in recipe.train.stages:
        FAMILY.apply_stage(model, stage)
        model.train()
        train = FAMILY.datasets(recipe, data_dir, stage)["train"]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=stage.lr)
        for _ in range(stage.max_steps):
            idx = torch.randperm(len(train), generator=generator)[:8].tolist()
            loss = FAMILY.loss(model, collate_fn([train[i] for i in idx]))
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    after = accuracy("after")
    chance = float((1.0 / test["options"].map(len)).mean())
    majority = float(test["answer"].value_counts(normalize=True).max())
    assert data.num_samples > 0
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
