"""Training on a real local Ray (2 CPU workers): DDP with stages + CLI, resume, worker kill, DeepSpeed.

One Ray session serves the whole module (``ray_session``); ``train`` reuses it rather than
starting its own.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from eyeops.cli import app
from eyeops.models.classifier.family import FAMILY
from eyeops.recipes import load_recipe
from eyeops.refs import CheckpointRef
from eyeops.train import train

pytestmark = pytest.mark.integration

TINY = {"model.image_size": 32, "train.batch_size": 4, "train.log_every_steps": 1, "train.warmup_steps": 0}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("fundus-classifier").with_overrides(TINY)


def test_cli_trains_two_stages_on_two_ddp_workers_then_a_rerun_resumes(ray_session, small_dataset, tmp_path):
    storage = tmp_path / "runs"
    sets = [f"{k}={v}" for k, v in TINY.items()] + [
        "train.stages=[{name: head, trainable: [head], max_steps: 2, lr: 0.01}, "
        "{name: all, trainable: [all], max_steps: 2}]",
        "train.checkpoint_every_steps=3",
    ]
    args = [
        "train",
        "fundus-classifier",
        "--data",
        small_dataset.uri,
        "--run-name",
        "ddp",
        "--storage",
        str(storage),
        "--ref-out",
        str(tmp_path / "ref.json"),
    ]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ref = CheckpointRef.model_validate_json((tmp_path / "ref.json").read_text())
    assert ref.uri in result.stdout
    assert ref.step == 4 and ref.resumed_from_step is None and ref.run_name == "ddp"
    assert ref.dataset_fingerprint == small_dataset.fingerprint
    assert Path(ref.uri).parent.parent == storage / "ddp"
    first = load_file(str(Path(ref.uri) / "model.safetensors"))
    answer = FAMILY.load(Path(ref.uri)).classify([_disc()])[0]
    assert answer.probabilities.keys() == set("NDGCAHMO")
    # Rank 0 calibrated the saved model after the last step: temperature on 'val', OOD screen.
    calibration = json.loads((Path(ref.uri) / "calibration.json").read_text())
    assert calibration["held_out"] == "val" and calibration["counts"]["val"] > 0
    assert answer.out_of_distribution is not None and answer.ood_threshold == pytest.approx(
        calibration["ood_threshold"], abs=1e-5
    )

    # Same run name, a longer second stage: training continues from step 4 instead of restarting.
    longer = load_recipe("fundus-classifier").with_overrides(
        {
            **TINY,
            "train.stages": [
                {"name": "head", "trainable": ["head"], "max_steps": 2, "lr": 0.01},
                {"name": "all", "trainable": ["all"], "max_steps": 4},
            ],
        }
    )
    again = train(longer, small_dataset, run_name="ddp", storage_path=str(storage))
    assert again.resumed_from_step == 4 and again.step == 6
    second = load_file(str(Path(again.uri) / "model.safetensors"))
    assert not torch.equal(first["conv_stem.weight"], second["conv_stem.weight"])  # the backbone trained on
    assert again.fingerprint != ref.fingerprint


def _disc():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).ellipse((4, 4, 60, 60), fill=(190, 90, 40))
    return image


def _alive_train_worker_pids() -> list[int]:
    # Ray's GCS actor table (this session only): the dashboard-backed state API is off in tests.
    from ray._private.state import actors

    return [
        a["Pid"]
        for a in actors(actor_state_name="ALIVE").values()
        if a["ActorClassName"].endswith("RayTrainWorker") and a["Pid"]
    ]


def test_killing_a_worker_resumes_from_the_last_checkpoint(ray_session, recipe, small_dataset, tmp_path):
    storage = tmp_path / "runs"
    snapshot = storage / "killed" / "checkpoint_manager_snapshot.json"
    killed: dict[str, object] = {}

    def kill_one_worker_after_first_checkpoint() -> None:
        try:
            _watch_and_kill()
        except Exception as exc:  # surfaced by the assertion below, not lost in the thread
            killed["error"] = repr(exc)

    def _watch_and_kill() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            # The snapshot lists checkpoints the controller has registered: one is safe to resume from.
            if snapshot.is_file() and json.loads(snapshot.read_text()).get("checkpoint_results"):
                pids = _alive_train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.update(pid=pids[-1], at=json.loads(snapshot.read_text())["checkpoint_results"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_after_first_checkpoint, daemon=True)
    killer.start()
    ref = train(
        recipe,
        small_dataset,
        run_name="killed",
        storage_path=str(storage),
        overrides={"train.max_steps": 24, "train.checkpoint_every_steps": 3, "train.max_failures": 1},
    )
    killer.join(timeout=5)
    assert "pid" in killed, f"no worker was killed before the run ended: {killed}"
    assert ref.step == 24
    assert ref.resumed_from_step is not None and ref.resumed_from_step >= 3 and ref.resumed_from_step % 3 == 0
    assert ref.resumed_from_step < 24  # resumed mid-run, not from scratch and not after the end


@pytest.mark.slow
def test_deepspeed_zero2_on_two_cpu_workers_checkpoints_and_resumes(
    ray_session, recipe, small_dataset, tmp_path
):
    storage = tmp_path / "runs"
    ds = {
        "train.strategy": "deepspeed",
        "train.deepspeed": {"zero_stage": 2},
        "train.checkpoint_every_steps": 2,
        "train.max_steps": 3,
    }
    ref = train(recipe, small_dataset, run_name="zero2", storage_path=str(storage), overrides=ds)
    assert ref.step == 3 and ref.resumed_from_step is None
    files = {p.name for p in (Path(ref.ray_checkpoint_uri) / "deepspeed").iterdir()}
    # ZeRO-2 partitions optimizer state: each rank wrote its own shard into the merged checkpoint.
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files
    assert FAMILY.load(Path(ref.uri)).classify([_disc()])

    again = train(
        recipe,
        small_dataset,
        run_name="zero2",
        storage_path=str(storage),
        overrides={**ds, "train.max_steps": 5},
    )
    assert again.resumed_from_step == 3 and again.step == 5
