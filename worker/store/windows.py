"""What the window keys say (``P:wu`` and ``P:wcl``, worker/store/keys.py): one pure function, read
by the worker's prechecks (worker/delivery/attempt.py) and the look-ups (worker/lookup.py)."""

from __future__ import annotations

__all__ = ["window_closed"]


def _epoch(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def window_closed(until: str | None, closed_at: str | None, now: float, recheck: float) -> bool | None:
    """Whether the PSID's window is known to be closed (skip the call), open, or unknown (None).

    ``until`` is when the window its last interaction opened closes (``wu``), ``closed_at`` when
    Graph last said it is closed (``wcl``, kept WINDOW_RECHECK_SECONDS). Open while ``until`` is
    ahead (an interaction after Graph's answer reopens it); closed while Graph's answer is
    remembered, or for ``recheck`` seconds after ``until``; after that nothing blocks: the next
    send asks Graph, and its answer teaches again."""
    end = _epoch(until)
    if end is not None and end > now:
        return False
    if _epoch(closed_at) is not None:
        return True
    if end is not None:
        return True if now < end + recheck else None
    return None
