"""Copy the pod settings into the chart: ``python -m eyeops.chart.pod_settings`` (``--check``
exits 1 when the chart's copy is stale).

``eyeops/kube/pod_settings.yaml`` is the one source of the security contexts, emptyDir sizes and
policy labels every eyeops pod carries; Helm reads files inside the chart only, so the chart's
helpers read a byte-for-byte copy, ``helm/eyeops/files/pod-settings.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from eyeops.chart.render import CHART_DIR

CHART_COPY = CHART_DIR / "files" / "pod-settings.yaml"


def source_text() -> str:
    """The packaged ``pod_settings.yaml`` the builders read."""
    return resources.files("eyeops.kube").joinpath("pod_settings.yaml").read_text(encoding="utf-8")


def is_current(copy: Path = CHART_COPY) -> bool:
    """Whether the chart's copy is byte-identical to the source."""
    return copy.is_file() and copy.read_text(encoding="utf-8") == source_text()


def write(copy: Path = CHART_COPY) -> Path:
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(source_text(), encoding="utf-8")
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eyeops.chart.pod_settings", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the chart's copy is stale")
    args = parser.parse_args(argv)
    if args.check:
        if is_current():
            return 0
        print(f"stale: {CHART_COPY.relative_to(CHART_DIR.parent.parent)}", file=sys.stderr)
        return 1
    print(f"wrote {write().relative_to(CHART_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
