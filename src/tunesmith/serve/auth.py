"""API-key checks: `Authorization: Bearer KEY`, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Optional

from tunesmith.serve.protocol import APIError

# Routes a load balancer or orchestrator must reach without credentials.
PUBLIC_PATHS = frozenset({"/health"})


def bearer_matches(header: Optional[str], api_key: str) -> bool:
    """True when `header` is `Bearer <api_key>`. hmac.compare_digest takes the same time wherever
    the first differing byte is, so the key cannot be guessed one character at a time."""
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), api_key.encode("utf-8"))


def unauthorized() -> APIError:
    return APIError(401, "Missing or invalid API key: send `Authorization: Bearer <key>`.",
                    type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def management_disabled() -> APIError:
    return APIError(403, "Adapter management is off because the server has no API key; restart it with "
                    "--api-key (or TUNESMITH_API_KEY) to load and unload adapters at runtime.",
                    type="permission_error", code="adapter_management_disabled")
