"""The HMAC key-set secret (Secrets Manager JSON ``{"current": ..., "keysets": {...}}``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from offload_contract.signing import decode_root_secret, derive_company_key, make_key_id

CACHE_SECONDS = 300.0


@dataclass(frozen=True)
class KeySets:
    current: str
    roots: dict[str, bytes]

    @classmethod
    def parse(cls, secret_string: str) -> KeySets:
        try:
            document = json.loads(secret_string)
            current = str(document["current"])
            roots = {str(name): decode_root_secret(str(value)) for name, value in document["keysets"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            # Never echo the secret: only say what shape was expected.
            raise ValueError(
                'HMAC secret must be JSON {"current": name, "keysets": {name: base64url}}'
            ) from None
        if current not in roots:
            raise ValueError("HMAC secret's current key set is not among its keysets")
        return cls(current, roots)

    def signing_key(self, company_id: int) -> tuple[str, bytes]:
        """(key id, key) of the current key set for a company."""
        return make_key_id(self.current, company_id), derive_company_key(self.roots[self.current], company_id)

    def __repr__(self) -> str:  # never print root secrets
        return f"KeySets(current={self.current!r}, keysets={sorted(self.roots)!r})"


class SecretKeySets:
    """Loads and caches the key sets (refreshed every 5 minutes, so rotation needs no deploy)."""

    def __init__(self, secretsmanager: Any, secret_id: str, clock: Any = time.monotonic) -> None:
        self._sm = secretsmanager
        self._id = secret_id
        self._clock = clock
        self._cached: tuple[float, KeySets] | None = None

    def get(self) -> KeySets:
        now = self._clock()
        if self._cached is None or now - self._cached[0] > CACHE_SECONDS:
            value = self._sm.get_secret_value(SecretId=self._id)["SecretString"]
            self._cached = (now, KeySets.parse(value))
        return self._cached[1]
