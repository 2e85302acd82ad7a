"""One-time guest passwords that are easy to type from a screen: four short common words,
e.g. "pagan-cloth-mud-yield".

The words come from the EFF short word list (1,295 words of 3–5 letters, shipped by
`xkcdpass`), so four of them carry log2(1295) × 4 ≈ 41.4 bits. Guest accounts are never
blocked by failed logins (a hall of candidates must not lock each other out); the per-address
login limit is what stops guessing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import secrets

from xkcdpass import xkcd_password

WORDS_PER_PASSWORD = 4
SEPARATOR = "-"


@functools.cache
def words() -> tuple[str, ...]:
    """The word list (lower-case letters only, unique), read once. ("yo-yo" is left out: the
    hyphen separates words.)"""
    wordfile = xkcd_password.locate_wordfile("eff-short")
    listed = xkcd_password.generate_wordlist(wordfile=wordfile, min_length=3, max_length=5)
    return tuple(sorted({w.lower() for w in listed if w.isascii() and w.isalpha()}))


def entropy_bits() -> float:
    return WORDS_PER_PASSWORD * math.log2(len(words()))


def new_password() -> str:
    return SEPARATOR.join(secrets.choice(words()) for _ in range(WORDS_PER_PASSWORD))


def digest(secret: str, number: int, password: str) -> str:
    """What `guest_passwords` stores: keyed, so a leaked table is no list of passwords."""
    message = f"{number}:{password}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
