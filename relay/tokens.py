"""Secrets: tunnel access tokens and API tokens.

Tokens are 256 random bits, shown once, stored only as SHA-256 hashes and compared in
constant time. Nothing here ever logs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32  # 256 bits


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, stored_hash: str | None) -> bool:
    """True when `token` hashes to `stored_hash`; constant time in the token's content."""
    if not stored_hash:
        return False
    return hmac.compare_digest(hash_token(token), stored_hash)
