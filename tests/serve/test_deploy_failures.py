"""A local serving process that fails at start: ``deploy`` raises with the reason it printed."""

from __future__ import annotations

import pytest
from eyeops_testing.serving import API_KEYS

pytestmark = pytest.mark.integration
MODEL = "eyeops-never-registered"


def _recipe_and_version():
    from eyeops.recipes import parse_recipe
    from eyeops.refs import ModelVersionRef

    recipe = parse_recipe(
        {
            "name": "deploy-failure",
            "model": {"family": "classifier", "backbone": "efficientnet_lite0", "weights": "packaged"},
            "register": {"model_name": MODEL},
        }
    )
    version = ModelVersionRef(
        name=MODEL,
        version=7,
        alias="champion",
        run_id="0" * 32,
        model_uri=f"models:/{MODEL}/7",
        gate_passed=True,
        gate_reason="test",
        metric="macro_f1",
        value=0.5,
    )
    return recipe, version


def _storage_root() -> str:
    from eyeops.config import get_settings

    return get_settings().storage_root


def test_deploy_says_why_the_serving_process_exited(monkeypatch):
    """Two real ``eyeops serve`` processes writing to the same log: each error names its own cause."""
    from eyeops.errors import ModelNotReady
    from eyeops.serve.local import deploy, endpoints

    recipe, version = _recipe_and_version()
    for var in ("EYEOPS_API_KEYS", "EYEOPS_API_KEYS_FILE", "EYEOPS_AUTH_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelNotReady) as no_keys:
        deploy(recipe, version, timeout_s=120)
    message = str(no_keys.value)
    assert message.startswith("serving process exited with status 2 before ready: error: ")
    assert "no API keys configured: set EYEOPS_API_KEYS or EYEOPS_API_KEYS_FILE" in message, message
    assert message.endswith(f"(log: {_storage_root()}/serve/{MODEL}.log)"), message
    assert "pydantic.dev" not in message  # the link under every validation error is not a reason

    monkeypatch.setenv("EYEOPS_API_KEYS", API_KEYS)
    with pytest.raises(ModelNotReady) as missing:
        deploy(recipe, version, timeout_s=120)
    message = str(missing.value)
    assert f"models:/{MODEL}/7" in message and "not found" in message, message
    assert "API keys" not in message  # the first process's reason, earlier in the same log, is not this one's
    assert endpoints() == []


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        (
            'loading…\nTraceback (most recent call last):\n  File "x.py", line 1\n    boom()\n'
            "RuntimeError: CUDA out of memory\n",
            "RuntimeError: CUDA out of memory",
        ),
        (
            "\x1b[31merror:\x1b[0m ignored\nerror: the model directory /m\nhas no weights\n",
            "error: the model directory /m has no weights",
        ),
        ("a\nb\nc\nd\n", "b c d"),
        ("", ""),
    ],
)
def test_root_cause_reads_the_last_report(log, cause):
    from eyeops.serve.local import root_cause

    assert root_cause(log) == cause
