"""From a parsed webhook delivery to the records the edge produces.

:func:`route` resolves each vendor owner to a CRM Pulse user through the roster, validates
the events and groups them by user (one ``crm.activities`` record per user, an array when
several); everything that cannot be counted becomes a ``crm.activities.dlq`` record built by
:func:`edge_dead_letter`. Nothing here talks to the broker or HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from agents.ledger import SOURCE as LEDGER_SOURCE
from app.adapters.base import Adapter, Parsed, Unmapped
from schemas.activity import Rejection, element_bytes, validate_event

DeadLetter = tuple[bytes, bytes]


class OwnerDirectory:
    """Vendor user ids -> CRM Pulse user ids, indexed from the roster's vendor columns.

    The index is rebuilt when it is older than ``max_age_s``, and on a miss at most once per
    ``miss_refresh_s``, so a user added to the roster is found on the next delivery.
    """

    def __init__(self, profiles: Callable[[], Iterable[dict[str, Any]]],
                 adapters: Iterable[Adapter], max_age_s: float = 30.0,
                 miss_refresh_s: float = 1.0) -> None:
        self._profiles = profiles
        self._keys = {a.roster_field: a.owner_key for a in adapters if a.roster_field}
        self._max_age_s = max_age_s
        self._miss_refresh_s = miss_refresh_s
        self._index: dict[tuple[str, str], str] = {}
        self._built_at = float("-inf")

    def user_for(self, adapter: Adapter, owner: str) -> str | None:
        assert adapter.roster_field is not None
        now = time.monotonic()
        if now - self._built_at > self._max_age_s:
            self._rebuild(now)
        key = (adapter.roster_field, adapter.owner_key(owner))
        user_id = self._index.get(key)
        if user_id is None and now - self._built_at > self._miss_refresh_s:
            self._rebuild(now)
            user_id = self._index.get(key)
        return user_id

    def _rebuild(self, now: float) -> None:
        index = {}
        for profile in self._profiles():
            for roster_field, owner_key in self._keys.items():
                if value := profile.get(roster_field):
                    index[(roster_field, owner_key(str(value)))] = profile["user_id"]
        self._index, self._built_at = index, now


@dataclass
class Routed:
    """What one delivery produces: activity events by user, and dead letters."""

    by_user: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    """The reason of each dead letter (metrics)."""

    @property
    def accepted(self) -> int:
        return sum(len(events) for events in self.by_user.values())


def route(adapter: Adapter, parsed: Parsed, body: bytes, directory: OwnerDirectory,
          strict_roster: bool, received_at: float) -> Routed:
    """Resolve owners, validate, and dead-letter what cannot be counted (with the reason)."""
    routed = Routed()
    digest = body_digest(body)
    rejects = list(parsed.unmapped)
    for vendor_event in parsed.events:
        event = dict(vendor_event.event)
        try:
            if "correction" in event or event.get("source") == LEDGER_SOURCE:
                raise Rejection("schema:correction", "corrections come from the record "
                                "ledger only; send the CRM's deletes and changes instead")
            event["user_id"] = _user_id(adapter, vendor_event.owner, directory, strict_roster)
            attributes = event.get("attributes")
            previous = event.get("previous_owner") or (
                attributes.get("previous_owner") if isinstance(attributes, dict) else None)
            if previous is not None:  # adapters keep the vendor's id in attributes
                event["previous_owner"] = _previous_owner(adapter, str(previous), directory)
            event.setdefault("source", adapter.vendor)
            validate_event(event)
        except Rejection as exc:
            rejects.append(Unmapped(exc.reason, exc.message,
                                    element_bytes(vendor_event.event, body)))
            continue
        routed.by_user.setdefault(event["user_id"], []).append(event)
    routed.reasons = [reject.reason for reject in rejects]
    routed.dead_letters = [
        edge_dead_letter(adapter.vendor, digest, index, reject.reason, reject.message,
                         reject.original, received_at)
        for index, reject in enumerate(rejects)
    ]
    return routed


def _user_id(adapter: Adapter, owner: str | None, directory: OwnerDirectory,
             strict_roster: bool) -> str:
    if owner is None:
        raise Rejection("unknown_user", f"the {adapter.vendor} event names no owner or user")
    if adapter.roster_field is None:
        return owner
    user_id = directory.user_for(adapter, owner)
    if user_id is not None:
        return user_id
    if strict_roster:
        raise Rejection("unknown_user", f"no roster entry has {adapter.roster_field} = this "
                        f"owner; add it (docs/roster.md) and replay the DLQ record")
    return f"{adapter.vendor}:{owner}"


def _previous_owner(adapter: Adapter, owner: str, directory: OwnerDirectory) -> str:
    """The CRM Pulse user a reassigned record came from (for the ledger; as unknown owners
    are named when the roster is not strict)."""
    if adapter.roster_field is None:
        return owner
    return directory.user_for(adapter, owner) or f"{adapter.vendor}:{owner}"


def body_digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=12).hexdigest()


def edge_dead_letter(vendor: str, digest: str, index: int | None, reason: str, message: str,
                     original: bytes, received_at: float) -> DeadLetter:
    """A ``crm.activities.dlq`` record for a body (``index`` None) or element refused at the
    edge; a redelivered body gets the same ``dlq_id``."""
    dlq_id = f"webhook:{vendor}:{digest}" + ("" if index is None else f":{index}")
    value = {
        "dlq_id": dlq_id,
        "reason": reason,
        "message": message,
        "source": vendor,
        "received_at": datetime.fromtimestamp(received_at, UTC).isoformat(),
        "topic": f"webhook:{vendor}",
        "partition": None,
        "offset": None,
        "index": index,
        "original_b64": base64.b64encode(original).decode(),
    }
    return vendor.encode(), orjson.dumps(value)
