"""A merged Hugging Face export of an eye-llm model: what standard LLM servers load.

KServe's Hugging Face runtime (vLLM backend), vLLM itself or plain ``transformers`` read a
``save_pretrained`` directory: config, safetensors weights, tokenizer with its chat template,
generation config. :func:`export_merged` writes one from an eyeops ``llm`` model directory:

- the model is loaded through the family (every saved format: adapter, base+adapter, merged,
  full), so LoRA is folded into the base (peft ``merge_and_unload``) and no adapter remains;
- the recipe's system prompt, which eyeops' predictor prepends to every conversation, goes into
  the tokenizer's chat template, so a plain client's ``apply_chat_template`` formats prompts as
  eyeops does; a conversation that brings its own system turn keeps it, as in eyeops;
- the generation config stops on every id eyeops' predictor stops on.

The registry logs the export beside the pyfunc (artifact ``hf_model/``) for ``llm`` models;
:func:`serving_uri` gives the S3 location a KServe storage initializer downloads it from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from eyeops.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from eyeops.refs import ModelVersionRef

HF_ARTIFACT = "hf_model"
"""MLflow artifact path of the export inside a registered llm model's run."""
EXPORT_META = "eyeops_export.json"
"""Written last into an export: where it came from (its presence marks a complete export)."""


def chat_template_with_system(template: str, system_prompt: str | None) -> str:
    """``template`` that opens a conversation without a system turn with ``system_prompt``.

    The prompt is embedded as a Jinja string literal (JSON escapes are Jinja escapes), so quotes,
    newlines and template syntax inside it stay text.
    """
    if not system_prompt:
        return template
    literal = json.dumps(system_prompt, ensure_ascii=False)
    prefix = (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
        "{%- endif -%}"
    )
    return prefix + template


def export_merged(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the merged Hugging Face checkpoint of the ``llm`` model in ``model_dir`` to ``out_dir``.

    ``out_dir`` must not exist or be empty; it is filled through a staging sibling and renamed into
    place, so a reader never sees half an export. Returns ``out_dir``.
    """
    from eyeops.models.llm.family import FAMILY

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export destination {out} exists and is not an empty directory")
    if not Path(model_dir).is_dir():
        raise NotFoundError(f"{model_dir}: no such model directory")
    chat = FAMILY.load(Path(model_dir))  # adapters merged (merge_and_unload) at load
    model, tokenizer = chat.model, chat.tokenizer
    if not tokenizer.chat_template:
        raise ConfigError(f"{model_dir}: the tokenizer has no chat template (set model.chat_template)")
    tokenizer.chat_template = chat_template_with_system(tokenizer.chat_template, chat.system_prompt)
    generation = model.generation_config
    generation.eos_token_id = list(chat.stop_ids)
    generation.pad_token_id = int(tokenizer.pad_token_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        meta = {
            "source": str(model_dir),
            "format": "huggingface",
            "architectures": list(model.config.architectures or []),
            "system_prompt": chat.system_prompt,
            "max_position_embeddings": chat.max_positions or None,
        }
        (staging / EXPORT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def serving_uri(version: ModelVersionRef) -> str:
    """Where a model server reads ``version``'s export: the run's ``hf_model/`` artifact when the
    run's artifacts live on S3, otherwise (an MLflow server proxying its store, a local store) a
    copy published once under ``<storage_root>/exports/<name>/<version>``."""
    import mlflow

    from eyeops import storage
    from eyeops.config import get_settings
    from eyeops.registry.mlflow_registry import client

    run = client().get_run(version.run_id)
    artifacts = run.info.artifact_uri.rstrip("/")
    if artifacts.startswith("s3://"):
        return f"{artifacts}/{HF_ARTIFACT}"
    target = get_settings().path("exports", version.name, str(version.version))
    try:
        storage.read_text(storage.join(target, EXPORT_META))
        return target
    except NotFoundError:
        pass
    with tempfile.TemporaryDirectory(prefix="eyeops-export-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=HF_ARTIFACT, dst_path=tmp
            )
        except mlflow.exceptions.MlflowException as exc:
            raise NotFoundError(
                f"{version.model_uri}: run {version.run_id} has no {HF_ARTIFACT}/ export "
                f"(registered before exports, or not an llm model): {exc.message}"
            ) from None
        storage.publish_dir(local, target, last=EXPORT_META)
    return target
