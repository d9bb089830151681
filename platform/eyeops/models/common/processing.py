"""VLM processing: images -> views -> pixels, chat turns -> token ids with image slots, batches.

Each ``<image>`` placeholder in a user turn becomes a run of ``IMAGE_TOKEN_ID`` entries exactly as
long as that image's feature sequence (which depends on the image's tile plan), so the model only
has to scatter features into those positions (transformers' LLaVA does the same). Text around
the placeholders is rendered by the tokenizer's own chat template; labels are ``-100`` everywhere
except the assistant's answer (and its end-of-turn marker), so the loss trains answering only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from eyeops.data.schema import IMAGE_TOKEN, Message, Modality, Sample
from eyeops.errors import DataError, InvalidRequest
from eyeops.models.classifier.modeling import as_rgb, bright_field, crop_fundus_border, square_crop
from eyeops.models.common.anyres import GLOBAL_ONLY, ViewPlan, make_views, select_grid, to_tensor

IMAGE_TOKEN_ID = -200  # never a vocabulary id: marks image-feature slots (LLaVA's convention)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenised example: ids with image slots, labels, pixels of all views, one plan per image."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # [V, 3, S, S] (native backbones: their processor's patches)
    plans: list[Any]  # ViewPlan per image (native backbones: its (t, h, w) patch grid)


_DISC_ASPECT = 1.15  # a fundus camera's circular field: its bright bounding box is about square


def border_crop(image: Image.Image, modality: Modality | str | None) -> Image.Image:
    """The fundus border crop where it belongs: fundus photographs, never other modalities.

    ``crop_fundus_border`` squares the image around its bright field. That is right for a fundus
    photograph (a disc on black) and wrong for a 1024x496 OCT B-scan, whose AnyRes grid must follow
    its wide shape (1x3), not a padded square (2x2). A sample's modality is known in training; a
    serving request carries none (``None`` / ``"none"``): then the crop applies only when the bright
    field is a near-square disc left on a darker border, so it never squares a wide or tall image.
    """
    image = as_rgb(image)
    kind = str(modality or Modality.NONE)
    if kind == Modality.FUNDUS:
        return crop_fundus_border(image)
    if kind != Modality.NONE:
        return image
    field = bright_field(image)
    if field is None:
        return image
    top, bottom, left, right = field
    height, width = bottom - top, right - left
    bordered = (height, width) != (image.height, image.width)
    disc = bordered and max(height, width) <= _DISC_ASPECT * min(height, width)
    return square_crop(image, field) if disc else image


class VLMProcessor:
    """Turns messages + images into model inputs for one recipe's tower, resolution and tokenizer."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        tokens_per_view: int,
        resolution: Any,
        crop_border: bool,
        max_images: int,
        max_seq_len: int,
        system_prompt: str | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.tokens_per_view = tokens_per_view
        self.resolution = resolution
        self.crop_border, self.max_images = crop_border, max_images
        self.max_seq_len, self.system_prompt = max_seq_len, system_prompt

    # --- images ------------------------------------------------------------------------------
    def plan(self, image: Image.Image) -> ViewPlan:
        if self.resolution.mode == "single":
            return GLOBAL_ONLY
        rows, cols = select_grid(
            image.width, image.height, list(self.resolution.grids), self.image_size, self.resolution.max_tiles
        )
        return ViewPlan(rows, cols)

    def pixels(
        self, images: Sequence[Image.Image], modality: Modality | str | None = None
    ) -> tuple[torch.Tensor, list[ViewPlan]]:
        """Views of every image, the fundus border cropped as :func:`border_crop` decides."""
        views, plans = [], []
        for image in images:
            image = border_crop(image, modality) if self.crop_border else as_rgb(image)
            plan = self.plan(image)
            views.extend(make_views(image, plan, self.image_size))
            plans.append(plan)
        if not views:
            return torch.zeros(0, 3, self.image_size, self.image_size), plans
        return to_tensor(views, self.mean, self.std), plans

    # --- text --------------------------------------------------------------------------------
    def _conversation(self, messages: Sequence[Message], n_images: int) -> list[dict[str, str]]:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if self.system_prompt and not any(t["role"] == "system" for t in turns):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        found = sum(t["content"].count(IMAGE_TOKEN) for t in turns)
        if found == 0 and n_images:  # images given without placeholders: put them before the question
            first_user = next((t for t in turns if t["role"] == "user"), None)
            if first_user is None:
                raise InvalidRequest("images were given but there is no user turn to attach them to")
            first_user["content"] = (IMAGE_TOKEN + "\n") * n_images + first_user["content"]
        elif found != n_images:
            raise InvalidRequest(
                f"the messages hold {found} {IMAGE_TOKEN} placeholders but {n_images} images "
                "were given; use one placeholder per image"
            )
        if n_images > self.max_images:
            raise InvalidRequest(
                f"{n_images} images in one conversation; this model takes at most {self.max_images}"
            )
        return turns

    def _ids(self, text: str, plans: Sequence[ViewPlan]) -> list[int]:
        pieces = text.split(IMAGE_TOKEN)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
            if k < len(plans):
                ids.extend([IMAGE_TOKEN_ID] * plans[k].num_tokens(self.tokens_per_view))
        return ids

    def _render(self, turns: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def prompt_ids(self, messages: Sequence[Message], plans: Sequence[ViewPlan]) -> list[int]:
        """Ids of the conversation so far, ending with the assistant-turn opener."""
        turns = self._conversation(messages, len(plans))
        if turns[-1]["role"] == "assistant":
            raise InvalidRequest("the last message must not be the assistant's (nothing left to answer)")
        return self._ids(self._render(turns, add_generation_prompt=True), plans)

    def encode(
        self,
        messages: Sequence[Message],
        answer: str,
        images: Sequence[Image.Image],
        *,
        where: str = "conversation",
        modality: Modality | str | None = None,
    ) -> Encoded:
        """A training example: loss only on ``answer`` and the template's end-of-turn tokens."""
        pixel_values, plans = self.pixels(images, modality)
        turns = self._conversation(messages, len(plans))
        prompt = self._render(turns, add_generation_prompt=True)
        full = self._render([*turns, {"role": "assistant", "content": answer}], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: the chat template does not extend the prompt with the answer; "
                "set model.llm's chat template to a standard one",
                field="messages",
            )
        prompt_ids = self._ids(prompt, plans)
        answer_ids = self.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        input_ids, labels = prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        if len(input_ids) > self.max_seq_len:
            if len(prompt_ids) >= self.max_seq_len:
                raise DataError(
                    f"{where}: prompt with image tokens is {len(prompt_ids)} tokens, over "
                    f"model.max_seq_len {self.max_seq_len}",
                    field="messages",
                )
            input_ids, labels = input_ids[: self.max_seq_len], labels[: self.max_seq_len]
        return Encoded(input_ids, labels, pixel_values, plans)


def open_image(path: Path, *, where: str) -> Image.Image:
    """Decode one image fully, or raise a DataError naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(
            f"{where}: image {path.name} does not exist", file=str(path), field="images"
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: cannot decode image: {exc}", file=str(path), field="images") from None


class VLMDataset(Dataset):
    """Samples of the chosen tasks with an answer; images decoded lazily, per item."""

    def __init__(self, root: Path, samples: list[Sample], processor: VLMProcessor) -> None:
        self.root, self.samples, self.processor = Path(root), samples, processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Encoded:
        sample = self.samples[index]
        where = f"sample {sample.id!r}"
        images = [open_image(self.root / rel, where=where) for rel in sample.images]
        return self.processor.encode(
            sample.messages, sample.answer or "", images, where=where, modality=sample.modality
        )


def pad_text(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``labels`` (``-100`` past each row) and ``attention_mask``."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids/labels/mask, all views stacked, plans as ``[n_images, 2]`` (rows, cols)."""
    plans = [p for e in batch for p in e.plans]
    return {
        **pad_text(batch, pad_id),
        "pixel_values": torch.cat([e.pixel_values for e in batch]),
        "image_plans": torch.tensor([[p.rows, p.cols] for p in plans], dtype=torch.long).view(-1, 2),
    }
