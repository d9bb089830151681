"""Policy checks over rendered objects: what `restricted` pod security and our own rules demand.

Each check returns a list of violations (strings naming object, container and field); an empty
list means compliant. They walk every pod template wherever it hides: workloads, Jobs, Pods,
KubeRay head/worker groups and submitters, and KServe predictors (a PodSpec inlined in the CR).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from eyeops.kube.schema import object_name

Obj = dict[str, Any]

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
)
# Env names that carry credentials: their value must come from a Secret, never inline.
_SENSITIVE_ENV = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEYS?|ACCESS_KEY|CREDENTIAL|DSN|"
    r"BACKEND_STORE_URI|DATABASE_URL)",
    re.IGNORECASE,
)
# user:password@ inside a URL anywhere in a string value.
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
_ALLOWED_ADDED_CAPS = {"NET_BIND_SERVICE"}


def _ray_cluster_pods(spec: Obj, where: str) -> Iterator[tuple[str, Obj]]:
    head = (spec.get("headGroupSpec") or {}).get("template", {}).get("spec")
    if head is not None:
        yield f"{where}.headGroupSpec", head
    for group in spec.get("workerGroupSpecs") or []:
        pod = (group.get("template") or {}).get("spec")
        if pod is not None:
            yield f"{where}.workerGroupSpecs[{group.get('groupName')}]", pod


def pod_specs(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """``(location, pod spec)`` for every pod an object would create."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        yield "spec", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield "spec.template", (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        yield "spec.jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(spec, "spec")
    elif kind == "RayJob":
        yield from _ray_cluster_pods(spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec")
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"].get("spec") or {}
    elif kind == "RayService":
        yield from _ray_cluster_pods(spec.get("rayClusterConfig") or {}, "spec.rayClusterConfig")
    elif kind == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            if component in spec:
                yield f"spec.{component}", spec[component]


def _containers(pod: Obj) -> Iterator[Obj]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []
    if isinstance(pod.get("model"), dict):  # a KServe predictor's model spec is its main container
        yield pod["model"]


def check_pod_security(obj: Obj) -> list[str]:
    """Pod Security Standard ``restricted`` plus read-only root FS and requests+limits."""
    problems: list[str] = []
    for where, pod in pod_specs(obj):
        pod_sc = pod.get("securityContext") or {}
        pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{object_name(obj)} {where}: {flag} is true")
        for vol in pod.get("volumes") or []:
            if "hostPath" in vol:
                problems.append(f"{object_name(obj)} {where}: volume {vol.get('name')} uses hostPath")
        containers = list(_containers(pod))
        if not containers:
            problems.append(f"{object_name(obj)} {where}: no containers")
        for c in containers:
            at = f"{object_name(obj)} {where} container {c.get('name')!r}"
            sc = c.get("securityContext") or {}
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            if non_root is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{at}: runAsUser is 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{at}: privileged")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{at}: capabilities.drop lacks ALL")
            if extra := set(caps.get("add") or []) - _ALLOWED_ADDED_CAPS:
                problems.append(f"{at}: adds capabilities {sorted(extra)}")
            seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{at}: seccompProfile is {seccomp!r}, not RuntimeDefault")
            resources = c.get("resources") or {}
            for section in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(section) or {})
                if missing:
                    problems.append(f"{at}: resources.{section} lacks {sorted(missing)}")
            image = c.get("image", "")
            unpinned = "@" not in image and ":" not in image.rsplit("/", 1)[-1]
            if not image or image.endswith(":latest") or unpinned:
                problems.append(f"{at}: image {image!r} is not pinned to a tag or digest")
    return problems


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def _env_lists(node: Any, path: str = "") -> Iterator[tuple[str, list[Obj]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if key == "env" and isinstance(value, list):
                yield sub, value
            else:
                yield from _env_lists(value, sub)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _env_lists(value, f"{path}[{index}]")


def check_no_inline_secrets(obj: Obj) -> list[str]:
    """Credentials only by reference: no Secret objects with data, no sensitive literal env values,
    no ``user:password@`` URLs anywhere."""
    problems: list[str] = []
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        problems.append(f"{object_name(obj)}: chart renders Secret values (reference an existing Secret)")
    for path, env in _env_lists(obj):
        for var in env:
            if _SENSITIVE_ENV.search(var.get("name", "")) and "value" in var:
                problems.append(
                    f"{object_name(obj)} {path}: env {var['name']} has an inline value; "
                    "use valueFrom.secretKeyRef"
                )
    for path, text in _strings(obj):
        if _URL_WITH_PASSWORD.search(text):
            problems.append(f"{object_name(obj)} {path}: a URL with an inline password")
    return problems


def check_labels(obj: Obj) -> list[str]:
    """The standard ``app.kubernetes.io/*`` labels are on the object."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return [f"{object_name(obj)}: label {label} missing" for label in STANDARD_LABELS if label not in labels]


def check_rbac_namespaced(objects: Iterable[Obj]) -> list[str]:
    """Least privilege: no cluster-wide grants and no wildcard verbs/resources."""
    problems = []
    for obj in objects:
        if obj.get("kind") in ("ClusterRole", "ClusterRoleBinding"):
            problems.append(f"{object_name(obj)}: cluster-wide RBAC")
        if obj.get("kind") == "Role":
            for index, rule in enumerate(obj.get("rules") or []):
                for field in ("verbs", "resources", "apiGroups"):
                    if "*" in (rule.get(field) or []):
                        problems.append(f"{object_name(obj)} rules[{index}].{field}: wildcard")
    return problems


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels + matchExpressions) matches ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def default_deny_policies(objects: Iterable[Obj]) -> list[Obj]:
    """NetworkPolicies that select every pod and allow nothing, for both directions."""
    out = []
    for obj in objects:
        if obj.get("kind") != "NetworkPolicy":
            continue
        spec = obj.get("spec") or {}
        if (
            spec.get("podSelector") == {}
            and set(spec.get("policyTypes") or []) >= {"Ingress", "Egress"}
            and not spec.get("ingress")
            and not spec.get("egress")
        ):
            out.append(obj)
    return out


def pod_labels(obj: Obj) -> list[dict[str, str]]:
    """Labels the pods of ``obj`` carry (one dict per pod template)."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return [(obj.get("metadata") or {}).get("labels") or {}]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}]
    if kind == "InferenceService":
        return [spec.get("predictor", {}).get("labels") or {}]
    clusters = {
        "RayCluster": spec,
        "RayService": spec.get("rayClusterConfig"),
        "RayJob": spec.get("rayClusterSpec"),
    }
    if clusters.get(kind):
        cluster = clusters[kind]
        groups = [cluster.get("headGroupSpec", {}), *(cluster.get("workerGroupSpecs") or [])]
        return [((g.get("template") or {}).get("metadata") or {}).get("labels") or {} for g in groups]
    return []


def check_network_policies(objects: list[Obj]) -> list[str]:
    """A default-deny policy exists, and every pod is selected by at least one allow policy
    (otherwise it could not even resolve DNS under default deny — a sign it was forgotten)."""
    problems = []
    denies = default_deny_policies(objects)
    if not denies:
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress+Egress, no rules)")
    allows = [o for o in objects if o.get("kind") == "NetworkPolicy" and o not in denies]
    for obj in objects:
        for labels in pod_labels(obj):
            if not any(selects(p["spec"].get("podSelector") or {}, labels) for p in allows):
                problems.append(
                    f"{object_name(obj)}: pods {labels.get('app.kubernetes.io/component')!r} "
                    "are selected by no allow NetworkPolicy"
                )
    return problems


def check_all(objects: list[Obj]) -> list[str]:
    """Every policy above over a rendered release."""
    problems: list[str] = []
    for obj in objects:
        problems += check_pod_security(obj) + check_no_inline_secrets(obj) + check_labels(obj)
    return problems + check_rbac_namespaced(objects) + check_network_policies(objects)
