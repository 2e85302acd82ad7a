"""Building the identity layer from the settings (used by the app's lifespan and the CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable

from realtime.config import Settings
from realtime.db.database import Database
from realtime.identity.audit import AuditLog
from realtime.identity.authenticator import IdentityAuthenticator
from realtime.identity.roles import RoleSet
from realtime.identity.service import IdentityPolicy, IdentityService
from realtime.identity.web import Identity


def policy_of(settings: Settings) -> IdentityPolicy:
    return IdentityPolicy(
        token_ttl=settings.staff_token_ttl,
        activation_ttl=settings.activation_ttl,
        max_failures=settings.login_max_failures,
        block_seconds=settings.login_block_seconds,
        require_group=settings.require_user_group,
    )


def build_identity(
    settings: Settings, db: Database, clock: Callable[[], float] = time.time
) -> Identity:
    audit = AuditLog(db, clock)
    service = IdentityService(db, RoleSet.load(settings.roles_file), audit, policy_of(settings),
                              clock)
    auth = IdentityAuthenticator(
        settings.secret_key,
        settings.staff_token_ttl,
        settings.bootstrap_staff_token,
        service,
        legacy_staff_tokens=settings.legacy_staff_tokens,
    )
    return Identity(service, audit, auth, settings)
