"""Fast checks of the pieces under the servers: image decoding limits, key parsing, settings."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from eyeops.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from eyeops.serve import images
from eyeops.serve.auth import ApiKeyAuth, parse_keys
from eyeops.serve.settings import ServeSettings, load_serve_settings


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_decode_accepted_formats(fmt):
    decoded = images.decode_image(_encoded(Image.new("RGB", (40, 30), "red"), fmt), max_pixels=10_000)
    assert decoded.size == (40, 30) and decoded.mode == "RGB"


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(PayloadTooLarge, match="40×30×1 pixels exceeds the limit of 1000"):
        images.decode_image(_encoded(Image.new("L", (40, 30)), "PNG"), max_pixels=1000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidRequest),
        (b"GIF89a......", UnsupportedMediaType),
        (b"BM" + b"\0" * 64, UnsupportedMediaType),
        (b"\xff\xd8\xff\xe0garbage", InvalidRequest),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, InvalidRequest),
    ],
)
def test_bad_image_bytes(data, error):
    with pytest.raises(error):
        images.decode_image(data, max_pixels=10_000)


def test_base64_and_data_urls():
    png = _encoded(Image.new("RGB", (4, 4)), "PNG")
    text = base64.b64encode(png).decode()
    assert images.decode_base64(text[:10] + "\n" + text[10:]) == png
    assert images.decode_data_url(f"data:image/png;base64,{text}") == png
    for bad in ("ab$c", "abc"):
        with pytest.raises(InvalidRequest, match="not valid base64"):
            images.decode_base64(bad)
    for url in ("https://example.org/x.png", "data:image/png,rawbytes", "file:///etc/passwd"):
        with pytest.raises(InvalidRequest):
            images.decode_data_url(url)


def test_api_keys_and_scopes(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text("# mounted Secret\nfile-key-0123456789abcdef:chat\n")
    settings = ServeSettings(
        api_keys="env-key-0123456789abcdef:classify,chat; admin-key-0123456789abc:admin",
        api_keys_file=str(secret),
    )
    auth = ApiKeyAuth.from_settings(settings)
    assert auth.check("env-key-0123456789abcdef", "classify") == "key #1 of EYEOPS_API_KEYS"
    assert auth.check("admin-key-0123456789abc", "chat").startswith("key #2")
    assert auth.check("file-key-0123456789abcdef", "chat") == f"key #1 of {secret}"
    with pytest.raises(Forbidden):
        auth.check("file-key-0123456789abcdef", "classify")
    with pytest.raises(Unauthorized):
        auth.check("env-key-0123456789abcdeX", "classify")
    with pytest.raises(Unauthorized):
        auth.check(None, "classify")
    assert "env-key" not in repr(settings)  # keys never show up in a settings dump


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("short:classify", "shorter than 16"),
        ("no-scope-key-0123456789", "KEY:scope"),
        ("key-0123456789abcdefgh:root", "unknown or missing scopes"),
        ("key-0123456789abcdefgh:", "missing"),
    ],
)
def test_bad_key_entries_name_the_entry_not_the_key(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_keys(text, origin="EYEOPS_API_KEYS")
    assert "0123456789" not in str(info.value)


def test_auth_must_be_configured_or_disabled_explicitly(monkeypatch):
    for var in ("EYEOPS_API_KEYS", "EYEOPS_API_KEYS_FILE", "EYEOPS_AUTH_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        load_serve_settings()
    monkeypatch.setenv("EYEOPS_AUTH_DISABLED", "true")
    assert ApiKeyAuth.from_settings(load_serve_settings()).check(None, "admin") == "auth disabled"
    with pytest.raises(ConfigError, match="cannot read"):
        ApiKeyAuth.from_settings(ServeSettings(api_keys_file="/nonexistent/keys"))


def test_a_bad_request_does_not_fail_its_batch_mates():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from eyeops.errors import InvalidRequest
    from eyeops.serve.batching import MicroBatcher

    calls: list[list[str]] = []

    def model(items: list[str]) -> list[str]:
        calls.append(items)
        if "bad" in items:
            raise InvalidRequest("item 'bad' is malformed")
        return [item.upper() for item in items]

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=8, wait_s=0.2, executor=ThreadPoolExecutor(1))
        jobs = [batcher.submit([item], timeout_s=10) for item in ("a", "bad", "c")]
        return await asyncio.gather(*jobs, return_exceptions=True)

    a, bad, c = asyncio.run(scenario())
    assert (a, c) == (["A"], ["C"]) and isinstance(bad, InvalidRequest)
    assert calls[0] == ["a", "bad", "c"] and sorted(map(tuple, calls[1:])) == [("a",), ("bad",), ("c",)]
