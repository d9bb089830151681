"""``benchmarks/gpu_check.py --tiny``: every phase of the GPU check at tiny size on CPU.

The same script ``make gpu-check`` runs at full size on a GPU: the EyecareGPT-3.8B and Ophtimus-8B
architectures (same model types and module names, tiny configs) are built, trained with LoRA and
gradient checkpointing through the real Ray Train loop, served through the real gateway and
compared with one plain batched generate. Here: the summary parses and every figure is positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
# The converted packaged tokenizer is kept across runs (as tests/eyeops_testing/production.py keeps it).
MODEL_CACHE = Path(os.environ.get("EYEOPS_TEST_CACHE", Path.home() / ".cache" / "eyeops-tests")) / "models"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = dict(os.environ)
    env.setdefault("EYEOPS_MODEL_CACHE", str(MODEL_CACHE))
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--workdir", str(tmp_path_factory.mktemp("gpu-check"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("GPU_CHECK_JSON ")]
    return run.stdout, json.loads(line.removeprefix("GPU_CHECK_JSON "))


def test_tiny_check_covers_both_models_and_every_phase(report):
    stdout, data = report
    assert data["device"] == "cpu" and data["peak_bf16_flops"] is None and data["size"]["tiny"]
    assert [m["recipe"] for m in data["models"]] == ["eyecaregpt-3-8b", "ophtimus-8b"]
    for model in data["models"]:
        assert model["mfu"] is None  # no dense bf16 peak for a CPU
        for key in ("params", "lm_params", "lora_params", "tokens_per_sample", "train_tokens_per_s"):
            assert model[key] > 0, key
        assert model["model_tflops"] > 0 and model["peak_memory_gib"] > 0
        assert model["lora_params"] < model["params"]
        assert set(model["serving"]) == {"1", "16"}
        for figures in model["serving"].values():
            assert all(v > 0 for v in figures.values()), figures
        assert set(model["seconds"]) == {"build", "data", "train", "serve"}
        assert model["recipe"] in stdout  # the table names every model
    assert "endpoint tok/s" in stdout and "MFU" in stdout


def test_model_flops_follow_the_stated_formula(report):
    """Ophtimus: 4N + 6·N_lora + 12·L·h·s per token, N from the tiny Llama's shape (2 layers)."""
    _, data = report
    (llm,) = [m for m in data["models"] if m["recipe"] == "ophtimus-8b"]
    hidden, inter, layers, kv, vocab, seq = 64, 128, 2, 2 * 16, 49152, llm["tokens_per_sample"]
    n = layers * (hidden * (hidden + 2 * kv) + hidden * hidden + 3 * hidden * inter) + vocab * hidden
    assert llm["lm_params"] == n
    expected = 4 * n + 6 * llm["lora_params"] + 12 * layers * hidden * seq
    assert llm["model_flops_per_token"] == pytest.approx(expected)


def test_full_size_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the full-size check would run")
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA device" in run.stderr
