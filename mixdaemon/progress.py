"""The one progress-callback shape of the package.

Every long operation takes `progress(stage, fraction)`: `stage` is a short label for people
("separating input", "converting drums"), `fraction` runs from 0 to 1 over that operation. A caller
that runs an operation as part of a larger one hands it `span(progress, start, width)`, so the
fraction seen by the user keeps growing over the whole job. Only the command line draws bars; the
daemon turns the same calls into OSC notifications.
"""
from __future__ import annotations

from typing import Callable

Progress = Callable[[str, float], None]


def no_progress(stage: str, fraction: float) -> None:
    """The default callback: report nothing."""


def span(progress: Progress, start: float, width: float, stage: str | None = None) -> Progress:
    """A callback that maps an inner operation's 0–1 onto start … start + width of `progress`;
    with `stage`, the inner stage labels are replaced by it."""
    def inner(inner_stage: str, fraction: float) -> None:
        progress(stage if stage is not None else inner_stage, start + width * min(max(fraction, 0.0), 1.0))
    return inner
