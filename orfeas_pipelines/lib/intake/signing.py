"""The job signature, as an agent in any language computes it.

1. Take the manifest object without its `signature` key.
2. Canonical JSON: keys sorted, separators "," and ":" (no spaces), UTF-8, non-ASCII kept
   as is (Python: ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
   Every string in a valid manifest is printable ASCII and every number an integer, so
   any standard JSON encoder with sorted keys and no whitespace gives the same bytes.
3. HMAC-SHA256 over those bytes. The key is the agent's secret *as text*: the UTF-8 bytes of
   the 64-character hex string printed by `orfeas agent create-key`, not the 32 bytes it
   spells.
4. `signature` = "sha256=" + the lowercase hex digest.

Example (shell): ``printf '%s' "$CANONICAL" | openssl dgst -sha256 -hmac "$SECRET"``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

SIGNATURE_PREFIX = "sha256="


def new_secret() -> str:
    """A fresh agent secret: 64 hex characters (256 bits)."""
    return secrets.token_hex(32)


def canonical_json(manifest: dict[str, Any]) -> bytes:
    """The bytes the signature covers: the manifest without `signature`, canonically encoded."""
    unsigned = {key: value for key, value in manifest.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(manifest: dict[str, Any], secret: str) -> str:
    """The `signature` value for `manifest` under `secret`."""
    digest = hmac.new(secret.encode("utf-8"), canonical_json(manifest), hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def signature_matches(manifest: dict[str, Any], signature: str, secret: str) -> bool:
    """Constant-time comparison of `signature` with the one `secret` gives for `manifest`."""
    return hmac.compare_digest(sign(manifest, secret).encode("ascii"), signature.encode("utf-8"))
