"""edvae's k-means centres (edvae.priors.kmeans) next to scikit-learn's KMeans on the mixture
prior's kind of input, to show why the hand-written one stays (priors/kmeans.py's docstring):

    python benchmarks/kmeans_vs_sklearn.py

For 4096 seeded N(0, I) draws in 2 and 10 dimensions and k = 8: how many centres are equal, the
largest distance from one of ours to the nearest of scikit-learn's, and both within-cluster costs.
"""

from __future__ import annotations

import torch
from sklearn.cluster import KMeans

from edvae.priors.kmeans import kmeans_centres


def cost(data: torch.Tensor, centres: torch.Tensor) -> float:
    """The within-cluster sum of squared distances."""
    return float(torch.cdist(data, centres).min(1).values.pow(2).sum())


for dim in (2, 10):
    data = torch.randn(4096, dim, generator=torch.Generator().manual_seed(0))
    ours = kmeans_centres(data, 8, torch.Generator().manual_seed(0))
    fitted = KMeans(n_clusters=8, n_init=4, max_iter=20, random_state=0).fit(data.double().numpy())
    theirs = torch.as_tensor(fitted.cluster_centers_, dtype=data.dtype)
    distances = torch.cdist(ours, theirs).min(1).values
    print(
        f"D = {dim}: {int((distances == 0).sum())} of 8 centres equal; largest distance to the nearest "
        f"{float(distances.max()):.2f}; within-cluster cost edvae {cost(data, ours):.2f}, "
        f"scikit-learn {cost(data, theirs):.2f}"
    )
