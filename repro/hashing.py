"""One stable hash of JSON-able values: store identities, settings digests, report cache keys."""
from __future__ import annotations

import hashlib
import json


def digest(value, length: int | None = 16) -> str:
    """SHA-256 of ``value`` as sorted-key JSON (non-JSON values by ``str``), its first ``length`` hex digits
    (all with None)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]
