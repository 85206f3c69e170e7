"""Microsoft Dynamics 365 / Dataverse: service endpoint (webhook) steps.

Each step registered on a Dataverse *service endpoint* (contract 8, "webhook") POSTs one JSON
``RemoteExecutionContext`` per operation: ``MessageName`` (Create, Update, Delete, Assign,
SetState, Win, Lose, Close, ...), ``PrimaryEntityName`` / ``PrimaryEntityId``,
``InputParameters`` (``[{key, value}]``; ``Target`` is an Entity with ``Attributes`` or, on
Delete/Assign, an EntityReference), ``Pre``/``PostEntityImages``, ``InitiatingUserId``,
``UserId``, ``OperationId``, ``RequestId`` and ``OperationCreatedOn`` (WCF
``/Date(1506409448000-0700)/``, or ISO 8601). Over 256 KB the inputs and images are dropped.

Authentication is a static key chosen at registration: the ``WebhookKey`` type sends it as
``?code=<key>``, the ``HttpHeader`` type sends the headers configured, for CRM Pulse
``X-CRM-Pulse-Key: <key>``. Either must equal ``CRM_PULSE_DYNAMICS365_WEBHOOK_KEY``. Dataverse
signs nothing and sends no timestamp, so replays are absorbed by the deterministic event ids.

Sources:
https://learn.microsoft.com/power-apps/developer/data-platform/use-webhooks
https://learn.microsoft.com/power-apps/developer/data-platform/register-web-hook
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from app.adapters.base import (
    Adapter,
    Delivery,
    Parsed,
    Unmapped,
    VendorEvent,
    bad_body,
    iso_from_millis,
    same_secret,
)
from app.edge import EdgeError
from schemas.activity import Rejection

KEY_HEADER = "X-CRM-Pulse-Key"
KEY_QUERY = "code"
_GUID = re.compile(r"^\{?([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})\}?$")
_EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
_WCF_DATE = re.compile(r"^/Date\((-?\d{1,15})([+-]\d{4})?\)/$")
_PRE_STAGES = (10, 20)
"""PreValidation / PreOperation: the operation may still be rolled back."""


@dataclass(frozen=True)
class _Kind:
    base_type: str
    """``call``, ... for activities; ``<kind>_created`` for other records."""
    feature: str | None
    activity: bool = False


ENTITIES: dict[str, _Kind] = {
    "phonecall": _Kind("call", "phone_calls", activity=True),
    "appointment": _Kind("meeting", "appointments", activity=True),
    "email": _Kind("email", "email_tracking", activity=True),
    "task": _Kind("task", None, activity=True),
    "account": _Kind("account_created", "accounts"),
    "contact": _Kind("contact_created", "contacts"),
    "lead": _Kind("lead_created", "leads"),
    "opportunity": _Kind("opportunity_created", "opportunities"),
    "quote": _Kind("quote_created", "quotes"),
    "salesorder": _Kind("order_created", "orders"),
    "incident": _Kind("case_created", "cases"),
    "campaign": _Kind("campaign_created", "campaigns"),
}
ACTIVITY_COMPLETED = 1
"""statecode Completed of phonecall, appointment, email and task."""


@dataclass(frozen=True)
class _Milestone:
    type: str
    record_type: str
    close_parameter: str
    """The InputParameters entity of the closing message (OpportunityClose, ...)."""
    reference: str
    """Its attribute referencing the record (opportunityid, incidentid)."""


MILESTONES: dict[str, _Milestone] = {
    "won": _Milestone("opportunity_won", "opportunity", "OpportunityClose", "opportunityid"),
    "lost": _Milestone("opportunity_lost", "opportunity", "OpportunityClose", "opportunityid"),
    "resolved": _Milestone("case_resolved", "incident", "IncidentResolution", "incidentid"),
}
MILESTONE_MESSAGES: dict[tuple[str, str], str] = {
    ("win", "opportunity"): "won",
    ("lose", "opportunity"): "lost",
    ("close", "incident"): "resolved",
    ("close", "incidentresolution"): "resolved",
    ("create", "incidentresolution"): "resolved",
}
MILESTONE_STATES: dict[tuple[str, int], str] = {
    ("opportunity", 1): "won",
    ("opportunity", 2): "lost",
    ("incident", 1): "resolved",
}
STATE_MESSAGES = ("update", "setstate", "setstatedynamicentity")
RECORD_MESSAGES = ("create", "delete", "assign", *STATE_MESSAGES)
AMOUNT_ATTRIBUTES = ("actualrevenue", "actualvalue", "estimatedvalue")




def _pairs(value: Any) -> dict[str, Any]:
    """A serialized ``[{key, value}]`` collection as a dict (other shapes: empty)."""
    if not isinstance(value, list):
        return {}
    pairs = {}
    for item in value:
        if isinstance(item, dict):
            key = item.get("key", item.get("Key"))
            if isinstance(key, str):
                pairs[key] = item.get("value", item.get("Value"))
    return pairs


def _attributes(entity: Any) -> dict[str, Any]:
    return _pairs(entity.get("Attributes")) if isinstance(entity, dict) else {}


def _guid(value: Any) -> str | None:
    if isinstance(value, str) and (match := _GUID.match(value)):
        guid = match.group(1).lower()
        return None if guid == _EMPTY_GUID else guid
    return None


def _reference(value: Any) -> tuple[str | None, str | None]:
    """An EntityReference as (id, logical name)."""
    if not isinstance(value, dict):
        return None, None
    name = value.get("LogicalName")
    return _guid(value.get("Id")), name if isinstance(name, str) else None


def _option(value: Any) -> int | None:
    """An OptionSetValue (``{"Value": 1}``) or a bare int."""
    if isinstance(value, dict):
        value = value.get("Value")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _money(value: Any) -> float | None:
    """A Money (``{"Value": 1250.5}``) or a bare number, when finite and in range."""
    if isinstance(value, dict):
        value = value.get("Value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and abs(value) <= 1e15 else None


def _timestamp(value: Any) -> str | None:
    """WCF ``/Date(millis[+-hhmm])/`` (millis are UTC) or ISO 8601 -> RFC 3339 UTC."""
    if not isinstance(value, str):
        return None
    try:
        if match := _WCF_DATE.match(value):
            moment = datetime.fromtimestamp(int(match.group(1)) / 1000, UTC)
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
        if not 2000 <= moment.astimezone(UTC).year <= 2100:
            return None
        return iso_from_millis(moment.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None


def _user(sources: Iterable[Mapping[str, Any]], attribute: str = "ownerid") -> str | None:
    """The first systemuser ``attribute`` reference among ``sources`` (teams own no KPIs)."""
    for attributes in sources:
        user, kind = _reference(attributes.get(attribute))
        if user and kind in (None, "systemuser"):
            return user
    return None


def _images(context: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [_attributes(image) for image in _pairs(context.get(key)).values()]


class Dynamics365Adapter(Adapter):
    """Dataverse webhook steps -> canonical events (one operation per delivery)."""

    vendor: ClassVar[str] = "dynamics365"
    roster_field: ClassVar[str | None] = "dynamics365_id"

    @staticmethod
    def owner_key(owner: str) -> str:
        """GUIDs compare case-insensitively, with or without braces."""
        return owner.strip().strip("{}").lower()

    def configured(self) -> bool:
        return self.settings.dynamics365_webhook_key is not None

    def authenticate(self, delivery: Delivery, now: float) -> None:
        secret = self.settings.dynamics365_webhook_key
        if secret is None:
            return
        given = [key for key in (delivery.query.get(KEY_QUERY),
                                 delivery.headers.get(KEY_HEADER)) if key]
        if not given:
            raise _credentials(
                "no webhook key: register the Dataverse service endpoint with Authentication "
                f"'WebhookKey' (sent as ?{KEY_QUERY}=) or 'HttpHeader' with {KEY_HEADER}: <key>")
        expected = secret.get_secret_value()
        # Evaluate every candidate so the time taken does not tell which one was wrong.
        if not any([same_secret(key, expected) for key in given]):
            raise _credentials(
                "the webhook key does not match CRM_PULSE_DYNAMICS365_WEBHOOK_KEY: set the same "
                "value on the Dataverse service endpoint (Plug-in Registration tool)")

    def parse(self, delivery: Delivery) -> Parsed:
        try:
            context = orjson.loads(delivery.body.removeprefix(b"\xef\xbb\xbf"))
        except orjson.JSONDecodeError:
            raise bad_body("not JSON: Dataverse webhooks post a RemoteExecutionContext") from None
        if not (isinstance(context, dict) and isinstance(context.get("MessageName"), str)
                and isinstance(context.get("PrimaryEntityName"), str)):
            raise bad_body("not a Dataverse RemoteExecutionContext (MessageName and "
                           "PrimaryEntityName missing); register a webhook service endpoint")
        try:
            event = self._map(context)
        except Rejection as exc:
            return Parsed(unmapped=[Unmapped(exc.reason, exc.message, delivery.body)])
        return Parsed(ignored=1) if event is None else Parsed(events=[event])

    def _map(self, context: dict[str, Any]) -> VendorEvent | None:
        """The event of one operation; ``None`` when CRM Pulse does not count it."""
        message = context["MessageName"].lower()
        entity = context["PrimaryEntityName"].lower()
        if context.get("Stage") in _PRE_STAGES:
            return None
        for key in ("InputParameters", "PreEntityImages", "PostEntityImages"):
            if context.get(key) is not None and not isinstance(context[key], list):
                raise Rejection("unmappable", f"{key} must be a list of {{key, value}}")
        inputs = _pairs(context.get("InputParameters"))
        target = _attributes(inputs.get("Target"))
        if milestone := MILESTONE_MESSAGES.get((message, entity)):
            return self._milestone(context, MILESTONES[milestone], inputs, target)
        kind = ENTITIES.get(entity)
        if kind is None or message not in RECORD_MESSAGES:
            return None
        state = (_option(target.get("statecode", inputs.get("State")))
                 if message in STATE_MESSAGES else None)
        if state is not None and (milestone := MILESTONE_STATES.get((entity, state))):
            return self._milestone(context, MILESTONES[milestone], inputs, target)
        return self._record_event(context, message, kind, inputs, target, state)

    def _record_event(self, context: dict[str, Any], message: str, kind: _Kind,
                      inputs: dict[str, Any], target: dict[str, Any],
                      state: int | None) -> VendorEvent:
        """created / deleted / reassigned / completed / updated of a counted table."""
        entity = context["PrimaryEntityName"].lower()
        record_id = self._record_id(context)
        post, pre = _images(context, "PostEntityImages"), _images(context, "PreEntityImages")
        owner, previous = _user([target, *post, *pre]), _user(pre)
        type_ = kind.base_type
        if message == "create":
            action = "created"
        elif message == "delete":
            action = "deleted"
        elif message == "assign":
            action, owner = "reassigned", _user([inputs], "Assignee") or owner
        elif kind.activity and state == ACTIVITY_COMPLETED:
            action = "completed"
        elif message == "update" and (new := _user([target])) and new != previous:
            action, owner = "reassigned", new
        else:
            type_, action = "record_updated", "updated"
        event: dict[str, Any] = {
            "type": type_, "action": action, "record_type": entity, "record_id": record_id,
            # Completing is a state, counted once; other changes are identified by operation.
            "event_id": (f"{self.vendor}:{entity}:{record_id}:completed" if action == "completed"
                         else self._operation_id(context, record_id)),
        }
        if action == "created":
            event["feature"] = kind.feature
        if kind.activity and action in ("created", "completed"):
            event["duration_s"] = self._duration_s([target, *post])
        attributes = {
            "message": context["MessageName"], "statecode": state,
            "statuscode": _option(target.get("statuscode", inputs.get("Status"))),
            "previous_owner": previous if action == "reassigned" else None,
        }
        return self._event(context, event, attributes, owner, [target, *post, *pre])

    def _milestone(self, context: dict[str, Any], milestone: _Milestone,
                   inputs: dict[str, Any], target: dict[str, Any]) -> VendorEvent:
        """won / lost / resolved: one event id per record and milestone, however often sent."""
        close = _attributes(inputs.get(milestone.close_parameter))
        record_id = (_reference(close.get(milestone.reference))[0]
                     or _reference(target.get(milestone.reference))[0])
        if record_id is None and context["PrimaryEntityName"].lower() == milestone.record_type:
            record_id = self._record_id(context)
        if record_id is None:
            raise Rejection("schema:record_id", f"no {milestone.reference} in the "
                              f"{context['MessageName']} context")
        post = _images(context, "PostEntityImages")
        event: dict[str, Any] = {
            "type": milestone.type, "action": "created", "record_type": milestone.record_type,
            "record_id": record_id,
            "event_id": f"{self.vendor}:{milestone.record_type}:{record_id}:"
                        f"{milestone.type.rsplit('_', 1)[1]}",
        }
        sources = [close, target, *post]
        if milestone.type == "opportunity_won":
            event["amount"] = next((amount for attributes in sources for name in AMOUNT_ATTRIBUTES
                                    if (amount := _money(attributes.get(name))) is not None), None)
        attributes = {"message": context["MessageName"],
                      "statuscode": _option(inputs.get("Status", target.get("statuscode")))}
        owner = _user([target, *post, close])
        return self._event(context, event, attributes, owner, sources)

    def _event(self, context: dict[str, Any], event: dict[str, Any],
               attributes: dict[str, Any], owner: str | None,
               sources: list[dict[str, Any]]) -> VendorEvent:
        currency, _ = _reference(next((a["transactioncurrencyid"] for a in sources
                                       if "transactioncurrencyid" in a), None))
        if event.get("amount") is not None:
            # Dataverse sends the currency as a transactioncurrency id, not an ISO code.
            attributes["transactioncurrencyid"] = currency
        event.update(
            occurred_at=self._occurred_at(context, sources), source=self.vendor,
            attributes={k: v for k, v in attributes.items() if v is not None})
        owner = owner or _guid(context.get("InitiatingUserId")) or _guid(context.get("UserId"))
        return VendorEvent(owner, {k: v for k, v in event.items() if v is not None})

    @staticmethod
    def _record_id(context: dict[str, Any]) -> str:
        record_id = _guid(context.get("PrimaryEntityId")) or _guid(
            _pairs(context.get("OutputParameters")).get("id"))
        if record_id is None:
            raise Rejection("schema:record_id", "PrimaryEntityId is missing or not a GUID")
        return record_id

    def _operation_id(self, context: dict[str, Any], record_id: str) -> str:
        """Redeliveries of one operation carry the same OperationId (or RequestId)."""
        operation = _guid(context.get("OperationId")) or _guid(context.get("RequestId"))
        if operation is None:
            raise Rejection("schema:event_id", "no OperationId or RequestId to identify the "
                              "operation; CRM Pulse cannot tell redeliveries apart")
        return f"{self.vendor}:{operation}:{record_id}"

    @staticmethod
    def _occurred_at(context: dict[str, Any], sources: list[dict[str, Any]]) -> str:
        if "OperationCreatedOn" in context:
            candidates = [context["OperationCreatedOn"]]
        else:
            candidates = [a.get(n) for n in ("modifiedon", "createdon") for a in sources]
        for value in candidates:
            if occurred_at := _timestamp(value):
                return occurred_at
        raise Rejection("schema:occurred_at", "OperationCreatedOn is missing or not a date "
                          "between 2000 and 2100 (expected /Date(millis)/ or ISO 8601)")

    @staticmethod
    def _duration_s(sources: list[dict[str, Any]]) -> int | None:
        for attributes in sources:
            minutes = _option(attributes.get("actualdurationminutes"))
            if minutes is not None and 0 <= minutes <= 525_600:
                return minutes * 60
        return None


def _credentials(message: str) -> EdgeError:
    return EdgeError(401, "bad_credentials", message)
