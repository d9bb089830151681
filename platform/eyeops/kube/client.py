"""A small wrapper over the Kubernetes API for eyeops' custom resources.

``KubeClient`` creates or merge-patches RayJob / RayService / InferenceService objects and waits
for them, retrying transient API failures (429 honouring Retry-After, 5xx, dropped connections)
with exponential backoff. Status changes are streamed to a callback as they are observed, so a
KFP task log shows the RayJob moving Initializing → Running → Complete.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from eyeops.errors import ClusterError

log = logging.getLogger(__name__)

PLURALS = {
    "RayJob": "rayjobs",
    "RayService": "rayservices",
    "RayCluster": "rayclusters",
    "InferenceService": "inferenceservices",
}
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
StatusCallback = Callable[[str], None]


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or ""
    except (ValueError, AttributeError):
        return str(exc.body or exc.reason)


class KubeClient:
    """Create/patch/get/delete/wait for namespaced custom objects, with retries."""

    def __init__(
        self,
        api_client: k8s.ApiClient | None = None,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = k8s.CustomObjectsApi(api_client or k8s.ApiClient())
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._sleep = sleep

    @classmethod
    def from_environment(cls, **kwargs: Any) -> KubeClient:
        """In-cluster service-account config, else ``~/.kube/config`` / ``KUBECONFIG``."""
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            try:
                k8s_config.load_kube_config()
            except (k8s_config.ConfigException, OSError) as exc:
                raise ClusterError(
                    f"no Kubernetes configuration found (in-cluster or kubeconfig): {exc}"
                ) from exc
        return cls(k8s.ApiClient(), **kwargs)

    # --- transport with retries -----------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status not in RETRYABLE_STATUS or attempt == self.retries:
                    raise
                retry_after = (exc.headers or {}).get("Retry-After")
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
                reason = f"API answered {exc.status}"
            except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
                if attempt == self.retries:
                    raise ClusterError(
                        f"{what}: Kubernetes API unreachable after {self.retries} retries: {exc}"
                    ) from exc
                wait, reason = delay, type(exc).__name__
            log.warning("%s: %s, retry %d/%d in %.1fs", what, reason, attempt + 1, self.retries, wait)
            self._sleep(min(wait, self.max_backoff_s))
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _coords(obj: dict[str, Any]) -> tuple[str, str, str, str, str]:
        try:
            group, _, version = obj["apiVersion"].rpartition("/")
            meta = obj["metadata"]
            return group, version, meta["namespace"], PLURALS[obj["kind"]], meta["name"]
        except KeyError as exc:
            raise ClusterError(
                f"object lacks {exc} (kind={obj.get('kind')!r}); known kinds: {', '.join(PLURALS)}"
            ) from None

    def _fail(self, verb: str, obj: dict[str, Any], exc: ApiException) -> ClusterError:
        _, _, ns, plural, name = self._coords(obj)
        return ClusterError(
            f"{verb} {plural}/{name} in namespace {ns}: HTTP {exc.status} {_api_message(exc)}"
        )

    def _send(
        self, verb: str, obj: dict[str, Any], fn: Callable[..., Any], *body: Any, collection: bool = False
    ) -> Any:
        """One API call about ``obj`` (its collection for a create), with retries; an ApiException
        that is not worth retrying is left to the caller."""
        group, version, ns, plural, name = self._coords(obj)
        where = (group, version, ns, plural) if collection else (group, version, ns, plural, name)
        return self._call(f"{verb} {plural}/{name}", fn, *where, *body)

    def _request(
        self,
        verb: str,
        obj: dict[str, Any],
        fn: Callable[..., Any],
        *body: Any,
        absent_ok: bool = False,
        collection: bool = False,
    ) -> Any:
        """:meth:`_send`, turning a rejection into ClusterError (None for 404 when ``absent_ok``)."""
        try:
            return self._send(verb, obj, fn, *body, collection=collection)
        except ApiException as exc:
            if absent_ok and exc.status == 404:
                return None
            raise self._fail(verb, obj, exc) from None

    # --- verbs ----------------------------------------------------------------------------------
    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        return self._request("get", obj, self.api.get_namespaced_custom_object, absent_ok=True)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._request("create", obj, self.api.create_namespaced_custom_object, obj, collection=True)

    def patch(self, obj: dict[str, Any]) -> dict[str, Any]:
        """JSON merge-patch of labels, annotations and spec (lists are replaced whole)."""
        self._coords(obj)  # a precise ClusterError before reading metadata/spec
        meta = obj["metadata"]
        body = {"metadata": {k: meta[k] for k in ("labels", "annotations") if k in meta}, "spec": obj["spec"]}
        return self._request("patch", obj, self.api.patch_namespaced_custom_object, body)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or patch when the object already exists (409)."""
        try:
            return self._send("create", obj, self.api.create_namespaced_custom_object, obj, collection=True)
        except ApiException as exc:
            if exc.status != 409:
                raise self._fail("create", obj, exc) from None
        return self.patch(obj)

    def delete(self, obj: dict[str, Any], *, wait_s: float = 0, poll_s: float = 2.0) -> None:
        """Delete (absent is fine); with ``wait_s``, also wait until finalizers have let it go."""
        _, _, ns, plural, name = self._coords(obj)
        self._request("delete", obj, self.api.delete_namespaced_custom_object, absent_ok=True)
        deadline = time.monotonic() + wait_s
        while wait_s and self.get(obj) is not None:
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{plural}/{name} in namespace {ns} still exists {wait_s:.0f}s after delete"
                )
            self._sleep(poll_s)

    def wait(
        self,
        obj: dict[str, Any],
        done: Callable[[dict[str, Any]], bool],
        *,
        describe: Callable[[dict[str, Any]], str],
        timeout_s: float,
        poll_s: float = 5.0,
        on_status: StatusCallback | None = None,
    ) -> dict[str, Any]:
        """Poll until ``done(live)`` is true; report each new ``describe(live)`` line to ``on_status``.

        ``done`` may raise :class:`ClusterError` for a terminal failure. Times out with ClusterError.
        """
        _, _, ns, plural, name = self._coords(obj)
        report = on_status or (lambda line: log.info("%s", line))
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            live = self.get(obj)
            if live is None:
                raise ClusterError(f"{plural}/{name} in namespace {ns} disappeared while waiting for it")
            line = describe(live)
            if line != last:
                report(line)
                last = line
            if done(live):
                return live
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{plural}/{name} in namespace {ns}: not done after {timeout_s:.0f}s "
                    f"(last status: {line})"
                )
            self._sleep(poll_s)
