"""The offline-default VLM (packaged efficientnet_lite0 + SmolLM2) learns synthetic closed QA.

Trains the eye-vlm recipe's model through the Family protocol for a few dozen steps on the data
engine's closed-QA samples (four-option diagnosis + yes/no) and checks closed-QA accuracy on the
held-out patients rises above both the untrained model and chance (1 / number of options).
"""

from __future__ import annotations

import os

import pytest
import torch

from eyeops.evaluate.runner import EvalContext, read_split
from eyeops.models.vlm import FAMILY
from eyeops.recipes import DataSpec, load_recipe


@pytest.mark.slow
@pytest.mark.skip(
    reason="known gap (issue 8): 40 CPU steps teach the offline-default VLM the answer format but not to "
    "read the image (held-out closed-QA 0.27 vs chance 0.375); needs a stronger report-alignment stage "
    "and more steps than a CI test can afford on 2 cores"
)
def test_closed_qa_accuracy_rises_above_chance(tmp_path, monkeypatch):
    from eyeops.data import prepare

    # The converted SmolLM2 is cached across tests/runs when EYEOPS_MODEL_CACHE is set.
    monkeypatch.setenv("EYEOPS_MODEL_CACHE", os.environ.get("EYEOPS_MODEL_CACHE", str(tmp_path / "models")))
    torch.manual_seed(0)
    spec = DataSpec(
        source="synthetic",
        n=120,
        seed=3,
        image_size=128,
        tasks=["closed_qa"],
        val_fraction=0.0,
        test_fraction=0.25,
    )
    data = prepare(spec, str(tmp_path / "data"), name="vlm-closed-qa")
    recipe = load_recipe("eye-vlm").with_overrides(
        {
            "model.system_prompt": None,
            "model.max_seq_len": 160,
            "train.stages": [
                {"name": "align", "trainable": ["connector"], "max_steps": 10, "lr": 2e-3},
                {"name": "instruct", "trainable": ["connector", "lora"], "max_steps": 30, "lr": 1e-3},
            ],
        }
    )
    model = FAMILY.build_model(recipe)
    collate = FAMILY.collate_fn(recipe)
    data_dir = tmp_path / "data"

    def accuracy(tag: str) -> float:
        FAMILY.save(model, recipe, tmp_path / tag)
        ctx = EvalContext(
            recipe=recipe,
            model=FAMILY.load(tmp_path / tag),
            data_dir=data_dir,
            samples=read_split(data_dir, "test"),
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
            loss = FAMILY.loss(model, collate([train[i] for i in idx]))
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    after = accuracy("after")
    test = read_split(data_dir, "test")
    chance = float((1.0 / test["options"].map(len)).mean())
    assert data.num_samples > 0
    assert after > chance + 0.1, (before, after, chance)
    assert after > before, (before, after, chance)
