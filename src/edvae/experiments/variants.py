"""The compared model variants, as overrides of a run config.

Every variant uses the same networks, data, optimiser and budget; only the prior and the
objective differ. ``"true"`` as prior means the data set's own generating prior.

* ``vae-std``: traditional VAE, N(0, I) prior, analytic KL.
* ``vae-true``: traditional VAE with the true prior, Monte-Carlo KL.
* ``edvae``: the ED objective with unit weights and the MSS estimator, true prior (equal in
  expectation to the ELBO: a control that isolates estimator effects).
* ``edvae-paper``: the seed paper's variant: I(x;z) estimated by InfoNCE and *maximised*
  (mi_weight < 0) to encourage informative codes, plus the entropy and cross-entropy terms.
* ``beta-vae``: beta-VAE (Higgins et al., 2017), N(0, I) prior, beta = 4 on the analytic KL
  (the objective preset ``"beta-vae"`` of :mod:`edvae.objective_kinds`).
* ``beta-tcvae``: beta-TCVAE (Chen et al., 2018), N(0, I) prior, alpha I + beta TC + gamma
  sum_d KL(q_d || p_d) with alpha = gamma = 1, beta = 6, MSS (the preset ``"beta-tcvae"``).
"""

from __future__ import annotations

import copy
from typing import Any

from edvae.errors import EdvaeError

__all__ = ["VARIANTS", "apply_variant", "merge"]

VARIANTS: dict[str, dict[str, Any]] = {
    "vae-std": {"model": {"prior": "normal"}, "objective": {"kind": "elbo", "kl": "auto"}},
    "vae-true": {"model": {"prior": "true"}, "objective": {"kind": "elbo", "kl": "mc"}},
    "edvae": {
        "model": {"prior": "true"},
        "objective": {"kind": "ed", "mi_estimator": "mss", "entropy_estimator": "mss"},
    },
    "edvae-paper": {
        "model": {"prior": "true"},
        "objective": {"kind": "ed", "mi_estimator": "infonce", "mi_weight": -1.0, "entropy_estimator": "mss"},
    },
    # the presets' weights live in their objective kinds (edvae.objective_kinds)
    "beta-vae": {"model": {"prior": "normal"}, "objective": {"kind": "beta-vae"}},
    "beta-tcvae": {"model": {"prior": "normal"}, "objective": {"kind": "beta-tcvae"}},
}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (nested dicts merged, values replaced)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_variant(base: dict[str, Any], name: str) -> dict[str, Any]:
    """The raw config ``base`` turned into the variant ``name``."""
    if name not in VARIANTS:
        raise EdvaeError(f"unknown model variant '{name}'; choose one of: {', '.join(VARIANTS)}")
    return merge(base, VARIANTS[name])
