"""The e-mails themselves: plain text, a link into the dashboard carrying a one-time token."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import quote


def _until(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def activation_link(public_url: str, token: str) -> str:
    return f"{public_url}/dashboard/#/activate?token={quote(token, safe='')}"


def reset_link(public_url: str, token: str) -> str:
    return f"{public_url}/dashboard/#/reset?token={quote(token, safe='')}"


def invitation(public_url: str, to: str, name: str, token: str, expires_at: float
               ) -> EmailMessage:
    message = EmailMessage()
    message["To"] = to
    message["Subject"] = "Your exam staff account: choose a password"
    message.set_content(
        f"Hello {name},\n\n"
        "An account was made for you to watch and run exams. Open this link and choose a "
        "password to activate it:\n\n"
        f"{activation_link(public_url, token)}\n\n"
        f"The link works once, until {_until(expires_at)}. If you did not expect it, ignore "
        "this e-mail.\n"
    )
    return message


def password_reset(public_url: str, to: str, name: str, token: str, expires_at: float
                   ) -> EmailMessage:
    message = EmailMessage()
    message["To"] = to
    message["Subject"] = "Reset your exam staff password"
    message.set_content(
        f"Hello {name},\n\n"
        "Somebody (you, we hope) asked to reset the password of your account. Open this link "
        "to choose a new one:\n\n"
        f"{reset_link(public_url, token)}\n\n"
        f"The link works once, until {_until(expires_at)}. If you did not ask for it, ignore "
        "this e-mail: your password stays as it is.\n"
    )
    return message
