"""GPU check: the seeds' production architectures at full size, trained and served on one GPU.

    .venv/bin/python benchmarks/gpu_check.py            # full size, bf16, needs CUDA (`make gpu-check`)
    .venv/bin/python benchmarks/gpu_check.py --tiny     # the same phases at tiny size on CPU (CI)

For each model — EyecareGPT-3.8B (``eyecaregpt-3-8b``: SigLIP-so400m + Phi-3.5-mini) and Ophtimus-8B
(``ophtimus-8b``: Llama-3.1-8B) — nothing is downloaded: the language model is built at full size
with random weights from the architecture fields ``eyeops plan`` ships (``eyeops.plan.hub_config``)
and written with ``save_pretrained`` into a local directory, which the recipe then names in place of
its hub id (``from_pretrained(dir)``, exactly the production path); the vision tower is built from
its config (``model.vision.config``). The packaged SmolLM2 tokenizer stands in for the hub's, so
Phi-3.5's vocabulary grows from 32,064 to the tokenizer's 49,152 rows (Llama-3.1 keeps 128,256).

1. **Train**: the shipped recipe with one LoRA stage (the recipe's adapters: rank, alpha, targets),
   gradient checkpointing on, bf16 weights and autocast, 1 GPU worker (DDP), through the real Ray
   Train loop (``eyeops.train.train`` on a prepared dataset). Every sample has the same length
   (packed ``max_seq_len`` blocks for Ophtimus; one fundus photograph + a fixed report for
   EyecareGPT, AnyRes 2x2 + global view), so tokens/s = the loop's ``train_samples_per_s`` (the
   first step excluded) x tokens per sample. Peak memory: the GPU's used memory sampled with
   ``nvidia-smi`` minus what was in use before (on CPU: the Ray Train worker's peak RSS).
2. **MFU** = model FLOPs/s / the card's dense bf16 peak (H100 SXM 989 TFLOPS, H100 PCIe 756, H200 989,
   A100 312). Model FLOPs follow PaLM's MFU (no recomputation counted, so gradient checkpointing's
   extra forward is *not* credited): per LM token, forward ``2N`` + backward through the frozen
   weights (activation gradients only) ``2N`` + LoRA ``6·N_lora`` (forward, activation and weight
   gradients) + attention ``12·L·h·s`` (PaLM's convention: forward ``4·L·h·s``, backward twice
   that); ``N`` = the LM's matmul weights (attention, MLP, lm_head; not the embedding lookup).
   Frozen vision tower (EyecareGPT): forward only, ``2·N_vit + 4·L_v·h_v·p`` per patch. The
   connector's forward (<0.2 %) is not counted. Hardware FLOPs (with the recomputed forward) would
   add ``2N`` per token.
3. **Serve**: the trained model directory loaded on the GPU by ``eyeops.serve.load_predictor``,
   behind the real gateway (``eyeops.serve.gateway.create_app``: FastAPI + the MicroBatcher, the
   recipe's batch window) on uvicorn; at 1 and 16 concurrent requests it prints tokens/s
   (non-streamed requests, released together) and time-to-first-token (streamed requests: the first
   content chunk a client receives) vs ONE plain batched ``lm.generate`` of the same requests on the
   same model and GPU (inputs built before the clock starts; TTFT = when its first token exists).
   The weights are random, so every answer is held to exactly ``--new-tokens`` tokens
   (``generation_config.min_new_tokens``); the script fails if any answer is shorter.

Goals (benchmarks/RESULTS.md): MFU >= 40 % for LoRA at 3.8B; endpoint >= 0.9x plain generate.
Prints one summary table and one machine-readable line: ``GPU_CHECK_JSON {...}``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODELS = ("eyecaregpt-3-8b", "ophtimus-8b")
# Dense bf16 tensor-core peak per card (no sparsity), matched against torch.cuda.get_device_name.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
API_KEY = "gpu-check-key-0123456789abcdef"
PROMPT = "Describe this fundus photograph and list the findings."
REPORT = (
    "Colour fundus photograph of the right eye. The optic disc is well defined with a cup-to-disc "
    "ratio of about 0.3; the neuroretinal rim is healthy. Retinal vessels show a normal calibre and "
    "course. The macula has a normal foveal reflex, without haemorrhages, exudates or drusen. "
    "Impression: no diabetic retinopathy, no glaucomatous cupping, no macular degeneration."
)
# Tiny sizes of the same architectures (same model_type and module names): the CPU smoke check.
TINY_LM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "image_size": 28}


@dataclass(frozen=True)
class Size:
    """What differs between the full-size GPU check and its tiny CPU smoke version."""

    tiny: bool
    device: str
    steps: int
    batch: int
    llm_seq: int
    new_tokens: int
    repeats: int
    image_side: int  # stored training images and request images
    concurrency: tuple[int, ...] = (1, 16)

    @property
    def dtype(self) -> str:
        return "float32" if self.tiny else "bfloat16"


@dataclass
class ModelResult:
    recipe: str
    params: int = 0
    lm_params: int = 0
    lora_params: int = 0
    tokens_per_sample: int = 0
    batch: int = 0
    steps: int = 0
    train_tokens_per_s: float = 0.0
    model_flops_per_token: float = 0.0
    model_tflops: float = 0.0
    mfu: float | None = None
    peak_memory_gib: float = 0.0
    memory_source: str = ""
    serving: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- sizes and configs ---------------------------------------------------------------------------
def card_peak(device: str) -> tuple[str, float | None]:
    """(device name, dense bf16 peak FLOP/s or None when unknown / a CPU)."""
    if device == "cpu":
        return "cpu", None
    import torch

    name = torch.cuda.get_device_name(0)
    return name, next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def lm_config(ref: str, tokenizer: Any, tiny: bool) -> dict[str, Any]:
    """The LM's config: the shipped full-size architecture (or its tiny shape), ids of ``tokenizer``."""
    from eyeops.plan import hub_config

    cfg = hub_config(ref)
    if tiny:
        grouped = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) < cfg["num_attention_heads"]
        cfg |= TINY_LM | {"num_key_value_heads": 2 if grouped else 4, "max_position_embeddings": 1024}
        cfg.pop("head_dim", None)
    # Random tokens must stay inside the embedding: never fewer rows than the stand-in tokenizer has.
    cfg["vocab_size"] = len(tokenizer) if tiny else max(int(cfg["vocab_size"]), len(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return cfg | {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": pad,
    }


def tower_config(ref: str, tiny: bool) -> dict[str, Any]:
    """The vision tower's config fields (``model.vision.config``): full size, or its tiny shape."""
    from eyeops.plan import hub_config

    cfg = hub_config(ref)
    cfg = dict(cfg.get("vision_config", cfg))
    cfg = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "transformers_version")}
    return cfg | TINY_TOWER if tiny else cfg


def random_checkpoint(cfg: dict[str, Any], tokenizer: Any, dest: Path, size: Size) -> Path:
    """A randomly initialised causal LM of ``cfg`` saved like a hub checkpoint (built on the device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from eyeops.models.common.hub import torch_dtype

    cfg = dict(cfg)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    with torch.device(size.device):  # random init of 8B weights on a GPU takes seconds, not minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(size.dtype))
    model.generation_config.eos_token_id = cfg["eos_token_id"]
    model.generation_config.pad_token_id = cfg["pad_token_id"]
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    _free_device_memory(size.device)
    return dest


def _free_device_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --- recipe and data -----------------------------------------------------------------------------
def check_recipe(name: str, lm_dir: Path, size: Size, corpus: Path) -> Any:
    """The shipped recipe on the local LM: one LoRA stage, 1 worker, ``size``'s steps and batch."""
    from eyeops.recipes import load_recipe, parse_recipe

    data = load_recipe(name).model_dump(mode="json")
    model = data["model"]
    model.update(dtype=size.dtype, attn_implementation="sdpa", gradient_checkpointing=True)
    if model["family"] == "vlm":
        model["llm"] = str(lm_dir)
        model["vision"]["config"] = tower_config(model["vision"]["name"], size.tiny)
        if size.tiny:
            model["vision"]["image_size"] = TINY_TOWER["image_size"]
            model["max_seq_len"] = 256
        tasks = ["open_qa"]
    else:
        model.update(base=str(lm_dir), max_seq_len=size.llm_seq, corpus=[str(corpus)])
        tasks = ["pretrain_text"]  # packed blocks: every sample is max_seq_len tokens
    gpu = size.device == "cuda"
    data["train"].update(
        num_workers=1,
        use_gpu=gpu,
        accelerator_type=None,
        resources_per_worker={"CPU": min(8, os.cpu_count() or 1), "GPU": 1} if gpu else {"CPU": 1},
        strategy="ddp",
        mixed_precision="bf16" if gpu else "no",
        batch_size=size.batch,
        grad_accum_steps=1,
        warmup_steps=0,
        checkpoint_every_steps=1_000_000,
        log_every_steps=size.steps,
        max_failures=0,
        stages=[{"name": "lora", "trainable": ["lora"], "data_tasks": tasks, "max_steps": size.steps}],
    )
    data["train"].pop("deepspeed", None)
    data["serve"].update(max_batch_size=max(size.concurrency))
    return parse_recipe(data, origin=f"{name} (gpu_check)")


def retina(side: int, variant: int = 0) -> Any:
    """scikit-image's real fundus photograph, ``side`` px, in one of 8 orientations."""
    from PIL import Image
    from skimage import data as skdata

    image = Image.fromarray(skdata.retina()).resize((side, side))
    image = image.rotate(90 * (variant % 4))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if variant % 8 >= 4 else image


def prepare_data(recipe: Any, work: Path, size: Size, tokenizer: Any) -> Any:
    """A prepared dataset (and, for the LLM, the corpus file it names) of samples of one length."""
    from eyeops.data import prepare
    from eyeops.recipes import DataSpec

    if recipe.family == "vlm":
        images = work / "images"
        images.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(8):
            retina(size.image_side, i).save(images / f"{i}.png")
            turns = [{"from": "human", "value": f"<image>\n{PROMPT}"}, {"from": "gpt", "value": REPORT}]
            rows.append({"id": f"r{i}", "image": f"{i}.png", "patient_id": f"p{i}", "conversations": turns})
        (work / "train.json").write_text(json.dumps(rows))
        spec = DataSpec(
            source="llava",
            path=str(work / "train.json"),
            image_size=size.image_side,
            tasks=["open_qa"],
            val_fraction=0.0,
            test_fraction=0.0,
        )
        return prepare(spec, str(work / "dataset"), name="gpu-check-vlm")
    from eyeops.models.llm.family import knowledge_base_texts

    # The packaged knowledge base, repeated until it packs into enough blocks for a few epochs.
    docs, need = knowledge_base_texts(), 4 * size.batch * size.llm_seq
    per_round = sum(len(tokenizer(d)["input_ids"]) + 1 for d in docs)
    corpus = Path(recipe.model.corpus[0])
    corpus.write_text("\n\n".join(docs * math.ceil(need / per_round)), encoding="utf-8")
    spec = DataSpec(source="knowledge", tasks=["text_qa"], val_fraction=0.0, test_fraction=0.0)
    return prepare(spec, str(work / "dataset"), name="gpu-check-llm")


def sample_shape(recipe: Any, dataset: Any) -> tuple[int, int]:
    """(LM tokens per sample, vision views per sample) of the training set, as the loop sees it.

    Packed blocks are all ``max_seq_len`` long but the last; a batch is padded to its longest row,
    so the width every batch is computed at is the longest sample.
    """
    from eyeops.data import local_dataset_dir
    from eyeops.families import get_family

    family, stage = get_family(recipe.family), recipe.train.stages[0]
    train_set = family.datasets(recipe, local_dataset_dir(dataset.uri), stage)["train"]
    lengths, views = set(), 0
    for i in range(len(train_set)) if recipe.family == "llm" else (0, len(train_set) - 1):
        item = train_set[i]
        lengths.add(len(item["input_ids"] if isinstance(item, dict) else item.input_ids))
        views = 0 if isinstance(item, dict) else int(item.pixel_values.shape[0])
    if recipe.family != "llm" and len(lengths) != 1:
        raise RuntimeError(f"{recipe.name}: samples of different lengths {sorted(lengths)}")
    return max(lengths), views


# --- FLOPs ---------------------------------------------------------------------------------------
def lm_flops_per_token(lm: Any, lora_params: int, seq: int) -> tuple[float, int]:
    """(model FLOPs per token for LoRA training, N = the LM's matmul weights): see the docstring."""
    n = lm.layers * (
        lm.hidden * (lm.hidden + 2 * lm.kv_dim) + lm.hidden * lm.hidden + 3 * lm.hidden * lm.intermediate
    )
    n += lm.vocab * lm.hidden  # lm_head
    return 4.0 * n + 6.0 * lora_params + 12.0 * lm.layers * lm.hidden * seq, n


def tower_flops_per_patch(cfg: dict[str, Any], patches_per_view: int) -> float:
    """Forward FLOPs of a frozen ViT per patch: ``2·N_vit + 4·L·h·p`` (patch embedding included)."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    n = layers * (4 * h * h + 2 * h * i) + 3 * cfg["patch_size"] ** 2 * h
    return 2.0 * n + 4.0 * layers * h * patches_per_view


# --- peak memory ---------------------------------------------------------------------------------
class PeakMemory:
    """Samples memory in a thread: GPU used memory (nvidia-smi) or the Ray Train worker's RSS."""

    def __init__(self, device: str) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self.baseline = self._gpu_used() if device == "cuda" else 0
        self.source = (
            "GPU memory used during training (nvidia-smi) minus before"
            if device == "cuda"
            else "peak RSS of the Ray Train worker process"
        )

    @staticmethod
    def _gpu_used() -> int:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[0]) * 1024**2

    @staticmethod
    def _worker_rss() -> int:
        import psutil

        rss = 0
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "RayTrainWorker" in " ".join(proc.cmdline()):
                    rss = max(rss, proc.memory_info().rss)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self._gpu_used() - self.baseline if self.device == "cuda" else self._worker_rss()
            self.peak = max(self.peak, used)
            self._stop.wait(0.2)

    @contextlib.contextmanager
    def watching(self) -> Iterator[PeakMemory]:
        thread = threading.Thread(target=self._run, name="gpu-check-memory", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


# --- serving -------------------------------------------------------------------------------------
@contextlib.contextmanager
def gateway(predictor: Any, recipe: Any) -> Iterator[str]:
    """The real gateway app (auth, MicroBatcher with the recipe's window) on uvicorn; its URL."""
    import uvicorn

    from eyeops.serve.gateway import create_app
    from eyeops.serve.local import free_port
    from eyeops.serve.settings import load_serve_settings

    settings = load_serve_settings(
        api_keys=f"{API_KEY}:chat",
        max_batch_size=recipe.serve.max_batch_size,
        batch_wait_timeout_s=recipe.serve.batch_wait_timeout_s,
        request_timeout_s=600,
        max_body_bytes=64 * 1024 * 1024,
    )
    config = uvicorn.Config(
        create_app([predictor], settings),
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gpu-check-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def plain_generate(chat: Any, requests: list[Any], device: str) -> tuple[int, float, float]:
    """(new tokens, seconds, TTFT) of ONE batched ``lm.generate`` over ``requests`` (inputs prebuilt)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    inputs = chat.inputs(requests)
    first: list[float] = []

    class FirstToken(StoppingCriteria):  # called after every decoded token; never stops anything
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if not first:
                _sync(device)
                first.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), chat.decoding(requests):
        out = chat.lm.generate(
            **inputs,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=max(chat.token_limit(r) for r in requests),
            pad_token_id=int(chat.tokenizer.pad_token_id),
            eos_token_id=chat.stop_ids,
            stopping_criteria=StoppingCriteriaList([FirstToken()]),
            **chat.constraints(requests),
        )
    _sync(device)
    seconds = time.perf_counter() - start
    if "input_ids" in inputs:
        out = out[:, inputs["input_ids"].shape[1] :]
    tokens = 0
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in chat.stop_ids), None)
        tokens += len(row) if cut is None else cut + 1
    return tokens, seconds, first[0] - start


def _post_together(url: str, bodies: list[dict], one: Any) -> list[Any]:
    """``one(client, url, body)`` for every body, one thread each, released together."""
    import httpx

    results: list[Any] = [None] * len(bodies)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(bodies) + 1)

    def client(i: int) -> None:
        with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            barrier.wait()
            try:
                results[i] = one(http, url, bodies[i])
            except BaseException as exc:  # re-raised in the caller below
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _complete(http: Any, url: str, body: dict) -> tuple[int, float]:
    start = time.perf_counter()
    response = http.post(url + "/v1/chat/completions", json=body)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"]), time.perf_counter() - start


def _first_chunk(http: Any, url: str, body: dict) -> float:
    """Seconds until the first content chunk of a streamed answer (the stream is read to its end)."""
    start, first = time.perf_counter(), None
    with http.stream("POST", url + "/v1/chat/completions", json=body | {"stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("a streamed answer had no content")
    return first


def serve_check(model_dir: Path, recipe: Any, size: Size) -> dict[str, dict[str, float]]:
    """Endpoint vs plain batched generate at each concurrency: tokens/s and TTFT (medians)."""
    from eyeops.data.schema import IMAGE_TOKEN, Message
    from eyeops.inference import GenerationRequest
    from eyeops.serve.predictor import load_predictor

    predictor = load_predictor(model_dir, device=size.device)
    chat = predictor.model
    chat.lm.generation_config.min_new_tokens = size.new_tokens  # random weights: fixed-length answers
    with_image = "report" in chat.capabilities
    image = retina(size.image_side // 2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url_image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content: Any = [{"type": "image_url", "image_url": {"url": url_image}}, {"type": "text", "text": PROMPT}]
    request = GenerationRequest(
        messages=[Message(role="user", content=f"{IMAGE_TOKEN}\n{PROMPT}" if with_image else PROMPT)],
        images=[image] if with_image else [],
        max_new_tokens=size.new_tokens,
    )
    body = {
        "model": predictor.name,
        "messages": [{"role": "user", "content": content if with_image else PROMPT}],
        "max_tokens": size.new_tokens,
        "temperature": 0,
    }
    out: dict[str, dict[str, float]] = {}
    with gateway(predictor, recipe) as url:
        top = max(size.concurrency)
        plain_generate(chat, [request] * top, size.device)  # warm-up: allocator, kernels, a full batch
        _post_together(url, [body] * top, _complete)
        for n in size.concurrency:
            plain, served, ttft = [], [], []
            for _ in range(size.repeats):
                plain.append(plain_generate(chat, [request] * n, size.device))
                answers = _post_together(url, [body] * n, _complete)
                if any(tokens != size.new_tokens for tokens, _ in answers):
                    raise RuntimeError(f"answers not held to {size.new_tokens} tokens: {answers}")
                served.append((sum(t for t, _ in answers), max(s for _, s in answers)))
                ttft.append(statistics.median(_post_together(url, [body] * n, _first_chunk)))
            if any(tokens != n * size.new_tokens for tokens, _, _ in plain):
                raise RuntimeError(f"plain generate not held to {size.new_tokens} tokens: {plain}")
            plain_rate = statistics.median(t / s for t, s, _ in plain)
            served_rate = statistics.median(t / s for t, s in served)
            out[str(n)] = {
                "plain_tokens_per_s": plain_rate,
                "endpoint_tokens_per_s": served_rate,
                "ratio": served_rate / plain_rate,
                "plain_ttft_s": statistics.median(f for _, _, f in plain),
                "endpoint_ttft_s": statistics.median(ttft),
            }
    del chat, predictor
    _free_device_memory(size.device)
    return out


# --- one model -----------------------------------------------------------------------------------
def check_model(name: str, size: Size, work: Path, peak_flops: float | None) -> ModelResult:
    """Build, train (Ray Train), measure and serve one production architecture."""
    from eyeops.models.common.hub import load_tokenizer
    from eyeops.models.common.specs import PACKAGED_LLM
    from eyeops.plan import count_parameters, hub_config
    from eyeops.recipes import load_recipe
    from eyeops.train import train

    result, clock = ModelResult(recipe=name), time.perf_counter()
    shipped = load_recipe(name)
    tokenizer = load_tokenizer(PACKAGED_LLM)
    ref = shipped.model.llm if shipped.family == "vlm" else shipped.model.base
    cfg = lm_config(ref, tokenizer, size.tiny)
    if not size.tiny and cfg["vocab_size"] != int(hub_config(ref)["vocab_size"]):
        result.notes.append(f"vocabulary {cfg['vocab_size']} rows (the stand-in tokenizer's), not {ref}'s")
    lm_dir = random_checkpoint(cfg, tokenizer, work / "lm", size)
    result.seconds["build"] = time.perf_counter() - clock

    clock = time.perf_counter()
    recipe = check_recipe(name, lm_dir, size, work / "corpus.txt")
    dataset = prepare_data(recipe, work, size, tokenizer)
    seq, views = sample_shape(recipe, dataset)
    count = count_parameters(recipe)
    assert count.lm is not None
    result.params, result.lora_params = count.total, count.trainable["lora"]
    per_token, result.lm_params = lm_flops_per_token(count.lm, result.lora_params, seq)
    per_sample = per_token * seq
    if views:  # the frozen tower's forward over every view's patches
        tower = recipe.model.vision.config
        patches = (tower["image_size"] // tower["patch_size"]) ** 2
        per_sample += views * patches * tower_flops_per_patch(tower, patches)
    result.seconds["data"] = time.perf_counter() - clock

    clock = time.perf_counter()
    memory = PeakMemory(size.device)
    with memory.watching():
        checkpoint = train(recipe, dataset, run_name=f"gpu-check-{name}", storage_path=str(work / "runs"))
    samples_per_s = checkpoint.metrics["train_samples_per_s"]
    result.seconds["train"] = time.perf_counter() - clock
    result.tokens_per_sample, result.batch, result.steps = seq, size.batch, size.steps
    result.train_tokens_per_s = samples_per_s * seq
    result.model_flops_per_token = per_sample / seq
    result.model_tflops = samples_per_s * per_sample / 1e12
    result.mfu = samples_per_s * per_sample / peak_flops if peak_flops else None
    result.peak_memory_gib = memory.peak / 1024**3
    result.memory_source = memory.source

    clock = time.perf_counter()
    result.serving = serve_check(Path(checkpoint.uri.removeprefix("file://")), recipe, size)
    result.seconds["serve"] = time.perf_counter() - clock
    return result


# --- output --------------------------------------------------------------------------------------
def summary(results: list[ModelResult], device: str) -> str:
    """One table: training then serving rows per model."""

    def fmt(value: float | None, spec: str = ".1f") -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [f"GPU check on {device}", ""]
    head = (
        f"{'model':<17} {'params':>8} {'LoRA':>7} {'tok/sample':>10} {'tokens/s':>10} {'TFLOPS':>8} "
        f"{'MFU':>6} {'peak GiB':>9}"
    )
    lines += [head, "-" * len(head)]
    for r in results:
        mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        lines.append(
            f"{r.recipe:<17} {r.params / 1e9:>7.2f}B {r.lora_params / 1e6:>6.1f}M {r.tokens_per_sample:>10d} "
            f"{r.train_tokens_per_s:>10.1f} {r.model_tflops:>8.3f} {mfu:>6} {r.peak_memory_gib:>9.2f}"
        )
    head = (
        f"{'model':<17} {'conc':>4} {'plain tok/s':>11} {'endpoint tok/s':>14} {'ratio':>6} "
        f"{'plain TTFT':>10} {'endpoint TTFT':>13}"
    )
    lines += ["", head, "-" * len(head)]
    for r in results:
        for n, s in r.serving.items():
            lines.append(
                f"{r.recipe:<17} {n:>4} {fmt(s['plain_tokens_per_s']):>11} "
                f"{fmt(s['endpoint_tokens_per_s']):>14} "
                f"{s['ratio']:>5.2f}x {s['plain_ttft_s'] * 1e3:>8.1f}ms {s['endpoint_ttft_s'] * 1e3:>11.1f}ms"
            )
    for r in results:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items())
        lines.append(f"{r.recipe}: {phases}" + "".join(f"; {n}" for n in r.notes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny configs of the same architectures, CPU, float32"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated recipes")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (the first is not timed)")
    parser.add_argument("--batch", type=int, default=None, help="micro-batch per step")
    parser.add_argument("--llm-seq", type=int, default=None, help="Ophtimus block length (max_seq_len)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens every answer decodes")
    parser.add_argument("--repeats", type=int, default=None, help="serving rounds per concurrency (median)")
    parser.add_argument(
        "--workdir", default=None, help="keep checkpoints and data here (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible; the full-size check needs one GPU (use --tiny on CPU)",
            file=sys.stderr,
        )
        return 2
    tiny = args.tiny
    size = Size(
        tiny=tiny,
        device="cpu" if tiny else "cuda",
        steps=args.steps or (3 if tiny else 8),
        batch=args.batch or (2 if tiny else 4),
        llm_seq=args.llm_seq or (64 if tiny else 2048),
        new_tokens=args.new_tokens or (4 if tiny else 32),
        repeats=args.repeats or (1 if tiny else 2),
        image_side=64 if tiny else 1024,
    )
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown} (known: {', '.join(MODELS)})")
    device_name, peak = card_peak(size.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    import ray

    ray.init(num_cpus=os.cpu_count() or 1, num_gpus=0 if tiny else 1, include_dashboard=False)
    try:
        results = [check_model(m, size, work / m, peak) for m in args.models.split(",")]
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(results, device_name))
    payload = {
        "device": device_name,
        "peak_bf16_flops": peak,
        "size": asdict(size),
        "models": [asdict(r) for r in results],
    }
    print("GPU_CHECK_JSON " + json.dumps(payload), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
