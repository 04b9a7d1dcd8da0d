"""The compared model variants, as overrides of a run config.

Every variant uses the same networks, data, optimiser and budget; only the prior and the
objective differ. ``"true"`` as prior means the data set's own generating prior.

* ``vae-std``: traditional VAE, N(0, I) prior, analytic KL.
* ``vae-true``: traditional VAE with the true prior, Monte-Carlo KL.
* ``edvae``: the ED objective with unit weights and the MSS estimator, true prior (equal in
  expectation to the ELBO: a control that isolates estimator effects).
* ``vae-true-learned``: ``vae-true`` with the Gaussian decoder's scale learned by gradient
  descent instead of calibrated (``model.decoder_scale = "learned"``): what the calibration buys.
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
from edvae.registry import Registry

__all__ = [
    "READINGS",
    "READING_CRITICS",
    "READING_GRID",
    "VARIANTS",
    "apply_variant",
    "merge",
    "reading_name",
    "reading_variant",
]

#: Every model variant by name: its overrides of a run config (the readings are added below).
VARIANTS: Registry[dict[str, Any]] = Registry("model variant")
VARIANTS.add("vae-std", {"model": {"prior": "normal"}, "objective": {"kind": "elbo", "kl": "auto"}})
VARIANTS.add("vae-true", {"model": {"prior": "true"}, "objective": {"kind": "elbo", "kl": "mc"}})
VARIANTS.add(
    "vae-true-learned",
    {"model": {"prior": "true", "decoder_scale": "learned"}, "objective": {"kind": "elbo", "kl": "mc"}},
)
VARIANTS.add(
    "edvae",
    {"model": {"prior": "true"}, "objective": {"kind": "ed", "mi_estimator": "mss", "entropy_estimator": "mss"}},
)
VARIANTS.add(
    "edvae-paper",
    {
        "model": {"prior": "true"},
        "objective": {"kind": "ed", "mi_estimator": "infonce", "mi_weight": -1.0, "entropy_estimator": "mss"},
    },
)
# the presets' weights live in their objective kinds (edvae.objective_kinds)
VARIANTS.add("beta-vae", {"model": {"prior": "normal"}, "objective": {"kind": "beta-vae"}})
VARIANTS.add("beta-tcvae", {"model": {"prior": "normal"}, "objective": {"kind": "beta-tcvae"}})


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
    return merge(base, VARIANTS.get(name))


# ------------------------------------------------------------------------------------------
# The readings of the paper's objective (issue 17): the seed paper states neither the sign of
# its MI term nor its weights nor its critic, so each plausible choice is a named variant.

#: Short names of the InfoNCE critics in reading names (:mod:`edvae.critics`).
READING_CRITICS: dict[str, str] = {"enc": "encoder", "bil": "bilinear", "mlp": "mlp", "mom": "momentum"}

#: The readings studied, as (MI weight w_mi, critic, w = entropy and cross-entropy weight).
#: w_mi < 0 maximises the InfoNCE estimate (the seed's "encourage informative codes"), w_mi > 0
#: penalises it (the sign it has in the ELBO); w weights -H[q(z)] + H[q(z), p(z)], i.e. the
#: marginal KL(q(z) || p(z)). A sensible subset of the product, not all of it: the sign and size
#: of w_mi with the encoder as critic; every critic at the paper's reading (w_mi = -1); the
#: momentum critic also at a small weight; and w at 0.5 and 2 with a small maximised MI term.
READING_GRID: tuple[tuple[float, str, float], ...] = (
    (-1.0, "enc", 1.0),
    (-0.1, "enc", 1.0),
    (0.1, "enc", 1.0),
    (1.0, "enc", 1.0),
    (-1.0, "bil", 1.0),
    (-1.0, "mlp", 1.0),
    (-1.0, "mom", 1.0),
    (-0.1, "mom", 1.0),
    (-0.1, "enc", 0.5),
    (-0.1, "enc", 2.0),
)


def reading_name(mi_weight: float, critic: str, weight: float) -> str:
    """``ed-<max|pen><|w_mi|>-<critic>-w<w>``, e.g. ``ed-max0.1-enc-w1``: the MI term maximised
    (w_mi < 0) or penalised (w_mi > 0) with weight |w_mi|, the critic's short name
    (:data:`READING_CRITICS`) and the entropy and cross-entropy weight w."""
    if critic not in READING_CRITICS:
        raise EdvaeError(f"reading critic {critic!r} is unknown; use one of {', '.join(READING_CRITICS)}")
    if mi_weight == 0:
        raise EdvaeError("a reading's MI weight is maximised (< 0) or penalised (> 0), not 0")
    sign = "max" if mi_weight < 0 else "pen"
    return f"ed-{sign}{abs(mi_weight):g}-{critic}-w{weight:g}"


def reading_variant(mi_weight: float, critic: str, weight: float) -> dict[str, Any]:
    r"""The config overrides of one reading: the ED objective with the true prior,

        L = -R + w_mi I_NCE - w H_hat[q(z)] + w H_hat[q(z), p(z)],

    I_NCE the InfoNCE estimate with the critic (``enc`` <= log B, ``bil`` and ``mlp`` learned,
    <= log B, ``mom`` a momentum encoder (m = 0.99) with a queue of K = 4096 keys and
    tau = 0.1, as in CR-VAE, <= log(K + 1)), H_hat the MSS estimate of the aggregate posterior's
    entropy."""
    reading_name(mi_weight, critic, weight)  # checks the values
    objective = {
        "kind": "ed",
        "mi_estimator": "infonce",
        "entropy_estimator": "mss",
        "mi_weight": mi_weight,
        "entropy_weight": weight,
        "cross_entropy_weight": weight,
        "critic": READING_CRITICS[critic],
    }
    return {"model": {"prior": "true"}, "objective": objective}


#: Every reading by name (also in :data:`VARIANTS`).
READINGS: dict[str, dict[str, Any]] = {reading_name(*r): reading_variant(*r) for r in READING_GRID}
for _name, _overrides in READINGS.items():
    VARIANTS.add(_name, _overrides)
