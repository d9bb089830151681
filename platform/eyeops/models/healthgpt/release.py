"""Import HealthGPT's released weights onto our modules, key for key, and register the result.

The seed (DCDmllm/HealthGPT) releases state dicts of its peft-wrapped ``LlavaPhiForCausalLM`` that
its inference scripts load with ``load_state_dict(strict=False)``:

- ``com_hlora_weights.bin`` / ``gen_hlora_weights.bin`` (``com_hlora_weights_phi4.bin`` for L14):
  one H-LoRA per adapted Linear, ``[base_model.model.]model.layers.N.<path>.lora_A.weight``
  ``[r, in]``, ``lora_B.weight`` ``[out, r]`` and ``lora_route.weight`` ``[k, in]`` (the router);
- ``fusion_layer_weights.bin``: the vision-to-text projector ``model.mm_projector.{0,2}.*``
  (LLaVA's ``mlp2x_gelu``; the same projector reads each task's vision layer);
- any of them may carry the grown vocabulary: ``model.embed_tokens.weight``, ``lm_head.weight``.

Ours: one peft adapter per task (``lora_A.<task>``, ``lora_B.<task>``, ``lora_router.<task>``), one
connector per task (``connectors.<task>.proj.{0,2}``). Released H-LoRA computes
``B(softmax(R x) ⊗ dropout(A x · s))`` with ``s = α/r·k``, ours ``B(softmax(R x) ⊗ dropout(A x))·s``
with the same ``s`` (:mod:`eyeops.models.common.hlora`): the tensors carry over unchanged.

Every released key must map onto one of ours with the same shape (else :class:`ConfigError`
naming them, unless ``strict=False``); every adapter key of a task whose file was given must be
provided. Tasks without a file keep their initial adapters (B = 0: no change to the base model)
and are reported as not imported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from eyeops.errors import ConfigError, NotFoundError
from eyeops.models.common.stages import read_weights
from eyeops.models.healthgpt.modeling import TASKS, HealthGPT

_PREFIX = re.compile(r"^(?:base_model\.model\.)?")
_HLORA = re.compile(r"^(model\.layers\.\d+\..+)\.lora_(A|B|route)\.weight$")
_PROJECTOR = re.compile(r"^model\.mm_projector\.(0|2)\.(weight|bias)$")
_VOCAB = {"model.embed_tokens.weight", "lm_head.weight"}
LM = "lm.base_model.model."  # where our peft-wrapped LM keeps the causal LM's own names


class ImportReport(BaseModel):
    """What an import read, mapped and left out."""

    model_config = ConfigDict(extra="forbid")
    files: dict[str, str] = Field(default_factory=dict, description="role -> released file read.")
    loaded: dict[str, int] = Field(default_factory=dict, description="role -> tensors mapped onto ours.")
    missing: list[str] = Field(default_factory=list, description="Our keys the given files should hold.")
    unexpected: list[str] = Field(default_factory=list, description="Released keys that map onto nothing.")
    wrong_shape: list[str] = Field(default_factory=list)
    not_imported: list[str] = Field(default_factory=list, description="Tasks left at their initial adapters.")


def map_key(key: str, role: str) -> list[str]:
    """Our key(s) for a released ``key`` in the file of ``role`` (comprehension | generation |
    fusion); empty when it maps onto nothing."""
    name = _PREFIX.sub("", key, count=1)
    if name in _VOCAB:
        return [LM + name]
    hlora = _HLORA.match(name)
    if hlora and role in TASKS:
        path, kind = hlora.groups()
        leaf = "lora_router" if kind == "route" else f"lora_{kind}"
        return [f"{LM}{path}.{leaf}.{role}.weight"]
    projector = _PROJECTOR.match(name)
    if projector:
        layer, param = projector.groups()
        return [f"connectors.{task}.proj.{layer}.{param}" for task in TASKS]
    return []


def load_release(
    model: HealthGPT,
    *,
    com: str | Path | None = None,
    gen: str | Path | None = None,
    fusion: str | Path | None = None,
    strict: bool = True,
) -> ImportReport:
    """Copy the released tensors into ``model``; raises :class:`ConfigError` on any misfit (strict)."""
    files = {"comprehension": com, "generation": gen, "fusion": fusion}
    if com is None and gen is None:
        raise ConfigError("import healthgpt needs --com and/or --gen (the released H-LoRA weights)")
    own = model.state_dict()
    report = ImportReport()
    updates: dict[str, torch.Tensor] = {}
    for role, path in files.items():
        if path is None:
            if role in TASKS:
                report.not_imported.append(role)
            continue
        report.files[role] = str(path)
        count = 0
        for key, tensor in read_weights(path, "released weights").items():
            targets = map_key(key, role)
            if not targets or any(t not in own for t in targets):
                report.unexpected.append(f"{role}: {key}")
                continue
            for target in targets:
                if tuple(own[target].shape) != tuple(tensor.shape):
                    report.wrong_shape.append(
                        f"{role}: {key} {tuple(tensor.shape)} -> {target} {tuple(own[target].shape)}"
                    )
                    continue
                updates[target] = tensor
                count += 1
        report.loaded[role] = count
        if role in TASKS:  # every adapter tensor of this task must have come from its file
            wanted = [k for k in own if ".lora_" in k and k.endswith(f".{role}.weight")]
            report.missing += sorted(k for k in wanted if k not in updates)
    if strict and (report.missing or report.unexpected or report.wrong_shape):
        raise ConfigError(
            "released weights do not fit the recipe's model: "
            f"{len(report.missing)} missing {report.missing[:3]}, "
            f"{len(report.unexpected)} unexpected {report.unexpected[:3]}, "
            f"{len(report.wrong_shape)} of another shape {report.wrong_shape[:2]} "
            "(check model.llm, model.hlora ranks/experts, model.vq.codebook_size, connector.input_norm)"
        )
    with torch.no_grad():
        for key, tensor in updates.items():
            own[key].copy_(tensor.to(own[key].dtype))
    return report


def import_healthgpt(
    recipe: Any,
    out_dir: str | Path,
    *,
    com: str | Path | None = None,
    gen: str | Path | None = None,
    fusion: str | Path | None = None,
    strict: bool = True,
) -> tuple[Path, ImportReport]:
    """Build ``recipe``'s HealthGPT, load the released files, save a model directory as training would."""
    from eyeops.models.healthgpt.family import FAMILY

    if com is None and gen is None:  # before building a multi-billion-parameter model
        raise ConfigError("import healthgpt needs --com and/or --gen (the released H-LoRA weights)")
    for path in (com, gen, fusion):
        if path is not None and not Path(path).expanduser().is_file():
            raise NotFoundError(f"released weights {str(path)!r}: file not found")
    model = FAMILY.build_model(recipe)
    report = load_release(model, com=com, gen=gen, fusion=fusion, strict=strict)
    out = Path(out_dir)
    FAMILY.save(model, recipe, out)
    (out / "import_report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return out, report


def register_import(
    recipe: Any, model_dir: str | Path, report: ImportReport, dataset: Any | None = None
) -> tuple[Any, Any]:
    """Register an imported model in MLflow as training would: evaluated on ``dataset`` (a
    :class:`~eyeops.refs.DatasetRef`) when given, else with the import report only (the gate then
    has no metric and the version becomes ``@challenger``). Returns (CheckpointRef, ModelVersionRef)."""
    from eyeops.evaluate.runner import checkpoint_ref
    from eyeops.refs import EvalReport
    from eyeops.registry import register

    checkpoint = checkpoint_ref(str(model_dir), recipe).model_copy(
        update={"run_name": f"import-{Path(model_dir).name}", "step": 0}
    )
    if dataset is not None:
        from eyeops.evaluate import evaluate

        evaluation = evaluate(recipe, checkpoint, dataset)
    else:
        out = Path(model_dir).parent / f"{Path(model_dir).name}-import-report"
        out.mkdir(parents=True, exist_ok=True)
        (out / "import_report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
        evaluation = EvalReport(
            uri=str(out),
            split="none",
            num_samples=0,
            metrics={},
            primary_metric=recipe.evaluate.primary_metric,
            artifacts={"import_report": str(out / "import_report.json")},
        )
    return checkpoint, register(
        recipe, checkpoint, evaluation, dataset=dataset, lineage={"import": "healthgpt"}
    )
