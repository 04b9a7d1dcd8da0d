"""User-facing errors.

Every mistake a user can make (a bad argument, config, file or checkpoint) raises
:class:`EdvaeError` with one sentence that says what was wrong and how to fix it. It is a
``ValueError``, so library users can catch it as one; the command line prints its message on
one line and exits with code 2.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EdvaeError", "TrainingError", "require", "require_int"]


class EdvaeError(ValueError):
    """A problem with the user's input, described in one actionable sentence."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`EdvaeError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise EdvaeError(message)


def require_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an int n >= ``minimum`` (a bool is not), else :class:`EdvaeError`:
    ``"{name} must be an integer >= {minimum}, got {value!r}"``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EdvaeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class TrainingError(RuntimeError):
    """Training could not go on (e.g. a non-finite loss); the last good checkpoint is kept."""
