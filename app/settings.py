"""The one typed settings object: service settings from env vars, the KPI model from YAML.

Every process (worker, web, CLI, simulator) builds a :class:`Settings` once and passes it
down; nothing else reads the environment.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.config import PulseConfig, load_config

DEFAULT_CONFIG = Path(__file__).parent / "defaults" / "pulse.yaml"


class Topics:
    """Topic names, with the configured prefix applied."""

    def __init__(self, prefix: str) -> None:
        self.activities = f"{prefix}crm.activities"
        self.dlq = f"{prefix}crm.activities.dlq"
        self.roster = f"{prefix}crm.roster"
        self.achievements = f"{prefix}crm.achievements"
        self.alerts = f"{prefix}crm.kpi.alerts"
        self.groups = f"{prefix}crm.kpi.groups"  # internal: team/office buckets by group
        self.records = f"{prefix}crm.records"  # internal: record events by record (ledger)

    def all(self) -> list[str]:
        return [self.activities, self.dlq, self.roster, self.achievements, self.alerts,
                self.groups, self.records]


class Settings(BaseSettings):
    """Service settings. Env vars use the ``CRM_PULSE_`` prefix (``CRM_PULSE_KAFKA``, ...)."""

    model_config = SettingsConfigDict(env_prefix="CRM_PULSE_", frozen=True, extra="ignore")

    kafka: str = Field("kafka://127.0.0.1:9092", description="Broker URL(s), faust style.")
    redis: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (serving layer).")
    web_host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    web_port: int = Field(6066, description="HTTP port of this worker.")
    config: Path = Field(DEFAULT_CONFIG, description="KPI model YAML (see docs/config.md).")
    topic_prefix: str = Field("", description="Prefix for every topic name, e.g. 'acme.'.")
    app_id: str = Field("crm-pulse", description="Faust app id = consumer group + table prefix.")
    partitions: int = Field(8, ge=1, description="Partitions for topics created on start.")
    replication: int = Field(1, ge=1, description="Replication factor for created topics.")
    data_dir: Path = Field(Path(".crm-pulse"), description="Worker data directory (one per "
                           "worker process).")
    state_store: Literal["memory", "disk"] = Field(
        "memory", description="Where the KPI and ledger tables keep their values: 'memory', "
        "or 'disk' (RocksDB files in data_dir, for large organisations: bounded memory).")
    state_cache_mb: int = Field(
        32, ge=8, description="state_store disk: RocksDB block cache per table, in MB.")
    max_body_bytes: int = Field(
        524_288, description="Largest accepted webhook body (below the 1 MB record limit).")
    max_event_bytes: int = Field(65_536, description="Largest accepted single event.")
    batch_max: int = Field(10_000, description="Most records taken per processing batch.")
    batch_within_s: float = Field(0.02, description="Longest wait to fill a batch (latency).")
    session_timeout_s: float = Field(
        20.0, ge=3, description="Consumer session timeout: how soon a dead worker's partitions "
        "move (and how long a restarted worker may wait to rejoin).")
    close_interval_s: float = Field(
        30.0, gt=0, description="How often closed periods are checked for below-target alerts.")
    send_timeout_s: float = Field(10.0, description="Webhook wait for broker acknowledgement.")
    generic_webhook_secret: SecretStr | None = Field(
        None, description="HMAC secret for /webhooks/generic (unset: unsigned, local dev)."
    )
    webhooks_unsigned: bool = Field(
        False, description="Accept vendor webhooks whose credentials are unset (local dev only).")
    dynamics365_webhook_key: SecretStr | None = Field(
        None, description="Dataverse service endpoint key: the WebhookKey (sent as ?code=) or "
        "the value of an HttpHeader registration's X-CRM-Pulse-Key header.")
    salesforce_organization_id: str | None = Field(
        None, description="Only Outbound Messages from this org id (15 or 18 chars) are taken.")
    salesforce_secret: SecretStr | None = Field(
        None, description="Salesforce shared secret: ?token= on Outbound Message URLs; the "
        "X-CRM-Pulse-Signature HMAC key for Change Data Capture / Platform Event JSON relays.")
    hubspot_client_secret: SecretStr | None = Field(
        None, description="HubSpot app client secret (X-HubSpot-Signature v3, and v1/v2).")
    hubspot_legacy_signatures: bool = Field(
        False, description="Also accept HubSpot v1/v2 signatures (older apps).")
    pipedrive_username: str | None = Field(
        None, description="HTTP basic auth user set on the Pipedrive webhook.")
    pipedrive_password: SecretStr | None = Field(
        None, description="HTTP basic auth password set on the Pipedrive webhook.")
    api_token: SecretStr | None = Field(
        None, description="Bearer token for the read API (all of it, personal figures "
        "included). Unset, with no screen keys either: the read API and /wall are open.")
    screen_keys: SecretStr | None = Field(
        None, description="Comma-separated keys, one per TV screen: /wall?key=<key> and the "
        "team/office/leaderboard/feed endpoints the wall reads (never personal figures).")
    webhook_rate_per_s: float = Field(
        50.0, gt=0, description="Sustained webhook deliveries per second per vendor and "
        "client address (429 above).")
    webhook_burst: int = Field(200, ge=1, description="Webhook deliveries allowed in a burst.")
    pseudonym_key: SecretStr | None = Field(
        None, description="Key of the pseudonyms on walls and in metrics (unset: derived from "
        "the app id, which anyone knowing it can reverse by trying user ids; set it).")
    log_level: str = Field("info", description="Worker log level.")

    @field_validator("generic_webhook_secret", "dynamics365_webhook_key", "salesforce_secret",
                     "hubspot_client_secret", "pipedrive_password", "pseudonym_key",
                     "api_token", "screen_keys")
    @classmethod
    def _no_empty_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and not secret.get_secret_value():
            raise ValueError("an empty secret would let anyone sign; unset it instead")
        return secret

    def to_env(self) -> dict[str, str]:
        """These settings as ``CRM_PULSE_*`` variables, for child processes."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"CRM_PULSE_{name.upper()}"] = str(value)
        return env

    @property
    def pseudonym_secret(self) -> bytes:
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        return f"crm-pulse:{self.app_id}".encode()

    @property
    def web_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    @cached_property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @cached_property
    def pulse(self) -> PulseConfig:
        """The KPI model, loaded and validated from :attr:`config`."""
        return load_config(self.config)
