"""Data: synthetic data with a known ground truth, built-in real data, and the user's files.

    >>> from edvae.data import load_dataset
    >>> data = load_dataset("gaussian", seed=0)            # doctest: +SKIP
    >>> data.train.shape, data.ground_truth.latent_dim      # doctest: +SKIP
    (torch.Size([10000, 16]), 2)

Data sets (:func:`dataset_names`):

* ``gaussian``, ``complex``: z ~ p_true(z) (standard normal; ``mog_ring`` or any other prior
  by name), x = g(z) + N(0, s^2 I) with g a fixed seeded injective MLP; the
  :class:`GroundTruth` gives the exact log p_true(x) (:mod:`edvae.data.synthetic`).
* ``digits``, ``mnist5k``: bundled images, nothing is downloaded (:mod:`edvae.data.real`).
* ``file``: .npy, .npz, .csv, .tsv and MNIST idx files (:mod:`edvae.data.files`).

Everything is returned as :class:`DataSplits`; see :mod:`edvae.data.splits` for the
conventions of the likelihood and binarisation.
"""

from edvae.data.ground_truth import GroundTruth
from edvae.data.registry import dataset_names, dataset_options, load_dataset
from edvae.data.sampling import binarize_batch, binarize_global_batch
from edvae.data.splits import DataSplits
from edvae.data.synthetic import SyntheticGenerator

__all__ = [
    "DataSplits",
    "GroundTruth",
    "SyntheticGenerator",
    "binarize_batch",
    "binarize_global_batch",
    "dataset_names",
    "dataset_options",
    "load_dataset",
]
