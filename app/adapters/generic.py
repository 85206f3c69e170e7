"""The generic webhook: canonical events (one object or a JSON array), HMAC-signed.

The sender writes CRM Pulse's own format, so a batch with any invalid event is refused as a
whole (400 naming the first failing field) instead of being partly dead-lettered: the sender
can fix and resend it. Owners are CRM Pulse user ids already.
"""

from __future__ import annotations

from typing import ClassVar

from app.adapters.base import Adapter, Delivery, Parsed, VendorEvent
from app.edge import EdgeError, verify_generic_signature
from schemas.activity import Rejection, decode_events, validate_event


class GenericAdapter(Adapter):
    vendor = "generic"
    roster_field: ClassVar[str | None] = None
    content_types = ("application/json", "text/json")

    def configured(self) -> bool:
        return self.settings.generic_webhook_secret is not None

    def authenticate(self, delivery: Delivery, now: float) -> None:
        verify_generic_signature(delivery.headers, delivery.body,
                                 self.settings.generic_webhook_secret, now)

    def parse(self, delivery: Delivery) -> Parsed:
        try:
            events = [validate_event(e) for e in decode_events(delivery.body)]
        except Rejection as exc:
            raise EdgeError(400, exc.reason, exc.message) from None
        return Parsed(events=[VendorEvent(e.pop("user_id"), e) for e in events])
