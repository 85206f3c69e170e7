"""CRM webhook adapters, one module per vendor; :func:`adapters` builds them all."""

from __future__ import annotations

from app.adapters.base import Adapter
from app.adapters.dynamics365 import Dynamics365Adapter
from app.adapters.generic import GenericAdapter
from app.adapters.hubspot import HubSpotAdapter
from app.adapters.pipedrive import PipedriveAdapter
from app.adapters.salesforce import SalesforceAdapter
from app.settings import Settings

ADAPTER_CLASSES: tuple[type[Adapter], ...] = (
    GenericAdapter, Dynamics365Adapter, HubSpotAdapter, PipedriveAdapter, SalesforceAdapter)


def adapters(settings: Settings) -> dict[str, Adapter]:
    """Every adapter, keyed by its URL segment (``/webhooks/<vendor>``)."""
    return {cls.vendor: cls(settings) for cls in ADAPTER_CLASSES}
