"""A fine-tuned checkpoint without Ray: a few optimizer steps through the Family contract, in process.

The same calls the Ray Train loop makes (``build_model``, ``apply_stage``, ``datasets``,
``collate_fn``, ``loss``, ``save``), on one process, for tests that need *a* trained model dir
cheaply (benchmark reports, the gate) rather than a test of training itself.
"""

from __future__ import annotations

from pathlib import Path


def finetune_in_process(recipe, data_dir: Path, out_dir: Path, *, steps: int = 4, lr: float = 5e-3) -> Path:
    """Train each stage of ``recipe`` for ``steps`` micro-batches on ``data_dir``; save to ``out_dir``."""
    import torch
    from torch.utils.data import DataLoader

    from eyeops.families import get_family
    from eyeops.models.common.stages import stages_of

    family = get_family(recipe.family)
    torch.manual_seed(recipe.train.seed)
    model = family.build_model(recipe)
    collate = family.collate_fn(recipe)
    for stage in stages_of(recipe):
        family.apply_stage(model, stage)
        train = family.datasets(recipe, Path(data_dir), stage)["train"]
        loader = DataLoader(train, batch_size=recipe.train.batch_size, shuffle=True, collate_fn=collate)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        done = 0
        while done < steps:
            for batch in loader:
                optimizer.zero_grad()
                family.loss(model, batch).backward()
                optimizer.step()
                done += 1
                if done == steps:
                    break
    model.eval()
    family.save(model, recipe, Path(out_dir))
    return Path(out_dir)
