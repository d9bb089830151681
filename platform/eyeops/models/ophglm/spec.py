"""The OphGLM recipe's ``model:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eyeops.models.classifier.spec import ClassifierModel
from eyeops.models.common.specs import LanguageModelSpec, LoRASpec


class OphGLMModel(LanguageModelSpec):
    """OphGLM: fundus-classifier image embedding + BERT [CLS] -> fusion MLP -> LLM prefix tokens."""

    family: Literal["ophglm"] = "ophglm"
    image_encoder: ClassifierModel = Field(
        default_factory=ClassifierModel, description="Backbone of step 1 (the fundus-classifier recipe)."
    )
    image_checkpoint: str | None = Field(
        None,
        description="A trained fundus-classifier: 'models:/<name>@<alias>' or a saved model "
        "directory; None: the image_encoder's own weights (packaged ImageNet by default).",
    )
    text_encoder: str = Field(
        "packaged:all-minilm-l6-v2",
        description="BERT encoder for the [CLS] embedding: 'packaged:all-minilm-l6-v2', a local "
        "save_pretrained directory or a hub id (bert-base-uncased, bert-base-chinese).",
    )
    prefix_tokens: int = Field(4, ge=1, le=64, description="LLM prefix tokens the fusion MLP produces.")
    fusion_hidden: int = Field(512, ge=8, le=16_384)
    lora: LoRASpec = Field(default_factory=LoRASpec)
    max_seq_len: int = Field(384, ge=32, le=131_072, description="Truncation length incl. prefix tokens.")


SPEC = OphGLMModel
