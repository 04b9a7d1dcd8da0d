"""User-facing errors.

Every mistake a user can make (a bad argument, config, file or checkpoint) raises
:class:`EdvaeError` with one sentence that says what was wrong and how to fix it. It is a
``ValueError``, so library users can catch it as one; the command line prints its message on
one line and exits with code 2.
"""

from __future__ import annotations

__all__ = ["EdvaeError", "TrainingError", "require"]


class EdvaeError(ValueError):
    """A problem with the user's input, described in one actionable sentence."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`EdvaeError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise EdvaeError(message)


class TrainingError(RuntimeError):
    """Training could not go on (e.g. a non-finite loss); the last good checkpoint is kept."""
