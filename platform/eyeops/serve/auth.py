"""API-key authentication with scopes.

Keys come from ``EYEOPS_API_KEYS`` and/or a mounted Secret file (``EYEOPS_API_KEYS_FILE``), in
one format: entries ``KEY:scope[,scope…]`` separated by ``;`` or newlines (``#`` starts a
comment). Only sha256 digests are kept in memory and every presented key is compared against
every stored digest with :func:`hmac.compare_digest`, so timing reveals neither a key nor which
entry matched. ``admin`` implies every scope.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from eyeops.errors import ConfigError, Forbidden, Unauthorized

Scope = Literal["classify", "chat", "admin"]
SCOPES: tuple[Scope, ...] = ("classify", "chat", "admin")
MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    scopes: frozenset[str]
    label: str  # "key #n" — safe to log, unlike the key


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(text: str, *, origin: str) -> list[_Entry]:
    """Parse ``KEY:scope,scope`` entries; a :class:`ConfigError` names the bad entry (never the key)."""
    entries: list[_Entry] = []
    raw_entries = [e.split("#", 1)[0].strip() for line in text.splitlines() for e in line.split(";")]
    for position, raw in enumerate((e for e in raw_entries if e), start=1):
        key, sep, scope_text = raw.rpartition(":")
        if not sep or not key:
            raise ConfigError(f"{origin}: entry {position} must look like KEY:scope[,scope]")
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{origin}: entry {position}: key shorter than {MIN_KEY_LENGTH} characters")
        scopes = frozenset(s.strip() for s in scope_text.split(",") if s.strip())
        unknown = sorted(scopes - set(SCOPES))
        if not scopes or unknown:
            raise ConfigError(
                f"{origin}: entry {position}: unknown or missing scopes {unknown or '[]'} "
                f"(known: {', '.join(SCOPES)})"
            )
        entries.append(_Entry(_digest(key), scopes, f"key #{position} of {origin}"))
    return entries


class ApiKeyAuth:
    """Checks a presented API key against the configured keys and a required scope."""

    def __init__(self, entries: list[_Entry], *, disabled: bool = False) -> None:
        if not entries and not disabled:
            raise ConfigError("auth is enabled but no API keys are configured")
        self._entries = tuple(entries)
        self.disabled = disabled

    @classmethod
    def from_settings(cls, settings) -> ApiKeyAuth:
        """Keys from :class:`eyeops.serve.settings.ServeSettings` (env and/or Secret file)."""
        entries: list[_Entry] = []
        if settings.api_keys is not None:
            entries += parse_keys(settings.api_keys.get_secret_value(), origin="EYEOPS_API_KEYS")
        if settings.api_keys_file:
            path = Path(settings.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"EYEOPS_API_KEYS_FILE={path}: cannot read ({exc.strerror})") from None
            entries += parse_keys(text, origin=str(path))
        return cls(entries, disabled=settings.auth_disabled)

    def check(self, presented: str | None, scope: Scope) -> str:
        """Return a loggable label of the matching key; 401 without a valid key, 403 without the scope."""
        if self.disabled:
            return "auth disabled"
        if not presented:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        digest = _digest(presented)
        match: _Entry | None = None
        for entry in self._entries:  # no early exit: the time taken does not depend on the match
            if hmac.compare_digest(entry.digest, digest):
                match = entry
        if match is None:
            raise Unauthorized("invalid API key")
        if scope not in match.scopes and "admin" not in match.scopes:
            raise Forbidden(f"API key lacks scope {scope!r} (has: {', '.join(sorted(match.scopes))})")
        return match.label


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer …`` or ``X-API-Key``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None
