"""``crm-pulse worker``: create topics, then run the Faust worker with its web server."""

from __future__ import annotations

import logging

import faust

from app.faust_app import create_app
from app.kafka import ensure_topics
from app.settings import Settings

logger = logging.getLogger(__name__)
# Their debug lines print record keys and values (people's data): never below INFO.
PAYLOAD_LOGGERS = ("aiokafka", "kafka", "faust")


def run_worker(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    settings.pulse  # noqa: B018  (fail fast on a bad config, before touching the broker)
    ensure_topics(settings)
    (settings.data_dir / settings.app_id).mkdir(parents=True, exist_ok=True)
    pulse = create_app(settings)
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    worker = faust.Worker(pulse.app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0
