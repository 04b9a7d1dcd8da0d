"""Whether a training run converged, read from its validation history.

The stated criterion (the same for every run of every study): a run **converged** when its
best validation ELBO over the last tenth of its epochs exceeds its best validation ELBO before
them by less than ``tol`` nats (default 0.01):

    improvement = max_{e in last tenth} ELBO_val(e) - max_{e before} ELBO_val(e) < tol.

A run still climbing when its budget ends fails it, whatever its learning-rate schedule. The
validation ELBO is the one the trainer logs after every epoch (``elbo`` for the ELBO objective,
``elbo_mc``, the batch's Monte Carlo ELBO, for the ED objective, whatever its weights).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CONVERGENCE_TOL", "convergence", "validation_elbos"]

#: Nats of validation ELBO a run may still gain over the last tenth of its budget and count as converged.
CONVERGENCE_TOL = 0.01

#: Names the trainer logs the validation ELBO under, by objective.
_ELBO_KEYS = ("elbo", "elbo_mc")


def validation_elbos(metrics_path: str | Path) -> list[float]:
    """The validation ELBO after each epoch, in order, from a run's ``metrics.jsonl`` (a later
    record of the same epoch, written after a resume, replaces an earlier one)."""
    by_epoch: dict[int, float] = {}
    for line in Path(metrics_path).read_text().splitlines():
        record: dict[str, Any] = json.loads(line)
        if record.get("split") != "val":
            continue
        key = next((k for k in _ELBO_KEYS if k in record), None)
        if key is not None:
            by_epoch[int(record["epoch"])] = float(record[key])
    return [by_epoch[e] for e in sorted(by_epoch)]


def convergence(elbos: Sequence[float], tol: float = CONVERGENCE_TOL) -> dict[str, Any]:
    """``{"converged", "improvement", "window"}`` for a validation-ELBO history (module docstring).

    ``window`` is the number of final epochs compared (max(1, round(n / 10))); with fewer than
    two epochs nothing can be compared and the run does not count as converged.
    """
    n = len(elbos)
    if n < 2:
        return {"converged": False, "improvement": math.nan, "window": 0}
    window = max(1, round(n / 10))
    improvement = max(elbos[n - window :]) - max(elbos[: n - window])
    return {"converged": bool(improvement < tol), "improvement": float(improvement), "window": window}
