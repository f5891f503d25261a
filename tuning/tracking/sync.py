"""A sweep's spooled MLflow logging sent to the server: at the end of each phase of a sweep (``settle``)
and later, on its own (``sync_sweep``, ``q3r-tune sync``). Imports MLflow, never Ray."""
from __future__ import annotations

from typing import Callable, Optional

from tuning.tracking.mirror import open_spool
from tuning.tracking.store import STORAGE, TrackingError, check_tracking, default_uri, find_sweep
from tuning.trial.files import spool_folder

TRACKING_WAIT = 60.0       # seconds a sweep waits at its end for a tracking server that does not answer


class TrackingDown(TrackingError):
    """The tracking server did not answer in time: the sweep's logging is kept in its spool."""


def settle(name: str, uri: str, folder: str, wait: float, log: Callable[[str], None] = print) -> None:
    """Wait up to ``wait`` seconds for the sweep's spooled logging to reach MLflow; ``TrackingDown``
    (the spool kept on disk, and what to run later) if the server does not take it all by then."""
    spool = open_spool(spool_folder(folder), uri, log)
    left = spool.drain(wait)
    if left:
        where = "" if uri == default_uri() else f" --tracking-uri {uri}"
        raise TrackingDown(f"sweep {name}: the MLflow tracking server {uri} did not take the sweep's logging within "
                           f"{wait:g} s ({spool.last_error}); its {left} operation(s) are kept in {spool.folder}; when "
                           f"the server answers, `q3r-tune sync {name}{where}` sends them and `q3r-tune resume "
                           f"{name}{where}` also finishes the sweep")
    if spool.appended:
        log(f"MLflow logging: {spool.appended} operation(s) spooled and delivered; the slowest callback on Ray's "
            f"loop took {spool.slowest_append * 1000:.1f} ms")


def sync_sweep(name: str, *, tracking_uri: Optional[str] = None, wait: float = TRACKING_WAIT,
               log: Callable[[str], None] = print) -> int:
    """Send what the latest sweep of experiment ``name`` left in its spool; the number of operations sent."""
    uri = tracking_uri or default_uri()
    parent_run = find_sweep(check_tracking(uri, looking_for=f"sweep named {name!r}"), name)
    folder = parent_run.data.tags.get(STORAGE, "")
    if not spool_folder(folder).is_dir():
        log(f"sweep {name}: no tracking spool in {folder!r}: nothing to send")
        return 0
    spool = open_spool(spool_folder(folder), uri, log)
    settle(name, uri, folder, wait, log)
    sent = spool.delivered - spool.delivered_at_open
    log(f"sweep {name}: {sent} spooled operation(s) sent to {uri}; none left in {spool.folder}")
    return sent
