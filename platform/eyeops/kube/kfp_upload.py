"""The chart's upload Job: ``python -m eyeops.kube.kfp_upload --host URL --dir DIR --version V``.

Uploads every compiled pipeline ``<recipe>.yaml`` in ``DIR`` (the mounted ConfigMap) to the KFP
API: a new pipeline named ``eyeops-<recipe>`` the first time, a new version ``<recipe>-<V>`` after
that, so an upgrade never overwrites what past runs used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from eyeops.errors import ClusterError, ConfigError, EyeopsError


def compiled_pipelines(directory: str | Path) -> dict[str, Path]:
    """``{recipe: path}`` of the compiled KFP IR files in ``directory``; errors name the bad file."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"pipeline directory {root} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*.yaml")):
        try:
            # The IR may be followed by a platform spec document (kfp-kubernetes settings).
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        doc = docs[0] if docs else None
        if not isinstance(doc, dict) or "pipelineInfo" not in doc or "root" not in doc:
            raise ConfigError(f"{path}: not a compiled KFP pipeline (no pipelineInfo/root)")
        found[path.stem] = path
    if not found:
        raise ConfigError(f"pipeline directory {root} holds no <recipe>.yaml")
    return found


def upload_all(host: str, directory: str | Path, version: str) -> list[str]:
    """Upload each compiled pipeline; returns one line per pipeline saying what was done."""
    import kfp  # heavy; only the Job needs it
    import urllib3
    from kfp_server_api.exceptions import ApiException

    pipelines = compiled_pipelines(directory)  # check the files before dialling the API
    try:
        client = kfp.Client(host=host)
        return _upload(client, pipelines, version)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterError(f"KFP API at {host}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _upload(client, pipelines: dict[str, Path], version: str) -> list[str]:
    lines = []
    for recipe, path in pipelines.items():
        name = f"eyeops-{recipe}"
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            client.upload_pipeline(str(path), pipeline_name=name, description=f"eyeops fine-tuning: {recipe}")
            lines.append(f"created pipeline {name}")
        else:
            client.upload_pipeline_version(
                str(path), pipeline_version_name=f"{recipe}-{version}", pipeline_id=pipeline_id
            )
            lines.append(f"added version {recipe}-{version} to {name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eyeops.kube.kfp_upload", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", required=True, help="KFP API URL")
    parser.add_argument("--dir", required=True, help="directory of compiled <recipe>.yaml files")
    parser.add_argument("--version", required=True, help="version suffix (chart version + revision)")
    args = parser.parse_args(argv)
    try:
        for line in upload_all(args.host, args.dir, args.version):
            print(line)
    except EyeopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
