"""The API keys a team's server accepts, and the short fingerprints the log names them by.

Keys come from `--api-key` (repeatable) and `--api-key-file` (one key per
line; blank lines and lines starting with # are skipped). The file is read
again on `reload()` (SIGHUP), so keys can be added or revoked without a
restart; the flags' keys stay.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def fingerprint(key: str) -> str:
    """Names a key in logs without revealing it: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def read_key_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--api-key-file {path}: cannot read it ({e})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class APIKeys:
    def __init__(self, keys: tuple[str, ...] = (), path: str | None = None):
        self._flag_keys = tuple(keys)
        self._path = Path(path) if path is not None else None
        self._keys: tuple[bytes, ...] = ()
        self._load()

    @property
    def required(self) -> bool:
        """Whether requests must present a key (one was configured, even if the file is now empty)."""
        return bool(self._flag_keys) or self._path is not None

    def _load(self) -> None:
        from_file = read_key_file(self._path) if self._path is not None else []
        self._keys = tuple(key.encode() for key in (*self._flag_keys, *from_file))

    def reload(self) -> None:
        """Read the key file again; on failure keep the keys in use and log why."""
        try:
            self._load()
        except ValueError as e:
            logger.error("%s; keeping the %d keys in use", e, len(self._keys))
            return
        logger.info("API keys reloaded: %d keys (%s)", len(self._keys),
                    ", ".join(fingerprint(k.decode()) for k in self._keys))

    def match(self, presented: str) -> str | None:
        """The fingerprint of the key `presented` equals, or None. Compares with every key in constant time."""
        given = presented.encode()
        found = None
        for key in self._keys:
            if hmac.compare_digest(given, key):
                found = key
        return fingerprint(found.decode()) if found is not None else None
