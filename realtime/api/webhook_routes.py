"""REST for webhooks under `/api/v1/webhooks` (permission `webhooks.manage`).

A subscription of one exam is managed by whoever manages that exam (group scope); one of every
exam only by a role that sees every group. Out of scope is answered like unknown (404). Every
change is audited; the secret is shown once, on creation or rotation.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.api.inputs import int_param
from realtime.api.routes import json_body, principal_of
from realtime.auth.permissions import Permission
from realtime.auth.principal import Principal
from realtime.errors import BadRequest, Forbidden, NotFound
from realtime.identity import scope
from realtime.identity.web import ctx_of, identity_of
from realtime.jsonsafe import JSONResponse
from realtime.runtime import runtime_of
from realtime.webhooks.inputs import EVENT_KINDS, parse_subscription
from realtime.webhooks.models import STATUSES
from realtime.webhooks.store import WebhookStore

SECRET_NOTE = "Keep the secret: it signs every delivery and is not shown again."


def webhooks_of(request: Request) -> WebhookStore:
    store: WebhookStore = request.app.state.webhooks
    return store


def _not_found(subscription_id: str) -> NotFound:
    return NotFound(f"no webhook subscription {subscription_id!r}")


async def _in_scope(request: Request, principal: Principal, exam_id: str | None) -> bool:
    """Whether the principal manages subscriptions of this exam (None: of every exam)."""
    if principal.unrestricted:
        return True
    if exam_id is None:
        return False
    try:
        exam = await runtime_of(request).service.get_exam(exam_id)
    except NotFound:
        return False
    return scope.manages(principal, exam.groups)


async def _subscription(request: Request, principal: Principal) -> dict[str, Any]:
    """The subscription named in the path, if in the caller's scope; else 404."""
    subscription_id = request.path_params["subscription_id"]
    found = await webhooks_of(request).get(subscription_id)
    if found is None or not await _in_scope(request, principal, found["exam_id"]):
        raise _not_found(subscription_id)
    return found


async def _audit(request: Request, principal: Principal, action: str, subject: str,
                 **details: Any) -> None:
    await identity_of(request).audit.record(ctx_of(principal), action, f"webhook:{subject}",
                                            **details)


async def list_subscriptions(request: Request) -> Response:
    """
    summary: The webhook subscriptions in the caller's scope, and the event kinds there are
    responses:
      200:
        description: >
          {subscriptions: [{id, url, exam_id, kinds, description, active,
          counts: {pending, delivered, failed}, ...}], kinds}
      403: {description: "Without webhooks.manage"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    shown = [s for s in await webhooks_of(request).list_all()
             if await _in_scope(request, principal, s["exam_id"])]
    return JSONResponse({"subscriptions": shown, "kinds": list(EVENT_KINDS)})


async def create_subscription(request: Request) -> Response:
    """
    summary: Subscribe a URL to events of one exam (exam_id) or of every exam (exam_id null)
    description: >
      `kinds` lists the event kinds to deliver (empty: every kind). The answer holds the
      subscription's `secret`, shown only this once: it keys the HMAC-SHA256 signature of
      every delivery (docs/webhooks.md).
    requestBody:
      content:
        application/json:
          schema:
            type: object
            required: [url]
            properties:
              url: {type: string}
              exam_id: {type: string, nullable: true}
              kinds: {type: array, items: {type: string}}
              description: {type: string}
              active: {type: boolean}
    responses:
      201: {description: "The subscription and its secret"}
      400: {description: "Bad URL, unknown kind or field"}
      403: {description: "Without webhooks.manage, or every exam without a role seeing all groups"}
      404: {description: "Unknown exam (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    runtime = runtime_of(request)
    fields = parse_subscription(await json_body(request), runtime.settings.webhook_allowed_hosts)
    exam_id = fields["exam_id"]
    if exam_id is None:
        if not principal.unrestricted:
            raise Forbidden("a subscription to every exam needs a role that sees all groups")
    else:
        exam = await runtime.service.exam_in_scope(exam_id, principal)
        if not scope.manages(principal, exam.groups):
            raise Forbidden("subscribing to this exam needs one of its groups")
    created, secret = await webhooks_of(request).create(**fields, actor=principal.actor)
    await _audit(request, principal, "webhook_created", created["id"], url=created["url"],
                 exam_id=exam_id, kinds=created["kinds"], active=created["active"])
    return JSONResponse({**created, "secret": secret, "message": SECRET_NOTE}, status_code=201)


async def get_subscription(request: Request) -> Response:
    """
    summary: One webhook subscription (without its secret)
    responses:
      200: {description: The subscription}
      404: {description: "Unknown (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    return JSONResponse(await _subscription(request, principal))


async def update_subscription(request: Request) -> Response:
    """
    summary: Change a subscription's url, kinds, description or active flag
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties:
              url: {type: string}
              kinds: {type: array, items: {type: string}}
              description: {type: string}
              active: {type: boolean}
    responses:
      200: {description: The changed subscription}
      400: {description: "Bad URL, unknown kind or field"}
      404: {description: "Unknown (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    found = await _subscription(request, principal)
    changes = parse_subscription(
        await json_body(request), runtime_of(request).settings.webhook_allowed_hosts,
        partial=True,
    )
    updated = await webhooks_of(request).update(found["id"], changes)
    if updated is None:
        raise _not_found(found["id"])
    await _audit(request, principal, "webhook_updated", found["id"], **changes)
    return JSONResponse(updated)


async def delete_subscription(request: Request) -> Response:
    """
    summary: Delete a subscription and its delivery log
    responses:
      204: {description: Deleted}
      404: {description: "Unknown (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    found = await _subscription(request, principal)
    await webhooks_of(request).delete(found["id"])
    await _audit(request, principal, "webhook_deleted", found["id"], url=found["url"])
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    """
    summary: Give a subscription a new secret (shown only in this answer)
    responses:
      200: {description: "{id, secret}"}
      404: {description: "Unknown (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    found = await _subscription(request, principal)
    secret = await webhooks_of(request).rotate_secret(found["id"])
    if secret is None:
        raise _not_found(found["id"])
    await _audit(request, principal, "webhook_secret_rotated", found["id"])
    return JSONResponse({"id": found["id"], "secret": secret, "message": SECRET_NOTE})


async def send_test(request: Request) -> Response:
    """
    summary: Send a signed `ping` to the subscription's URL ("send test")
    description: >
      Queued like any delivery (signed, retried); the answer is the delivery, whose outcome
      the delivery log shows within moments.
    responses:
      202: {description: The queued ping delivery}
      404: {description: "Unknown (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    found = await _subscription(request, principal)
    delivery = await webhooks_of(request).enqueue_ping(found["id"])
    await _audit(request, principal, "webhook_test", found["id"], delivery=delivery["id"])
    return JSONResponse(delivery, status_code=202)


async def list_deliveries(request: Request) -> Response:
    """
    summary: The subscription's delivery log, newest first
    parameters:
      - {name: status, in: query, schema: {type: string, enum: [pending, delivered, failed]}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000}}
    responses:
      200:
        description: >
          {deliveries: [{id, kind, exam_id, seq, status, attempts, last_error,
          last_status_code, next_attempt_at, ...}]}
      404: {description: "Unknown (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    found = await _subscription(request, principal)
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"'status' must be one of {list(STATUSES)}")
    limit = int_param(request, "limit", 100, 1, 1000)
    deliveries = await webhooks_of(request).deliveries(found["id"], status, limit)
    return JSONResponse({"deliveries": deliveries})


async def retry_delivery(request: Request) -> Response:
    """
    summary: Try a failed or pending delivery again now (one more attempt)
    responses:
      200: {description: The delivery}
      404: {description: "Unknown delivery or subscription (or out of scope)"}
    """
    principal = await principal_of(request, Permission.MANAGE_WEBHOOKS)
    found = await _subscription(request, principal)
    store = webhooks_of(request)
    delivery_id = request.path_params["delivery_id"]
    delivery = await store.get_delivery(delivery_id)
    if delivery is None or delivery["subscription_id"] != found["id"]:
        raise NotFound(f"no delivery {delivery_id!r} of this subscription")
    retried = await store.retry(delivery_id)
    await _audit(request, principal, "webhook_retry", found["id"], delivery=delivery_id)
    return JSONResponse(retried)


_ONE = "/api/v1/webhooks/{subscription_id}"
routes = [
    Route("/api/v1/webhooks", list_subscriptions, methods=["GET"]),
    Route("/api/v1/webhooks", create_subscription, methods=["POST"]),
    Route(_ONE, get_subscription, methods=["GET"]),
    Route(_ONE, update_subscription, methods=["PATCH"]),
    Route(_ONE, delete_subscription, methods=["DELETE"]),
    Route(_ONE + "/secret", rotate_secret, methods=["POST"]),
    Route(_ONE + "/test", send_test, methods=["POST"]),
    Route(_ONE + "/deliveries", list_deliveries, methods=["GET"]),
    Route(_ONE + "/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
]
