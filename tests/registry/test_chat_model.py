"""A chat family through the same stages: evaluate (the family's own metric hook) → register
(a ``chat`` pyfunc: prompt → text) → load from the registry. Uses the LLM room's tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from eyeops_testing.llm_tiny import save_tiny_llm, tiny_recipe, write_dataset


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    from eyeops.evaluate.runner import checkpoint_ref, dataset_ref
    from eyeops.families import get_family
    from eyeops.recipes import parse_recipe

    root = Path(tmp_path_factory.mktemp("tiny-llm"))
    recipe = parse_recipe(tiny_recipe(save_tiny_llm(root / "base")))
    family = get_family("llm")
    family.save(family.build_model(recipe), recipe, root / "model")
    return recipe, checkpoint_ref(str(root / "model"), recipe), dataset_ref(str(write_dataset(root / "data")))


def test_llm_evaluate_register_and_predict(use_sqlite, llm_run, tmp_path):
    from eyeops.evaluate import evaluate
    from eyeops.registry import register, resolve

    recipe, checkpoint, dataset = llm_run
    report = evaluate(recipe, checkpoint, dataset, out_dir=str(tmp_path / "report"), batch_size=4)
    assert report.primary_metric == "mcq/accuracy" and 0.0 <= report.primary_value <= 1.0
    assert report.tables and (tmp_path / "report" / "model_card.md").is_file()

    version = register(recipe, checkpoint, report)
    assert version.alias == "champion" and version.metric == "mcq/accuracy"
    model = mlflow.pyfunc.load_model(version.model_uri)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["prompt", "image"]
    out = model.predict(
        pd.DataFrame({"prompt": ["What is glaucoma?", "What is a cataract?"]}), params={"max_new_tokens": 4}
    )
    assert list(out.columns) == ["text"] and len(out) == 2 and all(isinstance(t, str) for t in out["text"])
    assert (resolve(recipe.register.model_name).model_dir / "recipe.yaml").is_file()
