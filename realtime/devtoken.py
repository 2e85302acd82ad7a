"""The development staff token of `realtime serve --dev`: made once, kept in a file, so a
restart does not sign every dashboard tab and script out."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy.engine import make_url

FILE_NAME = "realtime-dev-token"


def token_path(database_url: str) -> Path:
    """Next to the SQLite database file (`./realtime-dev-token` for the default
    `realtime.db`); in the working directory for PostgreSQL or an in-memory database."""
    url = make_url(database_url)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        return Path(database).expanduser().resolve().parent / FILE_NAME
    return Path.cwd() / FILE_NAME


def load_or_create(path: Path) -> str:
    """The token kept in `path`, or a new one written there (readable by the owner only)."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token.startswith("dev-") and len(token) >= 16:
        return token
    token = "dev-" + secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token
