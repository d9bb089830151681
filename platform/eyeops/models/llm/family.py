"""Ophthalmology text LLM family (Ophtimus): any HF causal LM, packed continued pretraining, LoRA SFT.

- ``build_model``: ``AutoModelForCausalLM`` from the recipe's base (packaged SmolLM2 offline,
  Llama-3.x in production); wrapped with a peft LoRA adapter when any stage trains ``lora``.
- Stages pick parameter groups: ``all``, ``base`` (everything but adapters), ``lora``,
  ``embeddings``, ``lm_head``, ``attention``, ``mlp``, ``norms``. A stage whose ``data_tasks``
  names ``pretrain_text`` trains on packed text (dataset documents + ``model.corpus``); every
  other stage does SFT on text_qa / mcq / dialogue / open_qa samples with loss on answers only.
- ``save`` writes ``llm.json`` naming the format: ``adapter`` (base reference + adapter),
  ``base+adapter`` (a base changed by pretraining + adapter), ``merged`` or ``full``.
- ``load`` returns a :class:`~eyeops.models.common.generation.ChatModel` (batched KV-cache generation,
  streaming); ``evaluate`` scores MCQ accuracy and essay metrics per dataset and per topic.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from eyeops.data.schema import Task
from eyeops.errors import ConfigError, DataError, NotFoundError
from eyeops.families import ChatFamily, EvalContext, EvalOutput
from eyeops.models.common.hub import load_causal_lm, load_tokenizer
from eyeops.models.common.language_model import add_lora, load_language_model
from eyeops.models.common.stages import stages_of, trains
from eyeops.models.llm import data as D
from eyeops.models.llm.inference import ChatModel
from eyeops.models.llm.spec import LLMModel
from eyeops.recipes import Recipe, StageSpec, parse_recipe

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset


log = logging.getLogger(__name__)

META_FILE = "llm.json"
RECIPE_FILE = "recipe.yaml"
GROUPS = ("all", "base", "lora", "embeddings", "lm_head", "attention", "mlp", "norms")
_SPLITS = ("train", "val", "test")


def _spec(recipe: Recipe) -> LLMModel:
    if not isinstance(recipe.model, LLMModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'llm'")
    return recipe.model


def uses_lora(recipe: Recipe) -> bool:
    return trains(recipe, "lora")


def base_is_trained(recipe: Recipe) -> bool:
    """Whether any stage updates base weights (then the saved model must carry them)."""
    return any(g != "lora" for s in stages_of(recipe) for g in s.trainable)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _tokenizer(spec: LLMModel):
    return load_tokenizer(
        spec.base,
        revision=spec.revision,
        chat_template=spec.chat_template,
        trust_remote_code=spec.trust_remote_code,
    )


class LLMFamily(ChatFamily):
    """The ``llm`` family (see :class:`eyeops.families.Family`)."""

    name = "llm"
    capabilities = ChatModel.capabilities

    # --- model -----------------------------------------------------------------------------------
    def build_model(self, recipe: Recipe) -> torch.nn.Module:
        spec = _spec(recipe)
        if spec.quantization != "none":
            extra = sorted({g for s in stages_of(recipe) for g in s.trainable} - {"lora"})
            if extra:
                raise ConfigError(
                    f"model.quantization={spec.quantization!r} freezes the base in low precision; "
                    f"stages may only train 'lora', not {extra}"
                )
            if spec.merge_on_export:
                raise ConfigError(
                    "model.merge_on_export cannot merge into a quantized base; save the adapter"
                )
        model = load_language_model(spec.base, spec, revision=spec.revision)
        if not uses_lora(recipe):
            return model
        return add_lora(model, spec.lora, quantized=spec.quantization != "none")

    def apply_stage(self, model: torch.nn.Module, stage: StageSpec) -> None:
        model = _unwrap(model)
        unknown = [g for g in stage.trainable if g not in GROUPS]
        if unknown:
            raise ConfigError(
                f"stage {stage.name!r}: unknown trainable group(s) {unknown} (known: {', '.join(GROUPS)})"
            )
        has_lora = any("lora_" in n for n, _ in model.named_parameters())
        if "lora" in stage.trainable and not has_lora:
            raise ConfigError(f"stage {stage.name!r} trains 'lora' but the model has no adapter")
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        special = {
            "embeddings": {id(p) for p in inner.get_input_embeddings().parameters()},
            "lm_head": {id(p) for p in inner.get_output_embeddings().parameters()},
        }
        n_trainable = 0
        for name, param in model.named_parameters():
            is_lora = "lora_" in name
            wanted = any(_in_group(group, name, param, is_lora, special) for group in stage.trainable)
            if wanted and not param.dtype.is_floating_point:
                wanted = False  # quantized storage (int8/uint8) cannot take gradients
            param.requires_grad_(wanted)
            # ZeRO-3 partitions hold no local data: ds_numel is the parameter's full size.
            n_trainable += getattr(param, "ds_numel", param.numel()) if wanted else 0
        if n_trainable == 0:
            raise ConfigError(
                f"stage {stage.name!r}: trainable {stage.trainable} selects no parameters of this model"
            )
        log.info(
            "stage %s: %d trainable parameters (%s)", stage.name, n_trainable, ", ".join(stage.trainable)
        )

    # --- data ------------------------------------------------------------------------------------
    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        from eyeops.data.store import load_samples

        spec = _spec(recipe)
        tokenizer = _tokenizer(spec)
        tasks = set(stage.data_tasks) if stage and stage.data_tasks else None
        samples = load_samples(data_dir)
        pretrain = tasks is not None and Task.PRETRAIN_TEXT in tasks
        by_split: dict[str, list[tuple[list[int], list[int]]]] = {}
        skipped: dict[str, int] = {}
        docs: dict[str, list[str]] = {}
        for sample in samples:
            split = sample.split.value if sample.split else None
            if split not in _SPLITS:
                raise DataError(
                    f"sample {sample.id!r}: split {sample.split!r} is not one of {_SPLITS}",
                    file=str(data_dir),
                    field="split",
                )
            if not D.is_text_sample(sample) or (tasks is not None and sample.task not in tasks):
                skipped[sample.task.value] = skipped.get(sample.task.value, 0) + 1
            elif sample.task == Task.PRETRAIN_TEXT:
                docs.setdefault(split, []).append(D.pretrain_text(sample))
            elif sample.task in D.SFT_TASKS:
                ids_labels = D.encode_sft(
                    tokenizer,
                    D.conversation(sample, spec.system_prompt),
                    loss_on=spec.loss_on,
                    max_seq_len=spec.max_seq_len,
                    sample_id=sample.id,
                )
                by_split.setdefault(split, []).append(ids_labels)
            else:
                skipped[sample.task.value] = skipped.get(sample.task.value, 0) + 1
        if pretrain:
            held_out = frozenset(
                s.meta["disease"]
                for s in samples
                if s.split is not None and s.split.value != "train" and "disease" in s.meta
            )
            docs.setdefault("train", []).extend(corpus_texts(spec, exclude_diseases=held_out))
        for split, texts in docs.items():
            blocks = D.pack(tokenizer, texts, spec.max_seq_len)
            by_split.setdefault(split, []).extend((b, list(b)) for b in blocks)
        if skipped:
            log.info("llm datasets: not used by stage %s: %s", stage.name if stage else "-", skipped)
        if not by_split.get("train"):
            raise DataError(
                f"no training text for stage {stage.name if stage else 'train'!r} "
                f"(data_tasks {sorted(tasks) if tasks else 'any'}; not usable: {skipped})",
                file=str(data_dir),
                field="task",
            )
        return {split: D.TokenDataset(rows) for split, rows in by_split.items()}

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]:
        return D.PadCollator(_tokenizer(_spec(recipe)).pad_token_id)

    def loss(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        # HF shifts labels inside and averages over the non -100 tokens of the micro-batch.
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    # --- persistence -----------------------------------------------------------------------------
    def save(self, model: torch.nn.Module, recipe: Recipe, out_dir: Path) -> None:
        spec = _spec(recipe)
        model = _unwrap(model)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        is_peft = hasattr(model, "peft_config")
        if not is_peft:
            fmt = "full"
            model.save_pretrained(out_dir / "model")
        elif spec.merge_on_export:
            fmt = "merged"
            # merge on a copy: the caller may keep training the adapter model after saving
            copy.deepcopy(model).merge_and_unload().save_pretrained(out_dir / "model")
        else:
            model.save_pretrained(out_dir / "adapter")
            fmt = "adapter"
            if base_is_trained(recipe):
                fmt = "base+adapter"
                copy.deepcopy(model).unload().save_pretrained(out_dir / "model")
        _tokenizer(spec).save_pretrained(out_dir / "tokenizer")
        (out_dir / RECIPE_FILE).write_text(
            yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
        meta = {"format": fmt, "base": spec.base, "revision": spec.revision, "dtype": spec.dtype}
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def load(self, model_dir: Path, device: str = "cpu") -> ChatModel:
        model_dir = Path(model_dir)
        meta_file, recipe_file = model_dir / META_FILE, model_dir / RECIPE_FILE
        for required in (meta_file, recipe_file, model_dir / "tokenizer"):
            if not required.exists():
                raise NotFoundError(f"{model_dir}: not an llm model directory ({required.name} missing)")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        recipe = parse_recipe(
            yaml.safe_load(recipe_file.read_text(encoding="utf-8")), origin=str(recipe_file)
        )
        from peft import PeftModel
        from transformers import AutoTokenizer

        remote = _spec(recipe).trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer", trust_remote_code=remote)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Straight onto ``device``: a GPU-served 8B model is never first built in CPU memory.
        options = {"dtype": meta.get("dtype", "float32"), "device": device, "trust_remote_code": remote}
        if meta["format"] in ("full", "merged", "base+adapter"):
            model = load_causal_lm(str(model_dir.resolve() / "model"), **options)
        elif meta["format"] == "adapter":
            model = load_causal_lm(meta["base"], revision=meta.get("revision"), **options)
        else:
            raise ConfigError(f"{meta_file}: unknown format {meta['format']!r}")
        if meta["format"] in ("adapter", "base+adapter"):
            # Merged once at load time: serving then runs plain Linear layers (no adapter overhead).
            model = PeftModel.from_pretrained(model, model_dir / "adapter").merge_and_unload()
        return ChatModel(model, tokenizer, system_prompt=_spec(recipe).system_prompt)

    # --- evaluation hook (eyeops.evaluate.runner) ---------------------------------------------------
    def evaluate(self, ctx: EvalContext) -> EvalOutput:
        from eyeops.models.llm.evaluation import evaluate_text

        return evaluate_text(ctx)


def _in_group(group: str, name: str, param: Any, is_lora: bool, special: dict[str, set[int]]) -> bool:
    if group == "all":
        return True
    if group == "lora":
        return is_lora
    if is_lora:
        return False
    if group == "base":
        return True
    if group in special:
        return id(param) in special[group]
    if group == "attention":
        return any(key in name for key in (".self_attn.", ".attn.", ".attention."))
    if group == "mlp":
        return ".mlp." in name or ".feed_forward." in name
    if group == "norms":
        return param.ndim == 1 and "norm" in name
    return False


def corpus_texts(spec: LLMModel, *, exclude_diseases: frozenset[str] = frozenset()) -> list[str]:
    """Continued-pretraining documents named by ``model.corpus``."""
    texts: list[str] = []
    for entry in spec.corpus:
        if entry == "knowledge_base":
            texts.extend(knowledge_base_texts(exclude=exclude_diseases))
        else:
            texts.extend(D.read_corpus(entry))
    return texts


def knowledge_base_texts(exclude: frozenset[str] = frozenset()) -> list[str]:
    """The packaged ophthalmic knowledge base as one document per disease.

    ``exclude`` drops diseases whose QA samples sit in the val/test splits, so pretraining never
    shows the model the very text it is evaluated on.
    """
    from eyeops.data.engine import knowledge_base

    docs = []
    for d in knowledge_base().diseases:
        if d.key in exclude:
            continue
        docs.append(
            f"{d.name[0].upper()}{d.name[1:]}.\n"
            f"Causes and symptoms: {d.causes_symptoms}\n"
            f"Diagnosis and examination: {d.diagnosis_examination}\n"
            f"Treatment and prevention: {d.treatment_prevention}\n"
            f"Prognosis and lifestyle: {d.prognosis_lifestyle}\n"
            f"Hallmark: {d.hallmark}. Key test: {d.key_test}. First-line management: {d.first_line}."
        )
    return docs


FAMILY = LLMFamily()
