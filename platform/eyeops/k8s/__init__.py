"""Kubernetes tooling: find helm/kubectl, render the chart and overlays, validate what would be
applied (core kinds strictly, custom resources against upstream CRD schemas) and check policies.

Also the in-cluster entry points the chart runs: ``python -m eyeops.k8s.preflight`` (``helm
test``) and ``python -m eyeops.k8s.kfp_upload`` (the pipeline upload Job).
"""

from eyeops.k8s.policy import check_all, check_network_policies, check_no_inline_secrets, check_pod_security
from eyeops.k8s.render import (
    CHART_DIR,
    CLUSTER_API_VERSIONS,
    MANIFESTS_DIR,
    helm_lint,
    helm_template,
    kustomize_build,
    parse_documents,
)
from eyeops.k8s.tools import find_helm, find_kubectl
from eyeops.k8s.validate import (
    check_objects,
    default_crd_dir,
    find_crd_dir,
    load_crd_schemas,
    validate_object,
    validate_objects,
)

__all__ = [
    "CHART_DIR",
    "CLUSTER_API_VERSIONS",
    "MANIFESTS_DIR",
    "check_all",
    "check_network_policies",
    "check_no_inline_secrets",
    "check_objects",
    "check_pod_security",
    "default_crd_dir",
    "find_crd_dir",
    "find_helm",
    "find_kubectl",
    "helm_lint",
    "helm_template",
    "kustomize_build",
    "load_crd_schemas",
    "parse_documents",
    "validate_object",
    "validate_objects",
]
