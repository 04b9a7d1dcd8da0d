"""Argument checks shared by the estimators: shapes, dtypes, finiteness, row offsets and
dataset sizes, each refused with one line saying how to fix it; and the dtype rules (the
accumulation dtype, the result dtype of mixed inputs)."""

from __future__ import annotations

import torch
from torch import Tensor

from edvae.errors import EdvaeError

ACC_DTYPE = torch.float64  # accumulation dtype of every log-density matrix


def _check_matrix(name: str, tensor: object) -> None:
    if not isinstance(tensor, Tensor) or tensor.dim() != 2 or 0 in tensor.shape:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise EdvaeError(
            f"{name} must be a non-empty 2-D tensor of shape (batch, latent_dim), got {shape}; "
            "flatten the latent code to (batch, latent_dim)."
        )
    check_float(name, tensor)


def check_float(name: str, tensor: Tensor) -> None:
    """Integer, boolean and complex tensors have no log-density here (a dtype check, no sync)."""
    if not tensor.is_floating_point():
        raise EdvaeError(
            f"{name} has dtype {tensor.dtype} but must be a floating-point tensor; convert it "
            f"with {name}.float() (or .double())."
        )


def check_finite(validate: bool, **tensors: Tensor) -> None:
    """Raise if any tensor holds NaN or Inf: one host synchronisation for all of them."""
    if not validate:
        return
    flags = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if bool(flags.all()):
        return
    bad = [name for name, ok in zip(tensors, flags.tolist(), strict=True) if not ok]
    raise EdvaeError(
        f"{' and '.join(bad)} {'contains' if len(bad) == 1 else 'contain'} NaN or Inf "
        "values; check the encoder for diverging "
        "outputs (lower the learning rate or clamp the log-variance)."
    )


def check_posterior(mu: Tensor, logvar: Tensor) -> None:
    """``mu`` and ``logvar`` are (N, D) floating-point matrices of the same shape."""
    _check_matrix("mu", mu)
    _check_matrix("logvar", logvar)
    if mu.shape != logvar.shape:
        raise EdvaeError(
            f"logvar has shape {tuple(logvar.shape)} but mu has shape {tuple(mu.shape)}; "
            "pass the mean and log-variance of the same encoder output."
        )


def check_inputs(z: Tensor, mu: Tensor, logvar: Tensor, validate: bool) -> None:
    """``z`` (R, D) and the posterior (N, D) share D; with ``validate`` all are finite."""
    _check_matrix("z", z)
    check_posterior(mu, logvar)
    if z.shape[1] != mu.shape[1]:
        raise EdvaeError(
            f"z has latent dimension {z.shape[1]} but mu has {mu.shape[1]}; "
            "pass samples and posterior parameters of the same latent space."
        )
    check_finite(validate, z=z, mu=mu, logvar=logvar)


def check_rows(rows: int, columns: int, row_offset: int) -> None:
    """Row i of z belongs to column i + ``row_offset``: 0 <= row_offset <= columns - rows."""
    if not (isinstance(row_offset, int) and 0 <= row_offset <= columns - rows):
        raise EdvaeError(
            f"row_offset={row_offset!r} does not fit {rows} rows of z into the {columns} columns "
            f"of mu; z[i] must be drawn from column i + row_offset, so use "
            f"0 <= row_offset <= {columns - rows}."
        )


def check_dataset_size_type(dataset_size: object) -> None:
    """``dataset_size`` N is an int >= 1 (not a bool)."""
    if not isinstance(dataset_size, int) or isinstance(dataset_size, bool) or dataset_size < 1:
        raise EdvaeError(
            f"dataset_size={dataset_size!r} must be a positive integer, the number N of "
            "training examples; pass dataset_size=len(train_set)."
        )


def check_dataset_size(dataset_size: int | None, batch_size: int, method: str) -> int:
    """N for a ``method`` that needs it (given, an int, N >= the batch size B)."""
    if dataset_size is None:
        raise EdvaeError(
            f"method={method!r} needs dataset_size, the number N of training examples; pass "
            "dataset_size=len(train_set) (it is never guessed from the batch size)."
        )
    check_dataset_size_type(dataset_size)
    if dataset_size < batch_size:
        raise EdvaeError(
            f"dataset_size={dataset_size!r} is smaller than the batch size {batch_size}; pass "
            "the number of training examples N >= batch size."
        )
    return dataset_size


def own_rows(mu: Tensor, logvar: Tensor, rows: int, row_offset: int) -> tuple[Tensor, Tensor]:
    """Posterior parameters of the rows: columns row_offset .. row_offset + rows - 1."""
    check_rows(rows, mu.shape[0], row_offset)
    if row_offset == 0 and rows == mu.shape[0]:  # every column: no slice (and no slice in backward)
        return mu, logvar
    return mu[row_offset : row_offset + rows], logvar[row_offset : row_offset + rows]


def result_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype an estimate is returned in: the promotion of the inputs' dtypes."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype
