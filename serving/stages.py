"""Where a request's time goes: stage timers that cost one context-variable read when off (the default) and two
perf_counter calls a stage when a benchmark switches them on (`facegrid bench search`)."""

from __future__ import annotations

import time
from contextvars import ContextVar

_CLOCK: ContextVar[dict[str, float] | None] = ContextVar("stage_clock", default=None)
# The last marks of a request; the key holding the time of the previous mark.
LAST = "_last"


class Recorder:
    """Switched on by a benchmark in the server's process; keeps every finished request's stages."""

    def __init__(self) -> None:
        self.enabled = False
        self.requests: list[dict[str, float]] = []


RECORDER = Recorder()


def begin() -> None:
    if RECORDER.enabled:
        _CLOCK.set({LAST: time.perf_counter()})


def mark(stage: str) -> None:
    """The time since the previous mark belongs to `stage`."""
    clock = _CLOCK.get()
    if clock is not None:
        now = time.perf_counter()
        clock[stage] = clock.get(stage, 0.0) + now - clock[LAST]
        clock[LAST] = now


def split(stage: str, seconds: float, into: str) -> None:
    """Move `seconds` of what was marked as `stage` to `into` (a part measured elsewhere, e.g. inside a fan-out)."""
    clock = _CLOCK.get()
    if clock is not None and seconds > 0:
        clock[stage] = clock.get(stage, 0.0) - seconds
        clock[into] = clock.get(into, 0.0) + seconds


def finish(stage: str) -> None:
    clock = _CLOCK.get()
    if clock is not None:
        mark(stage)
        del clock[LAST]
        RECORDER.requests.append(clock)
        _CLOCK.set(None)
