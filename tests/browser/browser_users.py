"""Staff users for the browser tests, made over REST with the bootstrap token."""

from __future__ import annotations

import uuid
from typing import Any

from clients import Api
from playwright.async_api import expect

PASSWORD = "a good long password"


async def make_user(
    api: Api, roles: list[str], groups: list[str] | None = None, name: str | None = None
) -> dict[str, Any]:
    """A new active user (invited, then activated with PASSWORD); returns it with `login`."""
    tag = uuid.uuid4().hex[:8]
    login = f"{roles[0]}-{tag}"
    created = await api.http.post(
        "/api/v1/users",
        json={
            "full_name": name or f"{roles[0].title()} {tag}",
            "email": f"{login}@example.org",
            "login": login,
            "roles": roles,
            "groups": groups or [],
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    done = await api.http.post(
        "/api/v1/auth/activate", json={"token": body["activation_token"], "password": PASSWORD}
    )
    assert done.status_code == 200, done.text
    user: dict[str, Any] = body["user"]
    return user


async def sign_in(page: Any, login: str, password: str = PASSWORD) -> None:
    """Fill the dashboard's sign-in form and wait for the answer (the form then clears the
    password, whatever the outcome)."""
    await page.get_by_label("Login or e-mail").fill(login)
    field = page.get_by_label("Password", exact=True)
    await field.fill(password)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(field).to_have_value("")
