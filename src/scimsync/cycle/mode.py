"""Full or incremental: the store's rows that decide which cycle comes next."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from scimsync.config import Config
from scimsync.fingerprint import fingerprint
from scimsync.state import Store

Mode = Literal["full", "incremental", "user"]
WATERMARK = "directory"  # where the directory was when the last applied cycle read it
LAST_FULL = "last_full_reconciliation"  # when (ISO time)
SETTINGS = "settings"  # settings_fingerprint at the last full reconciliation


def settings_fingerprint(config: Config) -> str:
    """What decides the desired state: scope, mapping and options (secrets masked)."""
    return fingerprint(
        {
            "source": config.source.model_dump(mode="json"),
            "mapping": {k: r.model_dump(mode="json") for k, r in config.rules.items()},
            "options": config.options.model_dump(mode="json"),
            "target": config.target.url,
        }
    )


def choose_mode(store: Store, config: Config, now: datetime) -> Mode:
    """Incremental when a watermark is kept and the last full reconciliation is recent."""
    if store.watermark(WATERMARK) is None:
        return "full"
    # A changed scope, mapping or option changes what every record should be.
    if store.watermark(SETTINGS) != settings_fingerprint(config):
        return "full"
    last_full = store.watermark(LAST_FULL)
    if last_full is None:
        return "full"
    age = now - datetime.fromisoformat(last_full)
    if age >= timedelta(seconds=config.full_sync_interval):
        return "full"
    # Records waiting for a retry are read again by the incremental cycle (views.revisit).
    return "incremental"
