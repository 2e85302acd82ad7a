"""A local SMTP server for the e-mail tests (aiosmtpd in a thread), keeping what it receives."""

from __future__ import annotations

import email
import email.policy
import re
import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from server import ServerProcess, free_port

LINK = re.compile(r"https?://\S+#/(activate|reset)\?token=(\S+)")


class _Keep:
    def __init__(self, owner: LocalSmtp) -> None:
        self.owner = owner

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.owner.lock:
            self.owner.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"


class LocalSmtp:
    """aiosmtpd on 127.0.0.1 (a free port unless given one); `messages` as received."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        self.controller = Controller(_Keep(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> LocalSmtp:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]


def link_of(message: EmailMessage) -> tuple[str, str, str]:
    """(the link, its kind: activate | reset, its token) from a mail's text."""
    body = message.get_body(("plain",))
    assert body is not None
    found = LINK.search(body.get_content())
    assert found is not None, body.get_content()
    from urllib.parse import unquote

    return found.group(0), found.group(1), unquote(found.group(2))


def mail_server(smtp_port: int, **settings: Any) -> ServerProcess:
    """A server (not started) sending mail to 127.0.0.1:`smtp_port`, two attempts per mail,
    its links pointing at itself."""
    process = ServerProcess(smtp_host="127.0.0.1", smtp_port=smtp_port,
                            smtp_from="exams@example.org", smtp_retries=2,
                            smtp_retry_backoff=0.05, **settings)
    process.env["REALTIME_PUBLIC_URL"] = process.url
    return process
