"""E-mailed invitations and password resets, end to end: a real server sending through SMTP to
a local aiosmtpd the fixtures start; links followed through the real endpoints; SMTP down
(the admin sees the invitation not sent and resends it); no SMTP (the token is shown once)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from clients import Api, eventually
from server import ServerProcess, free_port
from smtp_server import LocalSmtp, link_of, mail_server

from realtime.config import ConfigError, Settings

PASSWORD = "a good long password"
NEW_PASSWORD = "another long password"


@pytest.fixture(scope="module")
def smtp() -> Iterator[LocalSmtp]:
    server = LocalSmtp().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mailing(smtp: LocalSmtp) -> Iterator[ServerProcess]:
    process = mail_server(smtp.port).start()
    yield process
    process.stop()


@pytest.fixture
async def admin(mailing: ServerProcess) -> AsyncIterator[Api]:
    client = Api(mailing.url)
    yield client
    await client.close()


async def invite(admin: Api, roles: list[str] | None = None) -> dict[str, Any]:
    email = f"staff-{uuid.uuid4().hex[:8]}@example.org"
    created = await admin.http.post("/api/v1/users", json={
        "full_name": "Grace Hopper", "email": email, "roles": roles or ["proctor"]})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def login(base_url: str, email: str, password: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await http.post("/api/v1/auth/login", json={"login": email, "password": password})


async def delivery(admin: Api, user_id: str) -> dict[str, Any] | None:
    answer = await admin.http.get(f"/api/v1/users/{user_id}")
    assert answer.status_code == 200, answer.text
    invitation: dict[str, Any] | None = answer.json()["invitation"]
    return invitation


async def activated_user(admin: Api, smtp: LocalSmtp) -> dict[str, Any]:
    body = await invite(admin)
    email = body["user"]["email"]
    [mail] = await eventually(lambda: smtp.to(email))
    _, _, token = link_of(mail)
    done = await admin.http.post("/api/v1/auth/activate",
                                 json={"token": token, "password": PASSWORD})
    assert done.status_code == 200, done.text
    user: dict[str, Any] = body["user"]
    return user


async def test_invitation_is_mailed_and_its_link_activates_the_account(
    mailing: ServerProcess, admin: Api, smtp: LocalSmtp
) -> None:
    """Inviting mails a link (no token in the answer); the link's token activates the account
    through the real endpoint; the user logs in; the admin sees the invitation sent."""
    body = await invite(admin)
    user, email = body["user"], body["user"]["email"]
    assert body["activation_token"] is None
    assert body["invitation"]["status"] in ("pending", "sent")
    assert body["invitation"]["recipient"] == email
    [mail] = await eventually(lambda: smtp.to(email))
    assert mail["From"] == "exams@example.org"
    link, kind, token = link_of(mail)
    assert kind == "activate" and link.startswith(f"{mailing.url}/dashboard/#/activate?token=")
    sent = await eventually(lambda: _status(admin, user["id"], "sent"))
    assert sent["attempts"] == 1 and sent["sent_at"]
    assert (await login(mailing.url, email, PASSWORD)).status_code == 401  # no password yet
    done = await admin.http.post("/api/v1/auth/activate",
                                 json={"token": token, "password": PASSWORD})
    assert done.status_code == 200, done.text
    assert (await login(mailing.url, email, PASSWORD)).status_code == 200
    again = await admin.http.post("/api/v1/auth/activate",
                                  json={"token": token, "password": PASSWORD})
    assert again.status_code == 404  # single use
    audit = (await admin.http.get("/api/v1/audit", params={"user": user["id"]})).json()
    assert "mail_sent" in [e["action"] for e in audit["entries"]]


async def _status(admin: Api, user_id: str, status: str) -> dict[str, Any] | None:
    current = await delivery(admin, user_id)
    return current if current is not None and current["status"] == status else None


async def test_password_reset_end_to_end(
    mailing: ServerProcess, admin: Api, smtp: LocalSmtp
) -> None:
    """Asking answers the same for a known and an unknown address, mails only the known one;
    the link's token sets a new password once, ends the old logins, and is audited."""
    user = await activated_user(admin, smtp)
    email = user["email"]
    old = (await login(mailing.url, email, PASSWORD)).json()["token"]
    async with httpx.AsyncClient(base_url=mailing.url, timeout=10) as http:
        known = await http.post("/api/v1/auth/password-reset", json={"email": email.upper()})
        unknown = await http.post("/api/v1/auth/password-reset",
                                  json={"email": "nobody-here@example.org"})
        assert known.status_code == unknown.status_code == 202
        assert known.json() == unknown.json()
        [mail] = await eventually(
            lambda: [m for m in smtp.to(email) if "reset" in str(m["Subject"]).lower()]
        )
        assert not smtp.to("nobody-here@example.org")
        _, kind, token = link_of(mail)
        assert kind == "reset"
        short = await http.post("/api/v1/auth/password-reset/confirm",
                                json={"token": token, "password": "short"})
        assert short.status_code == 400
        done = await http.post("/api/v1/auth/password-reset/confirm",
                               json={"token": token, "password": NEW_PASSWORD})
        assert done.status_code == 200, done.text
        reused = await http.post("/api/v1/auth/password-reset/confirm",
                                 json={"token": token, "password": NEW_PASSWORD})
        assert reused.status_code == 404
        me = await http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {old}"})
        assert me.status_code == 401  # signed out everywhere
    assert (await login(mailing.url, email, PASSWORD)).status_code == 401
    assert (await login(mailing.url, email, NEW_PASSWORD)).status_code == 200
    audit = (await admin.http.get("/api/v1/audit", params={"action": "password_reset"})).json()
    assert [e["subject"] for e in audit["entries"]][-1] == f"user:{user['id']}"
    asked = (await admin.http.get("/api/v1/audit",
                                  params={"action": "password_reset_requested"})).json()
    assert {"email": "nobody-here@example.org", "outcome": "no active account"} in [
        e["details"] for e in asked["entries"]]


async def test_smtp_down_reports_not_sent_and_the_admin_resends(tmp_path: Any) -> None:
    """With nothing listening on the SMTP port the invitation ends `failed` with the error
    (after its retries); once SMTP is back, the admin's new link is mailed and works."""
    port = free_port()
    process = mail_server(port).start()
    api = Api(process.url)
    smtp: LocalSmtp | None = None
    try:
        body = await invite(api)
        user = body["user"]
        failed = await eventually(lambda: _status(api, user["id"], "failed"))
        assert failed["attempts"] == 2 and failed["last_error"]
        listed = (await api.http.get("/api/v1/users", params={"status": "invited"})).json()
        mine = [u for u in listed["users"] if u["id"] == user["id"]]
        assert mine[0]["invitation"]["status"] == "failed"
        smtp = LocalSmtp(port).start()
        again = await api.http.post(f"/api/v1/users/{user['id']}/invitation")
        assert again.status_code == 200, again.text
        assert again.json()["activation_token"] is None
        [mail] = await eventually(lambda: smtp.to(user["email"]) if smtp else [])
        await eventually(lambda: _status(api, user["id"], "sent"))
        _, _, token = link_of(mail)
        done = await api.http.post("/api/v1/auth/activate",
                                   json={"token": token, "password": PASSWORD})
        assert done.status_code == 200, done.text
        assert (await login(process.url, user["email"], PASSWORD)).status_code == 200
    finally:
        await api.close()
        process.stop()
        if smtp is not None:
            smtp.stop()


async def test_without_smtp_the_token_is_shown_once() -> None:
    """No SMTP settings: the answer carries the activation token as before, no delivery, and
    password reset by e-mail answers 404 (it is not set up)."""
    process = ServerProcess().start()
    api = Api(process.url)
    try:
        body = await invite(api)
        assert body["activation_token"] and body["invitation"] is None
        assert await delivery(api, body["user"]["id"]) is None
        reset = await api.http.post("/api/v1/auth/password-reset",
                                    json={"email": body["user"]["email"]},
                                    headers={"Authorization": ""})
        assert reset.status_code == 404
    finally:
        await api.close()
        process.stop()


def test_smtp_without_sender_or_public_url_refuses_to_start() -> None:
    """An SMTP host without REALTIME_SMTP_FROM or REALTIME_PUBLIC_URL would send broken mail:
    the settings are refused."""
    with pytest.raises(ConfigError):
        Settings(smtp_host="127.0.0.1", smtp_from="a@example.org").check()
    with pytest.raises(ConfigError):
        Settings(smtp_host="127.0.0.1", public_url="https://x.example.org").check()
    Settings(smtp_host="127.0.0.1", smtp_from="a@example.org",
             public_url="https://x.example.org").check()
