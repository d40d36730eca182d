"""A project's alert rules, silences and webhooks (logic: :mod:`underlay.monitoring`).

Viewers of the project may read them; changing them needs the member role; another
project's users get 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy.orm import Session

from underlay import identity
from underlay.api.deps import Ctx
from underlay.identity import Action
from underlay.monitoring import alerts, egress, rules, webhooks
from underlay.monitoring.alert_models import Webhook
from underlay.monitoring.alert_schemas import (
    DeliveryRead,
    RuleCreate,
    RuleRead,
    SilenceCreate,
    SilenceRead,
    WebhookCreate,
    WebhookRead,
)
from underlay.platform import audit_text

router = APIRouter(prefix="/projects/{project}/alerts", tags=["alerts"])
Name = Annotated[str, Path(max_length=63)]


@router.get("/rules", response_model=list[RuleRead])
def list_rules(project: str, ctx: Ctx) -> list[RuleRead]:
    with ctx.unit("alert.rule.list", f"project:{project}/rules", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [RuleRead.model_validate(r) for r in rules.list_rules(u.session, found.id)]


@router.post("/rules", response_model=RuleRead, status_code=201)
def create_rule(project: str, body: RuleCreate, ctx: Ctx) -> RuleRead:
    resource = f"project:{project}/rule:{audit_text(body.name)}"
    with ctx.unit("alert.rule.create", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        spec = rules.RuleSpec(**body.model_dump())
        rule = rules.create_rule(u.session, found.id, spec, created_by=ctx.actor.user_id or None)
        u.detail = body.model_dump()
        return RuleRead.model_validate(rule)


@router.delete("/rules/{name}", status_code=204)
def delete_rule(project: str, name: Name, ctx: Ctx) -> None:
    resource = f"project:{project}/rule:{audit_text(name)}"
    with ctx.unit("alert.rule.delete", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        rules.delete_rule(u.session, found.id, name)


@router.get("/silences", response_model=list[SilenceRead])
def list_silences(project: str, ctx: Ctx) -> list[SilenceRead]:
    with ctx.unit("alert.silence.list", f"project:{project}/silences", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [SilenceRead.model_validate(s) for s in alerts.list_silences(u.session, found.id)]


@router.post("/silences", response_model=SilenceRead, status_code=201)
def create_silence(project: str, body: SilenceCreate, ctx: Ctx) -> SilenceRead:
    resource = f"project:{project}/silence:{audit_text(body.kind)}"
    with ctx.unit("alert.silence", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        silence = alerts.create_silence(
            u.session,
            found.id,
            body.kind,
            subject=body.subject,
            seconds=body.seconds,
            reason=body.reason,
            created_by=ctx.actor.user_id or None,
        )
        u.detail = body.model_dump()
        return SilenceRead.model_validate(silence)


hooks = APIRouter(prefix="/projects/{project}/webhooks", tags=["alerts"])


def _read(session: Session, hook: Webhook) -> WebhookRead:
    counts = webhooks.delivery_counts(session, hook.id)
    return WebhookRead(**webhooks.describe(hook), deliveries=counts)


@hooks.get("", response_model=list[WebhookRead])
def list_webhooks(project: str, ctx: Ctx) -> list[WebhookRead]:
    with ctx.unit("webhook.list", f"project:{project}/webhooks", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [_read(u.session, h) for h in webhooks.list_webhooks(u.session, found.id)]


@hooks.post("", response_model=WebhookRead, status_code=201)
def create_webhook(project: str, body: WebhookCreate, ctx: Ctx) -> WebhookRead:
    resource = f"project:{project}/webhook:{audit_text(body.name)}"
    with ctx.unit("webhook.create", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        u.detail = body.model_dump(exclude={"secret"}) | {"signed": body.secret is not None}
        spec = webhooks.WebhookSpec(**{**body.model_dump(), "kinds": tuple(body.kinds)})
        denied = egress.parse_networks(ctx.platform.settings.alerts.webhook_denied_networks)
        hook = webhooks.create_webhook(
            u.session, ctx.platform.keyring, found.id, spec,
            created_by=ctx.actor.user_id or None, denied=denied,
        )  # fmt: skip
        return _read(u.session, hook)


@hooks.delete("/{name}", status_code=204)
def delete_webhook(project: str, name: Name, ctx: Ctx) -> None:
    resource = f"project:{project}/webhook:{audit_text(name)}"
    with ctx.unit("webhook.delete", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        webhooks.delete_webhook(u.session, found.id, name)


@hooks.post("/{name}/test", response_model=DeliveryRead, status_code=202)
def test_webhook(project: str, name: Name, ctx: Ctx) -> DeliveryRead:
    """Queue a test post to the webhook; follow it with ``GET .../deliveries``."""
    resource = f"project:{project}/webhook:{audit_text(name)}"
    with ctx.unit("webhook.test", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        hook = webhooks.read_webhook(u.session, found.id, name)
        return DeliveryRead.model_validate(webhooks.enqueue_test(u.session, hook))


@hooks.get("/{name}/deliveries", response_model=list[DeliveryRead])
def list_deliveries(project: str, name: Name, ctx: Ctx) -> list[DeliveryRead]:
    resource = f"project:{project}/webhook:{audit_text(name)}"
    with ctx.unit("webhook.deliveries", resource, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        hook = webhooks.read_webhook(u.session, found.id, name)
        rows = webhooks.list_deliveries(u.session, found.id, webhook_id=hook.id)
        return [DeliveryRead.model_validate(d) for d in rows]
