"""Serving fixtures (helpers and the model-building code live in ``serving.py``)."""

from __future__ import annotations

import io

import pytest
from eyeops_testing.serving import MAX_BODY, MAX_PIXELS, Registered, _train_save_register, start_server
from PIL import Image


@pytest.fixture(scope="session")
def registered(tmp_path_factory) -> Registered:
    """A trained classifier registered as @champion in a session storage root."""
    from eyeops.config import get_settings

    root = tmp_path_factory.mktemp("serve-root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EYEOPS_STORAGE_ROOT", str(root))
        get_settings.cache_clear()
        try:
            return _train_save_register(root)
        finally:
            get_settings.cache_clear()


@pytest.fixture
def in_registry(registered, monkeypatch) -> Registered:
    """Point this test's settings at the session registry (for in-process loads)."""
    from eyeops.config import get_settings

    monkeypatch.setenv("EYEOPS_STORAGE_ROOT", str(registered.storage_root))
    get_settings.cache_clear()
    return registered


@pytest.fixture(scope="session")
def retina_jpeg() -> bytes:
    """The real colour fundus photograph shipped with scikit-image, as JPEG bytes."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.retina()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def gateway_server(registered, tmp_path_factory):
    """``eyeops serve --backend local`` as a real process, shared by the gateway and fuzz tests."""
    proc = start_server(
        registered,
        tmp_path_factory,
        "local",
        EYEOPS_MAX_BODY_BYTES=str(MAX_BODY),
        EYEOPS_MAX_IMAGE_PIXELS=str(MAX_PIXELS),
    )
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
