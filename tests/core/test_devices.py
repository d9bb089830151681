"""eyeops.devices: one resolver for every stage that loads a model, the dtype it runs in, and the
GPUs a pod asks for. No GPU here: a CUDA machine is described to torch's own queries."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from eyeops.config import PlatformSettings, get_settings
from eyeops.devices import gpus_for, mixed_precision, place, preferred_dtype, resolve_device
from eyeops.errors import ConfigError
from eyeops.recipes import EvalSpec, ServeSpec


@pytest.fixture
def two_gpus(monkeypatch):
    """torch's view of a machine with two CUDA GPUs without native bf16 (a T4 pair)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)


def test_auto_is_the_cpu_without_an_accelerator(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resolve_device() == resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("meta")) == torch.device("meta")  # explicit devices pass


def test_cuda_without_a_gpu_is_a_precise_error():
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ConfigError, match=rf"serve\.device '{name}'.*(no CUDA|torch build)"):
            resolve_device(name, field="serve.device")
    with pytest.raises(ConfigError, match=r"evaluate\.device 'gpu': not a device"):
        resolve_device("gpu", field="evaluate.device")


def test_settings_device_is_read_through_auto(monkeypatch):
    monkeypatch.setenv("EYEOPS_DEVICE", "cpu")
    get_settings.cache_clear()
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("EYEOPS_DEVICE", "cuda:1")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match=r"EYEOPS_DEVICE \(settings\.device\) 'cuda:1'"):
        resolve_device(None)
    assert resolve_device("cpu") == torch.device("cpu")  # the recipe's explicit choice wins
    with pytest.raises(ValidationError, match="device"):
        PlatformSettings(device="tpu")


def test_a_gpu_machine(two_gpus):
    assert resolve_device() == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"serve\.device 'cuda:2': only 2 CUDA device\(s\) visible"):
        resolve_device("cuda:2", field="serve.device")
    # bf16 on a GPU without it runs in fp16 (logged); other dtypes follow the recipe
    cuda = torch.device("cuda", 0)
    assert preferred_dtype("bfloat16", cuda) == torch.float16
    assert preferred_dtype("float32", cuda) == torch.float32
    assert mixed_precision("bf16", cuda) == mixed_precision("auto", cuda) == "fp16"
    assert mixed_precision("no", cuda) == "fp32"


def test_dtype_on_cpu_follows_the_recipe():
    cpu = torch.device("cpu")
    assert preferred_dtype("bfloat16", cpu) == torch.bfloat16
    assert mixed_precision("auto", cpu) == "fp32" and mixed_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16' needs a GPU"):
        mixed_precision("fp16", cpu)
    layer = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert place(layer, cpu).weight.dtype == torch.bfloat16


def test_pods_request_the_gpus_their_device_needs():
    assert gpus_for("auto") == 0 and gpus_for("auto", 2) == 2
    assert gpus_for("cuda") == 1 and gpus_for("cuda:1") == 2 and gpus_for("cuda", 4) == 4
    assert ServeSpec(device="cuda").gpu == 1 and ServeSpec(device="cuda:1").gpus == 2
    assert ServeSpec(gpu=1).device == "auto" and ServeSpec().gpus == 0
    assert EvalSpec(device="cuda").gpus == 1 and EvalSpec().gpus == 0
    with pytest.raises(ValidationError, match=r"serve\.device 'cpu' with 1 GPU"):
        ServeSpec(device="cpu", gpu=1)
    with pytest.raises(ValidationError, match=r"serve\.device 'cuda:2' needs at least 3 GPU"):
        ServeSpec(device="cuda:2", gpu=1)
    with pytest.raises(ValidationError, match="device"):
        EvalSpec(device="cuda:x")
