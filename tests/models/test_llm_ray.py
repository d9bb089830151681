"""eye-llm on the shared Ray Train loop: 2 DDP workers, pretrain + LoRA SFT, then the evaluate stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _llm_tiny import save_tiny_llm, tiny_recipe, write_dataset

from eyeops.evaluate import evaluate
from eyeops.families import get_family
from eyeops.recipes import parse_recipe
from eyeops.refs import DatasetRef

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_two_ddp_workers_pretrain_then_lora_and_evaluate(ray_session, tmp_path):
    from eyeops.train import train

    base = save_tiny_llm(tmp_path / "base")
    data = write_dataset(tmp_path / "data")
    spec = tiny_recipe(base)
    spec["train"].update(num_workers=2, batch_size=2, checkpoint_every_steps=100, log_every_steps=1)
    recipe = parse_recipe(spec)
    checkpoint = train(
        recipe,
        DatasetRef(uri=str(data), fingerprint="tiny"),
        run_name="tiny-llm-ddp",
        storage_path=str(tmp_path / "runs"),
    )
    assert checkpoint.family == "llm" and checkpoint.step == 4  # 2 pretrain + 2 sft steps
    model_dir = Path(checkpoint.uri)
    assert json.loads((model_dir / "llm.json").read_text())["format"] == "base+adapter"
    chat = get_family("llm").load(model_dir)
    assert chat.capabilities == frozenset({"chat"})
    report = evaluate(
        recipe,
        checkpoint,
        DatasetRef(uri=str(data), fingerprint="tiny"),
        out_dir=str(tmp_path / "eval"),
        batch_size=8,
    )
    assert "mcq/accuracy" in report.metrics and "essay/rougeL" in report.metrics
