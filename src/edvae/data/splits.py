"""The record every data set is returned in, and the steps all non-synthetic data share.

:class:`DataSplits` holds train/val/test tensors of shape ``(N, *x_shape)``, optional integer
labels, the observation likelihood the data are meant for and, for synthetic data, the
:class:`~edvae.data.ground_truth.GroundTruth` that generated them.

:func:`finish` turns one array of examples (real data or a user's file) into a
:class:`DataSplits`: it checks the values (finite; inside [0, 1] for a Bernoulli likelihood),
splits the rows with a seeded permutation and binarises where asked. Every problem is an
:class:`~edvae.errors.EdvaeError` that names the source (file or data set) and the first
offending row.

Binarisation (``likelihood="bernoulli"`` only):

* ``"none"``: grey levels in [0, 1] are kept as Bernoulli means (the usual "continuous"
  targets; log p(x|z) is then a cross-entropy, not the log-density of a discrete variable).
* ``"static"``: every split is binarised once here, x ~ Bernoulli(grey level), with the seed.
* ``"dynamic"`` (default for Bernoulli data): ``train`` keeps the grey levels and the training
  loop draws a fresh binary batch at every step; ``val`` and
  ``test`` are binarised once here with the seed, so every model is evaluated on the same
  binary examples (resampling an already binary split is a no-op, so a loop that binarises
  every batch stays correct).
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from edvae.data.sampling import binarize_batch, derive_seed
from edvae.errors import EdvaeError

if TYPE_CHECKING:
    from edvae.data.ground_truth import GroundTruth

__all__ = [
    "BINARIZE_MODES",
    "LIKELIHOODS",
    "MAX_LABEL",
    "DataSplits",
    "binarize_batch",
    "derive_seed",
    "finish",
    "split_sizes",
]

LIKELIHOODS = ("gaussian", "bernoulli")
BINARIZE_MODES = ("none", "static", "dynamic")
SPLIT_NAMES = ("train", "val", "test")


#: Labels are class indices in [0, MAX_LABEL) (they index int32-sized tables downstream).
MAX_LABEL = 2**31


@dataclass
class DataSplits:
    """Train/val/test data, in float32 tensors of shape ``(N, *x_shape)``.

    ``likelihood`` is the observation model the values suit (``"gaussian"``: any finite
    value; ``"bernoulli"``: values in [0, 1]); ``binarize`` says what was done (or, for
    ``"dynamic"``, what the training loop must do) to make them binary; see the module
    docstring. ``ground_truth`` is ``None`` for real data. ``info`` records provenance (file,
    scaling applied, options). Data with known generating factors (:mod:`edvae.data.factors`)
    carry their values as float32 ``(N, K)`` tensors ``{split}_factors``, column k named
    ``factor_names[k]``; other data sets leave them ``None``.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    x_shape: tuple[int, ...]
    likelihood: str
    binarize: str = "none"
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None
    ground_truth: GroundTruth | None = None
    info: dict[str, Any] = field(default_factory=dict)
    train_factors: Tensor | None = None
    val_factors: Tensor | None = None
    test_factors: Tensor | None = None
    factor_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.x_shape = tuple(int(d) for d in self.x_shape)
        if self.likelihood not in LIKELIHOODS:
            raise EdvaeError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")
        if self.binarize not in BINARIZE_MODES:
            raise EdvaeError(f"binarize must be one of {', '.join(BINARIZE_MODES)}, got {self.binarize!r}")
        for split in SPLIT_NAMES:
            x = getattr(self, split)
            if tuple(x.shape[1:]) != self.x_shape or x.dtype != torch.float32:
                raise EdvaeError(
                    f"DataSplits.{split} must be a float32 tensor of shape (N, *{self.x_shape}), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            labels = getattr(self, f"{split}_labels")
            if labels is not None and (labels.dtype != torch.int64 or tuple(labels.shape) != (x.shape[0],)):
                raise EdvaeError(
                    f"DataSplits.{split}_labels must be an int64 tensor of shape ({x.shape[0]},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            if labels is not None and labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < MAX_LABEL):
                bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
                raise EdvaeError(
                    f"DataSplits.{split}_labels holds {bad}; labels are class indices, whole numbers from 0 to "
                    f"{MAX_LABEL - 1}"
                )
            factors = getattr(self, f"{split}_factors")
            if factors is not None and (
                factors.dtype != torch.float32 or tuple(factors.shape) != (x.shape[0], len(self.factor_names))
            ):
                raise EdvaeError(
                    f"DataSplits.{split}_factors must be a float32 tensor of shape ({x.shape[0]}, "
                    f"{len(self.factor_names)}) (one column per factor name), got {factors.dtype} "
                    f"{tuple(factors.shape)}"
                )

    @property
    def has_labels(self) -> bool:
        """Whether every split carries labels."""
        return self.train_labels is not None

    @property
    def num_features(self) -> int:
        """Number of values in one example (the product of ``x_shape``)."""
        return math.prod(self.x_shape)

    def describe(self) -> str:
        """One line: name, split sizes, shape, likelihood, labels and ground truth."""
        sizes = "/".join(str(getattr(self, s).shape[0]) for s in SPLIT_NAMES)
        parts = [
            f"{self.name}: {sizes} train/val/test examples of shape {self.x_shape}",
            f"{self.likelihood} likelihood",
        ]
        if self.likelihood == "bernoulli":
            parts.append(f"{self.binarize} binarisation")
        if self.train_labels is not None and self.val_labels is not None and self.test_labels is not None:
            n_classes = int(torch.cat([self.train_labels, self.val_labels, self.test_labels]).unique().numel())
            parts.append(f"{n_classes} label classes")
        if self.ground_truth is not None:
            parts.append(self.ground_truth.describe())
        return ", ".join(parts)


def load_stored(*, seed: int, path: Any) -> DataSplits:
    """Data saved by :func:`edvae.provenance.record_data` (``data.pt`` in a run folder): the splits
    exactly as they were passed to training (``seed`` is not used: nothing is drawn again)."""
    from pathlib import Path

    if path is None or not Path(path).is_file():
        raise EdvaeError(f"stored data {path} is missing; data.name='stored' reads the data.pt a run folder holds")
    fix = "re-run training (the run's data.pt is written by 'edvae train' when data are passed in memory)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, random bytes, or a pickle of objects other than tensors (refused unrun)
        reason = (
            "it holds objects other than tensors" if isinstance(err, pickle.UnpicklingError) else type(err).__name__
        )
        raise EdvaeError(f"stored data {path} is damaged or not edvae data ({reason}); {fix}") from None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), torch.Tensor) for k in SPLIT_NAMES):
        raise EdvaeError(f"stored data {path} is not edvae data (no train/val/test tensors); {fix}")
    try:
        return DataSplits(
            **{
                **saved,
                "x_shape": tuple(saved["x_shape"]),
                "factor_names": tuple(saved.get("factor_names", ())),
                "info": {"source": str(path)},
            }
        )
    except (EdvaeError, RuntimeError, KeyError, TypeError, ValueError) as err:
        reason = str(err) if isinstance(err, EdvaeError) else type(err).__name__
        raise EdvaeError(f"stored data {path} is damaged ({reason}); {fix}") from None


def check_split(split: Any, source: str) -> tuple[float, float, float]:
    """Validate the ``split`` option: three positive fractions summing to 1."""
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or not all(0 < f < 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise EdvaeError(
            f"{source}: split must be three positive train/val/test fractions that sum to 1, "
            f"got {split!r}; use e.g. split=(0.8, 0.1, 0.1)"
        )
    return fractions


def split_sizes(n: int, split: Sequence[float], source: str) -> tuple[int, int, int]:
    """Rows per split: val and test rounded (at least one each), train the rest."""
    n_val = max(1, round(n * split[1]))
    n_test = max(1, round(n * split[2]))
    n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise EdvaeError(
            f"{source}: {n} examples cannot fill train/val/test splits {tuple(split)} "
            "with at least one example each; "
            "provide more rows or change the split option"
        )
    return n_train, n_val, n_test


def first_bad_row(mask: np.ndarray) -> int:
    """Index of the first row of an ``(N, ...)`` boolean mask with any True value."""
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def check_values(
    x: np.ndarray, likelihood: str, source: str, row_name: Any = None, range_fix: str | None = None
) -> None:
    """Refuse NaN/Inf anywhere and, for a Bernoulli likelihood, values outside [0, 1].

    ``row_name(i)`` describes row ``i`` for messages (e.g. a CSV line number); ``range_fix``
    replaces the suggested fix for out-of-range values.
    """
    describe = row_name or (lambda i: f"row {i}")
    finite = np.isfinite(x)
    if not finite.all():
        row = first_bad_row(~finite)
        bad = x[row][~finite[row]].flat[0]
        raise EdvaeError(
            f"{source}: {describe(row)} contains {'NaN' if np.isnan(bad) else 'Inf'}; "
            "remove or impute the non-finite values before loading"
        )
    if likelihood == "bernoulli":
        outside = (x < 0) | (x > 1)
        if outside.any():
            row = first_bad_row(outside)
            value = x[row][outside[row]].flat[0]
            raise EdvaeError(
                f"{source}: {describe(row)} has value {value:g} outside [0, 1], which likelihood='bernoulli' needs; "
                + (range_fix or "scale the data into [0, 1] or pass likelihood='gaussian'")
            )


def check_likelihood(likelihood: Any, binarize: Any, source: str) -> tuple[str, str]:
    """``(likelihood, binarize)`` after checking both against :data:`LIKELIHOODS` and
    :data:`BINARIZE_MODES` (one-line :class:`EdvaeError` naming ``source``); ``binarize=None``
    becomes ``"dynamic"`` for Bernoulli data and ``"none"`` for Gaussian data."""
    if likelihood not in LIKELIHOODS:
        raise EdvaeError(f"{source}: likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    if binarize is None:
        binarize = "dynamic" if likelihood == "bernoulli" else "none"
    if binarize not in BINARIZE_MODES:
        raise EdvaeError(f"{source}: binarize must be one of {', '.join(BINARIZE_MODES)}, got {binarize!r}")
    if likelihood == "gaussian" and binarize != "none":
        raise EdvaeError(
            f"{source}: binarize={binarize!r} only makes sense with likelihood='bernoulli'; "
            "pass binarize='none' or likelihood='bernoulli'"
        )
    return likelihood, binarize


def finish(
    name: str,
    x: np.ndarray,
    labels: np.ndarray | None,
    *,
    seed: int,
    likelihood: str,
    binarize: str,
    split: Sequence[float],
    source: str,
    info: dict[str, Any] | None = None,
    row_name: Any = None,
    range_fix: str | None = None,
) -> DataSplits:
    """Check, split (seeded permutation) and binarise ``x`` of shape ``(N, *x_shape)``.

    ``x`` must already be scaled; ``labels`` are whole numbers or ``None``.
    """
    check_values(x, likelihood, source, row_name, range_fix)
    n = x.shape[0]
    split = check_split(split, source)  # three positive fractions: no empty or missing split
    sizes = split_sizes(n, split, source)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "split")))
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    label_tensor = None if labels is None else torch.from_numpy(np.array(labels, dtype=np.int64))
    parts: dict[str, Any] = {}
    start = 0
    for split_name, size in zip(SPLIT_NAMES, sizes, strict=True):
        idx = order[start : start + size]
        start += size
        part = data[idx]
        if binarize == "static" or (binarize == "dynamic" and split_name != "train"):
            part = binarize_batch(part, derive_seed(seed, "binarize", split_name))
        parts[split_name] = part.contiguous()
        parts[f"{split_name}_labels"] = None if label_tensor is None else label_tensor[idx].contiguous()
    return DataSplits(
        name=name,
        x_shape=tuple(x.shape[1:]),
        likelihood=likelihood,
        binarize=binarize,
        info=dict(info or {}, source=source, split=tuple(split), seed=seed),
        **parts,
    )
