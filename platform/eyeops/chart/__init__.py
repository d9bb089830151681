"""Chart tooling, for a checkout: find helm/kubectl, render the chart (``helm/eyeops``) and the
kustomize overlays (``manifests/``), validate what would be applied (core kinds strictly, custom
resources against the vendored upstream CRDs) and check our policies over it; regenerate
``manifests/base`` (``python -m eyeops.chart.manifests``) and the chart's copy of the pod settings
(``python -m eyeops.chart.pod_settings``).

Used by the tests, CI and whoever changes the chart — never by a pipeline step or a pod; it needs
helm/kubectl (dev dependencies) and the repository's chart. What runs in the cluster is
:mod:`eyeops.kube`.
"""

from eyeops.chart.policy import check_all, check_network_policies, check_no_inline_secrets, check_pod_security
from eyeops.chart.render import (
    CHART_DIR,
    CLUSTER_API_VERSIONS,
    MANIFESTS_DIR,
    helm_lint,
    helm_template,
    kustomize_build,
    parse_documents,
)
from eyeops.chart.tools import find_helm, find_kubectl
from eyeops.chart.validate import check_objects, validate_core, validate_objects

__all__ = [
    "CHART_DIR",
    "CLUSTER_API_VERSIONS",
    "MANIFESTS_DIR",
    "check_all",
    "check_network_policies",
    "check_no_inline_secrets",
    "check_objects",
    "check_pod_security",
    "find_helm",
    "find_kubectl",
    "helm_lint",
    "helm_template",
    "kustomize_build",
    "parse_documents",
    "validate_core",
    "validate_objects",
]
