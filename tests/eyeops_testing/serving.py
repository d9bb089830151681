"""Serving test helpers: one real classifier, trained a few steps and registered through the registry.

The model is built by the classifier family (packaged ImageNet backbone), trained for a few steps
on synthetic fundus images, calibrated on held-out ones (temperature + OOD screen, as training does
after its last step), evaluated with the evaluation room's metrics and registered with the
registry room's ``register`` into a session storage root; servers are real processes on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

API_KEY = "test-key-classify-0123456789"
CHAT_KEY = "test-key-chat-only-0123456789"
ADMIN_KEY = "test-key-admin-0123456789abc"
API_KEYS = f"{API_KEY}:classify;{CHAT_KEY}:chat;{ADMIN_KEY}:admin"
MODEL_NAME = "eyeops-serve-test"
# Limits of the shared gateway server: small enough that tests can cross them cheaply.
MAX_BODY = 3_000_000
MAX_PIXELS = 4_000_000
# Synthetic image seeds: 0 trains the served classifier, 1 is its evaluation set, VAL_SEED its
# calibration (validation) set; tests drawing unseen in-distribution images use other seeds.
VAL_SEED = 2
REFERENCE_IMAGES = 200


@dataclass(frozen=True)
class Registered:
    storage_root: Path
    model_name: str
    version: int
    model_dir: Path
    recipe: object
    version_ref: object  # eyeops.refs.ModelVersionRef returned by register()

    def env(self, **extra: str) -> dict[str, str]:
        return server_env(self.storage_root, **extra)


def server_env(storage_root: Path, **extra: str) -> dict[str, str]:
    """Environment of a server process: this storage root, the test API keys, offline hubs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EYEOPS_")}
    env |= {
        "EYEOPS_STORAGE_ROOT": str(storage_root),
        "EYEOPS_API_KEYS": API_KEYS,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "2",
    }
    return env | extra


def _recipe():
    from eyeops.recipes import parse_recipe

    return parse_recipe(
        {
            "name": "serve-test",
            "model": {
                "family": "classifier",
                "backbone": "efficientnet_lite0",
                "weights": "packaged",
                "image_size": 64,
                "circular_crop": True,
            },
            "register": {"model_name": MODEL_NAME},
            "serve": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 2,
                "max_batch_size": 8,
            },
        }
    )


def _train_save_register(root: Path) -> Registered:
    import torch

    from eyeops.data.synthetic import generate
    from eyeops.evaluate.metrics import classification_metrics
    from eyeops.families import get_family
    from eyeops.models.classifier.calibration import calibrate_classifier
    from eyeops.refs import CheckpointRef, EvalReport
    from eyeops.registry import register

    recipe = _recipe()
    family = get_family("classifier")
    model = family.build_model(recipe)
    from eyeops.models.classifier.modeling import FundusTransform

    transform = FundusTransform(64, train=True)
    train = list(generate(16, seed=0, size=64))
    batch = {
        "image": torch.stack([transform(Image.fromarray(s.image)) for s in train]),
        "labels": torch.tensor([s.labels for s in train], dtype=torch.float32),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):  # a few real steps: the served weights are a trained model, not an initialisation
        optimizer.zero_grad()
        loss = family.loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model_dir = root / "checkpoints" / "serve-test"
    family.save(model, recipe, model_dir)
    # What training does after its last step: temperature and OOD screen fitted on held-out images.
    # The screen's neighbours are a training split of realistic size (the 3 steps saw its first 16).
    val = list(generate(40, seed=VAL_SEED, size=64))
    calibrate_classifier(
        model,
        recipe.model,
        train_images=(Image.fromarray(s.image) for s in generate(REFERENCE_IMAGES, seed=0, size=64)),
        val_images=[Image.fromarray(s.image) for s in val],
        val_labels=[s.labels for s in val],
    ).save(model_dir)

    loaded = family.load(model_dir)
    held_out = list(generate(16, seed=1, size=64))
    results = loaded.classify([Image.fromarray(s.image) for s in held_out])
    probs = np.array([[r.probabilities[label] for label in loaded.labels] for r in results])
    metrics = classification_metrics(np.array([s.labels for s in held_out]), probs, loaded.labels)
    flat = metrics.flat()
    fingerprint = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(model_dir.iterdir()))).hexdigest()
    checkpoint = CheckpointRef(
        uri=str(model_dir),
        fingerprint=fingerprint,
        recipe_name=recipe.name,
        family="classifier",
        run_name="serve-test-run",
        step=3,
        metrics={"loss": losses[-1]},
    )
    report_dir = root / "eval"
    report_dir.mkdir(parents=True, exist_ok=True)
    report = EvalReport(
        uri=str(report_dir), split="test", num_samples=len(held_out), metrics=flat, primary_metric="macro_f1"
    )
    version = register(recipe, checkpoint, report)
    return Registered(root, version.name, version.version, model_dir, recipe, version)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ServerProcess:
    """A real server process on 127.0.0.1 (killed by its pid at teardown)."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eyeops", *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, path: str = "/readyz", timeout_s: float = 180) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port_server(args: list[str], env: dict[str, str], tmp_path_factory, name: str) -> ServerProcess:
    """``python -m eyeops <args> --port <free port>`` with its log in a fresh tmp dir."""
    from eyeops.serve.local import free_port

    port = free_port()
    log_path = tmp_path_factory.mktemp(f"{name}-server") / "server.log"
    return ServerProcess([*args, "--port", str(port)], env, port, log_path)


@contextmanager
def local_server(model_dir: Path, tmp_path_factory, name: str) -> Iterator[ServerProcess]:
    """``eyeops serve --backend local --model <model_dir>`` as a real process, ready; stopped after."""
    env = server_env(tmp_path_factory.mktemp(f"{name}-root"))
    args = ["serve", "--backend", "local", "--model", str(model_dir)]
    proc = free_port_server(args, env, tmp_path_factory, name)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def start_server(
    registered: Registered, tmp_path_factory, backend: str, *extra: str, **env: str
) -> ServerProcess:
    """The registered champion behind ``eyeops serve --backend <backend>``."""
    args = ["serve", "--backend", backend, "--model", f"{registered.model_name}@champion", *extra]
    return free_port_server(args, registered.env(**env), tmp_path_factory, backend)
