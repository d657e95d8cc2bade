"""Geometry of residual representations: modality gap, ADP homogeneity, neighbourhood overlap.

Paper Sec. 4.1 (Fig. 2: |cosine| between image and text tokens, homogeneity of Advanced
Density Peaks clusters w.r.t. modality) and Sec. 3.2 / eq. 3 (neighbourhood overlap).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import homogeneity_score
from sklearn.neighbors import NearestNeighbors

from ._arrays import as_float_array, as_label_array

Pairing = Literal["cross", "paired", "all"]

_DADAPY: Any = None
#: cosine distance below which two rows count as the same direction (rounding noise)
_SAME_DIRECTION = 1e-12


def _dadapy() -> Any:
    """Import dadapy lazily (~6 s) and undo its global ``np.set_printoptions(precision=2)``."""
    global _DADAPY
    if _DADAPY is None:
        options = np.get_printoptions()
        try:
            import dadapy
        finally:
            np.set_printoptions(**options)
        _DADAPY = dadapy
    return _DADAPY


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        bad = np.flatnonzero(norms[:, 0] == 0)[:5].tolist()
        raise ValueError(f"{name} has zero-norm rows (e.g. {bad}); cosine is undefined for them.")
    return x / norms


def _cross_pair_count(pairing: str, n_img: int, n_txt: int) -> int:
    """Number of cosine values :func:`cosine_values` returns for ``pairing``."""
    if pairing == "all":
        return n_img * n_txt
    if n_img != n_txt:
        raise ValueError(
            f"pairing={pairing!r} needs as many image as text rows (row i of each is sample i), got {n_img} "
            f"and {n_txt}; use pairing='all' for unpaired sets."
        )
    return n_img if pairing == "paired" else n_img * (n_img - 1) // 2


def cosine_values(image_vecs: Any, text_vecs: Any, pairing: Pairing = "cross", *, absolute: bool = False,
                  block_rows: int = 1024) -> np.ndarray:
    """cos(image, text) over the image–text pairs chosen by ``pairing`` (paper Fig. 2, left), flattened.

    Row i of ``image_vecs`` and of ``text_vecs`` come from sample i.

    - ``"cross"`` (default, the authors' code): every pair (image i, text j) with i < j, i.e.
      one triangle of the image×text matrix without its diagonal — the same-sample pairs are
      excluded and each unordered couple of samples counts once; n(n-1)/2 values.
    - ``"paired"``: only the same-sample pairs (image i, text i); n values.
    - ``"all"``: every image row against every text row; n_img * n_txt values.

    ``"cross"`` and ``"all"`` are computed in blocks of ``block_rows`` image rows with float32
    products and returned as float32 (paper scale, n = 10,000: 50M values, 200 MB); ``"paired"``
    is float64. The cosine keeps its sign by default, as in the paper's text ("median cosine
    similarity") and the authors' code (whose ``abs`` flag is overridden to False);
    ``absolute=True`` gives |cos|.
    """
    img = _unit_rows(as_float_array(image_vecs, "image_vecs", 2), "image_vecs")
    txt = _unit_rows(as_float_array(text_vecs, "text_vecs", 2), "text_vecs")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_vecs and text_vecs differ in width: {img.shape[1]} vs {txt.shape[1]}.")
    if pairing not in ("cross", "paired", "all"):
        raise ValueError(f"pairing must be 'cross', 'paired' or 'all', got {pairing!r}.")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}.")
    total = _cross_pair_count(pairing, len(img), len(txt))
    sign = np.abs if absolute else np.asarray
    if pairing == "paired":
        return sign(np.einsum("nd,nd->n", img, txt))
    if total == 0:
        raise ValueError("pairing='cross' needs at least 2 samples: with one there is no pair of different samples.")
    img32, txt32 = img.astype(np.float32), txt.astype(np.float32)
    values = np.empty(total, dtype=np.float32)
    filled = 0
    for start in range(0, len(img32), block_rows):
        block = sign(img32[start:start + block_rows] @ txt32.T)
        if pairing == "cross":
            rows = np.arange(start, start + len(block))[:, None]
            block = block[rows < np.arange(len(txt32))[None, :]]
        values[filled:filled + block.size] = block.ravel()
        filled += block.size
    return values


def cosine_quartiles(image_vecs: Any, text_vecs: Any, pairing: Pairing = "cross", *,
                     absolute: bool = False) -> tuple[float, float, float]:
    """(q1, median, q3) of the cosine between image and text vectors (paper Fig. 2, left).

    Exact quantiles with linear interpolation over the values of :func:`cosine_values`
    (``pairing`` and ``absolute`` as there).
    """
    values = cosine_values(image_vecs, text_vecs, pairing, absolute=absolute)
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75], overwrite_input=True)
    return float(q1), float(median), float(q3)


def modality_gap_profile(image_by_layer: Any, text_by_layer: Any, pairing: Pairing = "cross", *,
                         absolute: bool = False) -> pd.DataFrame:
    """Per-layer cosine quartiles (Fig. 2, left); inputs are ``[L, n, d]`` stacks of residual vectors.

    Layers are converted one at a time (a paper-scale stack is not copied to float64 at
    once). Returns a DataFrame with columns ``layer, q1, median, q3`` (one row per layer);
    ``pairing`` and ``absolute`` as in :func:`cosine_values`.
    """
    img_shape, txt_shape = np.shape(image_by_layer), np.shape(text_by_layer)
    for name, shape in (("image_by_layer", img_shape), ("text_by_layer", txt_shape)):
        if len(shape) != 3:
            raise ValueError(f"{name} must be a 3-D array [layers, n, d], got shape {tuple(shape)}.")
    if img_shape[0] != txt_shape[0]:
        raise ValueError(f"image_by_layer has {img_shape[0]} layers but text_by_layer has {txt_shape[0]}.")
    rows = [(layer, *cosine_quartiles(image_by_layer[layer], text_by_layer[layer], pairing, absolute=absolute))
            for layer in range(img_shape[0])]
    return pd.DataFrame(rows, columns=["layer", "q1", "median", "q3"])


def _sorted_distinct(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, inverse): the first row of each distinct row of ``x`` in lexicographic order, and
    the map row -> distinct row, as ``np.unique(x, axis=0, return_index=True, return_inverse=True)``.

    Its row sort is skipped when the first column has no ties: that column's order is then the
    lexicographic one.
    """
    order = np.argsort(x[:, 0], kind="stable")
    first = x[order, 0]
    if np.all(first[1:] != first[:-1]):
        inverse = np.empty(len(x), dtype=np.intp)
        inverse[order] = np.arange(len(x))
        return order, inverse
    _, rows, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
    return rows, inverse.reshape(-1)


def _keep_nearest(best: tuple[np.ndarray, np.ndarray], rows: slice, sims: np.ndarray, first_col: int) -> None:
    """Merge the columns of ``sims`` (global indices from ``first_col``) into the running
    ``(similarities, indices)`` of ``rows``, keeping the ``best[0].shape[1]`` largest per row.

    At the rows' first block (-inf placeholders only) its largest entries are selected; later
    only entries above a row's current worst kept similarity can enter: a threshold pass, then
    a selection over the kept entries and those few candidates.
    """
    kept, index = best[0][rows], best[1][rows]
    width = kept.shape[1]
    if np.isneginf(kept).all():
        take = min(width, sims.shape[1])
        cols = np.argpartition(sims, sims.shape[1] - take, axis=1)[:, -take:]
        new_sims, new_index = np.take_along_axis(sims, cols, axis=1), cols + first_col
    else:
        r, c = np.nonzero(sims > kept.min(axis=1)[:, None])
        if len(r) == 0:
            return
        counts = np.bincount(r, minlength=len(sims))
        slot = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank of a candidate in its row
        new_sims = np.full((len(sims), counts.max()), -np.inf)
        new_index = np.zeros(new_sims.shape, dtype=np.int64)
        new_sims[r, slot], new_index[r, slot] = sims[r, c], c + first_col
    merged, merged_index = np.concatenate([kept, new_sims], axis=1), np.concatenate([index, new_index], axis=1)
    top = np.argpartition(merged, merged.shape[1] - width, axis=1)[:, -width:]
    best[0][rows], best[1][rows] = np.take_along_axis(merged, top, axis=1), np.take_along_axis(merged_index, top, axis=1)


def _cosine_knn(unit: np.ndarray, rows: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN among the unit vectors ``unit[rows]``, self first at distance 0: ``(distances,
    indices)`` of shape ``[len(rows), k + 1]``, row i and the indices referring to ``rows[i]``.

    d_ij = 1 - u_i·u_j in float64, clipped at 0: what dadapy's ``compute_distances(metric="cosine")``
    gets from sklearn's brute force, at half its products: every block (I, J >= I) of the Gram
    matrix is computed once and serves the rows of I and of J. The k + 1 largest u_i·u_j are
    kept per row (see :func:`_keep_nearest`); rows are sorted by distance, ties by index. The
    vectors are read in their original order (no reordered copy when every row is distinct).
    """
    subset = np.sort(rows)
    base = unit if len(subset) == len(unit) else unit[subset]
    n, width = len(base), k + 1
    best = (np.full((n, width), -np.inf), np.zeros((n, width), dtype=np.int64))
    for a in range(0, n, block):
        for b in range(a, n, block):
            sims = base[a:a + block] @ base[b:b + block].T
            if b == a:
                np.fill_diagonal(sims, np.inf)  # the point itself comes first
            _keep_nearest(best, slice(a, a + block), sims, b)
            if b != a:
                _keep_nearest(best, slice(b, b + block), sims.T, a)
    position = np.empty(len(unit), dtype=np.intp)
    position[rows] = np.arange(len(rows))
    label = position[subset]  # row of base -> its place in rows
    distances, indices = np.empty_like(best[0]), np.empty_like(best[1])
    distances[label], indices[label] = 1.0 - best[0], label[best[1]]
    order = np.lexsort((indices, distances), axis=1)
    return np.maximum(np.take_along_axis(distances, order, axis=1), 0.0), np.take_along_axis(indices, order, axis=1)


def _distinct_direction_distances(unit: np.ndarray, maxk: int, needed: int) -> tuple[np.ndarray, Any]:
    """Merge rows pointing the same way (cosine distance ~0) and compute cosine kNN on the rest.

    Returns (index map input row -> distinct row, dadapy ``Data`` holding the kNN distances of
    :func:`_cosine_knn` between the distinct rows, in lexicographic order). Exact duplicates are
    merged first; rows equal only up to rounding (e.g. rescaled copies) are found among the
    computed neighbours and merged, then the distances are recomputed.
    """
    distinct, inverse = _sorted_distinct(unit)
    while True:
        k = min(maxk, len(distinct) - 1)
        if k < needed:
            raise ValueError(
                f"ADP needs more than {needed} distinct directions within maxk={maxk}; got {len(distinct)} "
                f"distinct rows of {len(unit)}. Pass more vectors or smaller id_ranks / density_k."
            )
        data = _dadapy().Data(distances=_cosine_knn(unit, distinct, k), maxk=k, verbose=False)
        twin = (data.distances <= _SAME_DIRECTION) & (data.dist_indices != np.arange(len(distinct))[:, None])
        rows, cols = np.nonzero(twin)
        if len(rows) == 0:
            return inverse, data
        graph = coo_matrix((np.ones(len(rows)), (rows, data.dist_indices[rows, cols])), shape=(len(distinct),) * 2)
        _, component = connected_components(graph, directed=False)
        _, first = np.unique(component, return_index=True)
        distinct, inverse = distinct[first], component[inverse]


@dataclass(frozen=True)
class ADPResult:
    """Outcome of :func:`adp_clusters`.

    ``labels`` has one entry per input row: the cluster id, or -1 for rows in clusters
    smaller than ``min_cluster_size``. ``n_clusters`` counts all ADP clusters (before the
    size filter), ``n_kept_clusters`` those that survive it.
    """

    labels: np.ndarray
    intrinsic_dim: float
    n_clusters: int
    n_kept_clusters: int


def adp_clusters(
    vectors: Any,
    *,
    maxk: int = 128,
    id_ranks: tuple[int, int] = (8, 16),
    density_k: int = 16,
    Z: float = 1.65,
    min_cluster_size: int = 50,
) -> ADPResult:
    """Advanced Density Peaks clustering on cosine distance (paper Supp. Sec. 7).

    Steps (dadapy): cosine-distance kNN up to ``maxk``; Gride intrinsic dimension from the
    distance ratio of neighbours ``id_ranks = (n1, 2*n1)`` (``n1`` a power of two); kNN
    density with ``density_k`` neighbours on that dimension; ADP with confidence ``Z``.
    Rows with the same direction (cosine distance ~0, which breaks the density estimate:
    duplicates, rescaled copies) are clustered once and share their representative's cluster.
    Cluster sizes count every input row, duplicates included.
    """
    x = as_float_array(vectors, "vectors", 2)
    n1, n2 = id_ranks
    if n1 < 1 or n2 != 2 * n1 or n2 & (n2 - 1):
        raise ValueError(f"id_ranks must be (n, 2n) with 2n a power of two (dadapy's Gride scales), got {id_ranks}.")
    if density_k < 1 or min_cluster_size < 1:
        raise ValueError(f"density_k and min_cluster_size must be >= 1, got {density_k} and {min_cluster_size}.")
    needed = max(n2, density_k)
    inverse, data = _distinct_direction_distances(_unit_rows(x, "vectors"), maxk, needed)
    ids, _, ranks = data.return_id_scaling_gride(range_max=n2, return_ranks=True)
    intrinsic_dim = float(ids[list(ranks).index(n2)])
    if not math.isfinite(intrinsic_dim) or intrinsic_dim <= 0:
        raise ValueError(f"Gride returned an unusable intrinsic dimension ({intrinsic_dim}); check the input vectors.")
    data.set_id(intrinsic_dim)
    data.compute_density_kNN(k=density_k)
    assignment = np.asarray(data.compute_clustering_ADP(Z=Z), dtype=np.int64)[inverse]

    cluster_ids, sizes = np.unique(assignment, return_counts=True)
    small = cluster_ids[sizes < min_cluster_size]
    labels = np.where(np.isin(assignment, small), -1, assignment)
    return ADPResult(labels, intrinsic_dim, len(cluster_ids), len(cluster_ids) - len(small))


def adp_homogeneity(
    vectors: Any,
    modality_labels: Any,
    *,
    maxk: int = 128,
    id_ranks: tuple[int, int] = (8, 16),
    density_k: int = 16,
    Z: float = 1.65,
    min_cluster_size: int = 50,
) -> float:
    """Homogeneity (sklearn) of ADP clusters w.r.t. modality (paper Fig. 2, right).

    1.0 means every kept cluster holds a single modality. Rows in clusters smaller than
    ``min_cluster_size`` are excluded. Returns NaN when no cluster survives the size filter.
    See :func:`adp_clusters` for the clustering parameters.
    """
    x = as_float_array(vectors, "vectors", 2)
    y = as_label_array(modality_labels, "modality_labels", len(x))
    result = adp_clusters(x, maxk=maxk, id_ranks=id_ranks, density_k=density_k, Z=Z, min_cluster_size=min_cluster_size)
    kept = result.labels >= 0
    if not kept.any():
        return float("nan")
    return float(homogeneity_score(y[kept], result.labels[kept]))


def _knn_without_self(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of shape [n, k+1] whose column 0 is the point itself.

    With duplicate points the library may return a twin before the point itself; the point
    is moved to column 0 so that it is never counted as its own neighbour.
    """
    dist, idx = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(x).kneighbors(x)
    rows = np.arange(len(x))
    for i in np.flatnonzero(idx[:, 0] != rows):
        not_self = idx[i] != i
        idx[i] = np.concatenate([[i], idx[i][not_self][:k]])
        dist[i] = np.concatenate([[0.0], dist[i][not_self][:k]])
    return dist, idx


def neighborhood_overlap(vectors: Any, labels: Any, k: int = 30, metric: str = "euclidean") -> float:
    """Neighbourhood overlap chi (paper eq. 3): mean over points of the fraction of their
    ``k`` nearest neighbours (self excluded) that share their label.

    Distances are euclidean on the raw residual vectors by default (dadapy's default; the
    paper does not name a metric); any sklearn metric name (e.g. ``"cosine"``) may be passed.
    Ties (duplicate points) never make a point its own neighbour. Computed with
    dadapy's ``return_label_overlap`` *unweighted* (dadapy 0.3.4 weights by inverse class
    size by default; the two agree for balanced classes, eq. 3 is the unweighted mean).
    """
    x = as_float_array(vectors, "vectors", 2)
    y = as_label_array(labels, "labels", len(x))
    if not 1 <= k < len(x):
        raise ValueError(f"k must be in [1, n_points) = [1, {len(x)}), got k={k}; pass more vectors or a smaller k.")
    dist, idx = _knn_without_self(x, k, metric)
    _, y_int = np.unique(y, return_inverse=True)
    data = _dadapy().Data(distances=(dist, idx), maxk=k, verbose=False)
    return float(data.return_label_overlap(y_int.reshape(-1).astype(int), k=k, weighted=False))
