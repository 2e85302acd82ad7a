"""Easy-to-read one-time guest passwords: a colour and a number, e.g. "amber-4821"."""

from __future__ import annotations

import hashlib
import hmac
import secrets

COLOURS = (
    "amber", "aqua", "azure", "beige", "black", "blue", "bronze", "brown", "coral", "cream",
    "cyan", "gold", "green", "grey", "indigo", "ivory", "jade", "khaki", "lemon", "lilac",
    "lime", "maroon", "mint", "navy", "olive", "orange", "peach", "pink", "plum", "purple",
    "red", "rose", "ruby", "rust", "sand", "silver", "teal", "violet", "white", "yellow",
)


def new_password() -> str:
    return f"{secrets.choice(COLOURS)}-{secrets.randbelow(9000) + 1000}"


def digest(secret: str, number: int, password: str) -> str:
    """What `guest_passwords` stores: keyed, so the small password space is not a rainbow."""
    message = f"{number}:{password}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
