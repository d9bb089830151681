"""RayJob entrypoint: ``python -m eyeops.train.job --recipe-json … --dataset-json … --ref-out s3://…``.

Runs on the RayJob's submitter inside the Ray cluster KubeRay created, calls
:func:`eyeops.train.train` (which joins that cluster) and writes the resulting ``CheckpointRef``
to ``--ref-out`` so the waiting pipeline task can read it back. Argument parsing only.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from eyeops.errors import DataError, EyeopsError, RecipeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eyeops.train.job", description=__doc__)
    recipe = parser.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--recipe", help="Recipe name (recipes/<name>.yaml) or YAML path.")
    recipe.add_argument("--recipe-json", help="The fully resolved recipe as JSON (what the pipeline sends).")
    parser.add_argument("--dataset-json", required=True, help="DatasetRef JSON.")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--storage-path", default=None, help="Ray Train storage (s3://… on a cluster).")
    parser.add_argument(
        "--overrides", default="{}", help='Recipe overrides as JSON, e.g. {"train.max_steps": 5}.'
    )
    parser.add_argument("--ref-out", required=True, help="Where to write the CheckpointRef JSON.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from eyeops.recipes import load_recipe, parse_recipe
        from eyeops.refs import DatasetRef
        from eyeops.storage import write_ref

        try:
            overrides = json.loads(args.overrides)
            recipe = (
                parse_recipe(json.loads(args.recipe_json), origin="--recipe-json")
                if args.recipe_json
                else load_recipe(args.recipe)
            )
        except json.JSONDecodeError as exc:
            raise RecipeError(f"--recipe-json/--overrides is not valid JSON: {exc}") from None
        try:
            dataset = DatasetRef.model_validate_json(args.dataset_json)
        except ValidationError as exc:
            raise DataError(f"--dataset-json is not a DatasetRef: {exc.errors()[0]['msg']}") from None
        from eyeops.train import train  # torch + Ray: only once the inputs are known to be good

        checkpoint = train(
            recipe,
            dataset,
            run_name=args.run_name,
            storage_path=args.storage_path,
            overrides=overrides or None,
        )
        write_ref(args.ref_out, checkpoint)
    except EyeopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint {checkpoint.uri} (step {checkpoint.step}) -> {args.ref_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
