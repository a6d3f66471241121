"""Where the next cycle starts: full or incremental, from which watermark and scope.

The rows that decide are read before a cycle (choose_mode) and written after one that was
applied and not held (record_position), so a crash or a hold sees the same changes again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from scimsync import rekey
from scimsync.config import Config
from scimsync.fingerprint import fingerprint
from scimsync.state import Store
from scimsync.state.base import Clock
from scimsync.state.watermarks import IDENTITY

if TYPE_CHECKING:
    from scimsync.cycle.views import View

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


def record_position(store: Store, view: View, config: Config, now: Clock) -> None:
    """Where the directory was when this cycle read it, and which linked users are in the
    user scope: the next change detection starts from both. A full reconciliation also
    records when it ran, with what settings and identity attribute."""
    if view.scope_entered:
        store.set_in_scope(view.scope_entered, True)
    if view.scope_left:
        store.set_in_scope(view.scope_left, False)
    if view.watermark is None:
        return
    store.set_watermark(WATERMARK, view.watermark)
    if view.mode == "full":
        store.set_watermark(LAST_FULL, now().isoformat())
        store.set_watermark(SETTINGS, settings_fingerprint(config))
        store.set_watermark(IDENTITY, rekey.configured(config))
