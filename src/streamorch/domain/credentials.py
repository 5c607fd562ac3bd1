"""Per-worker secrets (docs/decisions/0014-per-worker-credentials.md).

Each registration gets a random secret that only that incarnation knows; the store
keeps its SHA-256 digest, never the secret. A secret is 256 random bits, so a fast
digest is enough: there is nothing to guess that a slow one would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from typing import Any

from streamorch.domain.errors import Conflict, Forbidden

HEADER = "X-Worker-Secret"
MAX_LENGTH = 256  # longer values are refused unread


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def matches(secret: str | None, stored: bytes | None) -> bool:
    """True when `secret` is the one whose digest is `stored` (constant time)."""
    if secret is None or stored is None or len(secret) > MAX_LENGTH:
        return False
    return hmac.compare_digest(digest(secret), bytes(stored))


def refused(worker_id: Any, *, given: bool = True) -> Forbidden:
    """The error for a worker call without that worker's current secret."""
    if not given:
        return Forbidden(
            f"this call acts for worker {worker_id}: send the `secret` its registration "
            f"answered in the {HEADER} header",
            code="worker_secret_required",
        )
    return Forbidden(
        f"the {HEADER} header is not worker {worker_id}'s current secret: only the worker "
        "itself (the incarnation that registered last) may make this call; a worker that "
        "lost its secret registers again",
        code="invalid_worker_secret",
    )


def name_in_use(name: str, lease_left_s: float) -> Conflict:
    """A registration refused: a live worker that did not prove to be the caller holds `name`."""
    retry_after = max(1, math.ceil(lease_left_s))
    return Conflict(
        f"a live worker holds the name {name!r}: send its secret in "
        f"{HEADER} to register as it again, or retry after its lease "
        f"ends (in {retry_after} s); an admin may pass force=true",
        code="name_in_use",
        retry_after_s=retry_after,
    )
