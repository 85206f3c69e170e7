"""What every CRM webhook adapter provides, and the helpers they share.

An adapter turns one webhook delivery, exactly as the CRM sent it, into canonical activity
events. It does not know the roster, the broker or HTTP: the edge (``app/web.py``) reads the
body, asks the adapter to :meth:`~Adapter.authenticate` and :meth:`~Adapter.parse` it, maps
each :class:`VendorEvent`'s ``owner`` to a CRM Pulse user through the roster column
:attr:`Adapter.roster_field`, validates the events, produces them (and a DLQ record for each
:class:`Unmapped` element) and answers with :meth:`Adapter.acknowledge`.

Redeliveries must map to the same ``event_id`` (built from the vendor's own ids), so the
ingest's dedup counts them once.
"""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from app.edge import EdgeError
from app.settings import Settings


@dataclass(frozen=True)
class Delivery:
    """One webhook request as the CRM sent it."""

    method: str
    url: str
    """The URL as the CRM called it (``scheme://host[:port]/path?query``), for signatures."""
    headers: Mapping[str, str]
    """Case-insensitive (aiohttp's ``CIMultiDictProxy``; tests use ``multidict.CIMultiDict``)."""
    query: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class VendorEvent:
    """A canonical event whose user is still the vendor's: ``owner`` is the vendor user id."""

    owner: str | None
    """Who did it, in the vendor's ids (``None``: the payload names nobody -> DLQ)."""
    event: dict[str, Any]
    """Canonical fields except ``user_id``: ``event_id``, ``occurred_at``, ``type``,
    ``action``, ``source``, and where known ``feature``, ``record_type``, ``record_id``,
    ``amount``, ``currency``, ``duration_s``, ``attributes``."""


@dataclass(frozen=True)
class Unmapped:
    """An authenticated element that cannot become an event; it goes to the DLQ."""

    reason: str
    """Machine-readable, matching the DLQ schema: ``schema:<field>`` or ``unmappable``."""
    message: str
    original: bytes


@dataclass
class Parsed:
    events: list[VendorEvent] = field(default_factory=list)
    unmapped: list[Unmapped] = field(default_factory=list)
    ignored: int = 0
    """Valid vendor events that CRM Pulse does not count (documented per vendor)."""


@dataclass(frozen=True)
class Counts:
    """What became of a delivery's events: produced, dead-lettered, not counted."""

    accepted: int
    dead_lettered: int
    ignored: int


@dataclass(frozen=True)
class Acknowledgement:
    """The HTTP answer the CRM expects once every event is on the broker."""

    status: int
    body: bytes
    content_type: str


class Adapter(ABC):
    """One CRM vendor's webhook format, authentication and answer."""

    vendor: ClassVar[str]
    """The URL segment (``/webhooks/<vendor>``) and the events' ``source``."""
    roster_field: ClassVar[str | None]
    """The roster ``Profile`` field holding this vendor's user ids (``None``: owners are
    already CRM Pulse user ids)."""
    content_types: ClassVar[tuple[str, ...]] = ("application/json",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def owner_key(owner: str) -> str:
        """How this vendor's user ids compare; roster values go through it too."""
        return owner

    @abstractmethod
    def configured(self) -> bool:
        """Whether credentials are set; unconfigured vendors refuse every delivery."""

    @abstractmethod
    def authenticate(self, delivery: Delivery, now: float) -> None:
        """Raise ``EdgeError(401, "bad_signature" | "bad_credentials", ...)`` unless the
        delivery provably comes from the CRM."""

    @abstractmethod
    def parse(self, delivery: Delivery) -> Parsed:
        """Map the body; raise ``EdgeError(400, reason, message)`` when it is not this
        vendor's format at all (the edge then dead-letters the whole body)."""

    def acknowledge(self, delivery: Delivery, counts: Counts) -> Acknowledgement:
        """Called once every event and DLQ record is on the broker."""
        return Acknowledgement(202, orjson.dumps(asdict(counts)), "application/json")


def iso_from_millis(millis: int | float) -> str:
    """Epoch milliseconds -> RFC 3339 in UTC (``2026-11-23T09:30:00.123Z``)."""
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def same_secret(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison of two secrets or signatures."""
    try:
        given_bytes = given.encode() if isinstance(given, str) else given
    except UnicodeEncodeError:  # a header with undecodable bytes: never a secret of ours
        return False
    expected_bytes = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(given_bytes, expected_bytes)



def hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def bad_body(message: str) -> EdgeError:
    """The error for a body that is not the vendor's format."""
    return EdgeError(400, "unmappable", message)
