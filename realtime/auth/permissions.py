"""Permissions: one per staff action, so roles can grant each separately."""

from __future__ import annotations

import enum

from realtime.state.model import Action


class Permission(enum.StrEnum):
    VIEW_SESSIONS = "sessions.view"
    AUTHORIZE = "sessions.authorize"
    PAUSE = "sessions.pause"
    RESUME = "sessions.resume"
    LOCK = "sessions.lock"
    UNLOCK = "sessions.unlock"
    TERMINATE = "sessions.terminate"
    EXTEND = "sessions.extend"
    NOTICE = "sessions.notice"
    REDUCE = "sessions.reduce"
    REOPEN = "sessions.reopen"
    VIEW_HISTORY = "sessions.history"
    REPORT_IRREGULARITY = "sessions.irregularity"
    MANAGE_EXAMS = "exams.manage"
    CREATE_SESSIONS = "sessions.create"
    REASSIGN_GUESTS = "guests.reassign"
    MANAGE_USERS = "users.manage"
    VIEW_AUDIT = "audit.view"
    EXPORT_USERS = "users.export"
    VIEW_SYSTEM = "system.view"  # the server processes (nodes) and their health
    MANAGE_WEBHOOKS = "webhooks.manage"  # subscriptions, their secrets and delivery logs


ACTION_PERMISSION: dict[Action, Permission] = {
    Action.AUTHORIZE: Permission.AUTHORIZE,
    Action.PAUSE: Permission.PAUSE,
    Action.RESUME: Permission.RESUME,
    Action.LOCK: Permission.LOCK,
    Action.UNLOCK: Permission.UNLOCK,
    Action.TERMINATE: Permission.TERMINATE,
    Action.EXTEND: Permission.EXTEND,
    Action.NOTICE: Permission.NOTICE,
    Action.ACKNOWLEDGE_HAND: Permission.NOTICE,  # answering a candidate, like a notice
    Action.REDUCE: Permission.REDUCE,
    Action.REOPEN: Permission.REOPEN,
}

ALL_PERMISSIONS = frozenset(Permission)
