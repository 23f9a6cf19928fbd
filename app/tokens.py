"""Bearer secrets (sessions, API tokens, invitations): random, shown once, stored only as SHA-256.

A token carries 256 random bits, so a fast unsalted hash is enough to make a stolen database
useless for signing in, and the hash can be the indexed lookup key. Ids are never tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32
# token_urlsafe(32) is 43 characters; anything much longer is not one of ours.
MAX_TOKEN_CHARS = 128


def token_hash(plain: str) -> str:
    """The SHA-256 of a token, as 64 lower-case hex digits: what the database stores."""
    return hashlib.sha256(plain.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token: ``(plain, hash)``. Hand out ``plain`` once; store only ``hash``."""
    plain = secrets.token_urlsafe(TOKEN_BYTES)
    return plain, token_hash(plain)


def plausible_token(plain: str) -> bool:
    """Whether ``plain`` could be a token of ours (non-empty, not absurdly long, URL-safe
    base64): a cheap check before hashing and querying."""
    if not 0 < len(plain) <= MAX_TOKEN_CHARS or not plain.isascii():
        return False
    return all(char.isalnum() or char in "-_" for char in plain)


def matches(plain: str, stored_hash: str) -> bool:
    """Whether ``plain`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(token_hash(plain), stored_hash)
