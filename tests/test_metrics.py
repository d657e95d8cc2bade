"""Metrics: geometry, cross-modal attention, patching, captioning, classification."""
import math
import time

import numpy as np
import pytest
import torch

from narrowgate_utils.layout import TokenLayout
from narrowgate_utils.metrics import (
    RunningMean,
    cosine_quartiles,
    adp_clusters,
    adp_homogeneity,
    aggregate_attention_shares,
    caption_tokenize,
    cider,
    cider_scores,
    cosine_values,
    classification_accuracy,
    cross_modal_attention,
    first_class_mention,
    logit_sign_flips,
    modality_gap_profile,
    neighborhood_overlap,
    patching_similarity,
    span_token_names,
    switch_rate,
    switch_rate_argmax,
)

SQRT_HALF = math.sqrt(0.5)


# ---------------------------------------------------------------- modality gap
# 3 samples; image rows i0..i2, text rows t0..t2 (row i = sample i)
GAP_IMAGE = np.array([[1.0, 0], [0, 1], [1, 1]])
GAP_TEXT = np.array([[1.0, 0], [0, 1], [-2, 0]])
# cos(i, t):      t0     t1     t2
#   i0             1      0     -1
#   i1             0      1      0
#   i2           .7071  .7071  -.7071
# cross (i < j): (i0,t1)=0, (i0,t2)=-1, (i1,t2)=0; the other triangle holds 0, .7071, .7071


def test_cross_pairs_skip_the_diagonal_and_take_one_triangle_by_hand() -> None:
    np.testing.assert_allclose(cosine_values(GAP_IMAGE, GAP_TEXT), [0.0, -1.0, 0.0], atol=1e-7)
    # signed cosine (default): -1, 0, 0 -> q1 -.5, median 0, q3 0
    assert cosine_quartiles(GAP_IMAGE, GAP_TEXT) == pytest.approx((-0.5, 0.0, 0.0), abs=1e-7)
    # |cos| sorted 0, 0, 1; linear interpolation: q1 at rank .5 -> 0, median 0, q3 at rank 1.5 -> .5
    assert cosine_quartiles(GAP_IMAGE, GAP_TEXT, absolute=True) == pytest.approx((0.0, 0.0, 0.5), abs=1e-7)
    # same-sample pairs only: 1, 1, .7071
    assert cosine_quartiles(GAP_IMAGE, GAP_TEXT, pairing="paired")[1] == pytest.approx(1.0)
    # all 9 pairs, |cos|: 0 0 0 .7071 .7071 .7071 1 1 1 -> median .7071
    assert cosine_quartiles(GAP_IMAGE, GAP_TEXT, pairing="all", absolute=True)[1] == pytest.approx(SQRT_HALF, rel=1e-6)


def test_cross_pairs_in_blocks_match_a_dense_reference() -> None:
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(37, 8)), rng.normal(size=(37, 8))
    dense = (image / np.linalg.norm(image, axis=1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
    upper = np.abs(dense[np.triu_indices(37, k=1)])  # (i, j) with i < j, row-major
    for block_rows in (1, 5, 1024):
        values = cosine_values(image, text, block_rows=block_rows, absolute=True)
        assert values.dtype == np.float32 and len(values) == 37 * 36 // 2
        np.testing.assert_allclose(values, upper, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cosine_values(image, text, "all", block_rows=4), dense.ravel(), atol=1e-6)
    assert cosine_quartiles(image, text, absolute=True)[1] == pytest.approx(np.median(upper), rel=1e-5)
    assert cosine_quartiles(image, text)[1] == pytest.approx(np.median(dense[np.triu_indices(37, k=1)]), rel=1e-5)


def test_cosine_quartiles_paired_by_hand() -> None:
    image = np.array([[1.0, 0], [2, 0], [1, 0], [3, 0]])
    text = np.array([[5.0, 0], [0, 1], [1, 1], [-1, 0]])
    # |cos| = 1, 0, sqrt(.5), 1 -> sorted 0, .7071, 1, 1; linear interpolation:
    # q1 at rank 0.75 -> 0.75*.7071, median at 1.5 -> (.7071+1)/2, q3 at 2.25 -> 1
    q1, median, q3 = cosine_quartiles(image, text, pairing="paired", absolute=True)
    assert q1 == pytest.approx(0.75 * SQRT_HALF)
    assert median == pytest.approx((SQRT_HALF + 1) / 2)
    assert q3 == pytest.approx(1.0)


def test_abs_cosine_all_pairs_and_errors() -> None:
    image = np.array([[1.0, 0], [0, 1]])
    text = np.array([[1.0, 0], [1, 1], [0, -2]])
    # pairs: 1, .7071, 0 | 0, .7071, 1 -> median .7071
    assert cosine_quartiles(image, text, pairing="all", absolute=True)[1] == pytest.approx(SQRT_HALF, rel=1e-6)
    with pytest.raises(ValueError, match="pairing='cross' needs as many"):
        cosine_quartiles(image, text)
    with pytest.raises(ValueError, match="pairing='paired' needs as many"):
        cosine_quartiles(image, text, pairing="paired")
    with pytest.raises(ValueError, match="at least 2 samples"):
        cosine_quartiles(image[:1], text[:1])
    with pytest.raises(ValueError, match="zero-norm"):
        cosine_quartiles(np.zeros((2, 2)), image)
    with pytest.raises(ValueError, match="NaN"):
        cosine_quartiles(np.array([[np.nan, 1.0], [1, 0]]), image)
    with pytest.raises(ValueError, match="pairing must be"):
        cosine_quartiles(image, image, pairing="diagonal")


def test_modality_gap_profile_accepts_torch_layers() -> None:
    image = torch.tensor([[[1.0, 0], [1, 0]], [[1.0, 0], [1, 0]]])
    text = torch.tensor([[[0.0, 1], [0, 1]], [[1.0, 0], [1, 1]]])
    df = modality_gap_profile(image, text)
    assert list(df.columns) == ["layer", "q1", "median", "q3"]
    assert df["layer"].tolist() == [0, 1]
    # one cross pair per layer, (image 0, text 1): cos 0, then .7071
    assert df["median"].tolist() == pytest.approx([0.0, SQRT_HALF], abs=1e-7)
    assert modality_gap_profile(image, text, "paired")["median"].tolist() == pytest.approx([0.0, (1 + SQRT_HALF) / 2])
    with pytest.raises(ValueError, match="3-D"):
        modality_gap_profile(image[0], text[0])
    with pytest.raises(ValueError, match="layers"):
        modality_gap_profile(image, text[:1])


# ---------------------------------------------------------------- ADP homogeneity
def _blobs(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 10)) * 0.5
    b = rng.normal(size=(n, 10)) * 0.5
    a[:, 0] += 10  # two directions 90 degrees apart: well separated in cosine distance
    b[:, 1] += 10
    return np.vstack([a, b]), np.repeat([0, 1], n)


def test_adp_homogeneity_planted_and_shuffled() -> None:
    x, y = _blobs()
    before = np.get_printoptions()
    assert adp_homogeneity(x, y, maxk=32, min_cluster_size=20) == pytest.approx(1.0)
    assert np.get_printoptions() == before  # dadapy's global print precision change is undone
    shuffled = np.random.default_rng(1).permutation(y)
    assert adp_homogeneity(x, shuffled, maxk=32, min_cluster_size=20) < 0.1


def test_adp_clusters_duplicates_and_size_filter() -> None:
    x, _ = _blobs()
    # exact duplicates (and a positive rescaling, same direction) get the cluster of their twin
    with_dups = np.vstack([x, x[:5], 3.0 * x[150:153]])
    result = adp_clusters(with_dups, maxk=32, min_cluster_size=20)
    assert result.n_kept_clusters == 2 and result.intrinsic_dim > 0
    np.testing.assert_array_equal(result.labels[300:305], result.labels[:5])
    np.testing.assert_array_equal(result.labels[305:], result.labels[150:153])
    assert len(set(result.labels[:150])) == 1 and result.labels[0] != result.labels[150]
    # a size threshold above both cluster sizes drops every point
    assert np.all(adp_clusters(x, maxk=32, min_cluster_size=400).labels == -1)
    assert math.isnan(adp_homogeneity(x, np.repeat([0, 1], 150), maxk=32, min_cluster_size=400))


def test_adp_errors() -> None:
    x, y = _blobs(n=8)
    with pytest.raises(ValueError, match="distinct directions"):
        adp_homogeneity(x, y)
    with pytest.raises(ValueError, match="id_ranks"):
        adp_clusters(x, id_ranks=(8, 12))
    with pytest.raises(ValueError, match="one label per vector"):
        adp_homogeneity(x, y[:3])


# ---------------------------------------------------------------- neighbourhood overlap
def _overlap_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Plain eq. 3: euclidean kNN (self excluded), fraction of neighbours with the same label."""
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1, kind="stable")[:, :k]
    return float(np.mean(y[neighbours] == y[:, None]))


def test_neighborhood_overlap_by_hand_on_a_line() -> None:
    x = np.array([0.0, 1.0, 2.5, 4.5, 6.0, 7.2])[:, None]
    y = np.array(["A", "A", "B", "A", "B", "B"])
    # k=2 neighbours: 0->{1, 2.5}: 1/2; 1->{0, 2.5}: 1/2; 2.5->{1, 4.5}: 0; 4.5->{6, 2.5}: 0;
    # 6->{7.2, 4.5}: 1/2; 7.2->{6, 4.5}: 1/2  => chi = 2/6
    assert neighborhood_overlap(x, y, k=2) == pytest.approx(1 / 3)
    assert _overlap_reference(x, y, 2) == pytest.approx(1 / 3)


def test_neighborhood_overlap_matches_numpy_on_imbalanced_classes() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5))
    y = (rng.random(60) < 0.25).astype(int)  # imbalanced: dadapy's default weighting would differ
    x[y == 1] += 1.0
    for k in (1, 5, 12):
        assert neighborhood_overlap(x, y, k=k) == pytest.approx(_overlap_reference(x, y, k))


def test_neighborhood_overlap_never_counts_self() -> None:
    x = np.ones((5, 3))  # all identical: every neighbour ties with the point itself
    assert neighborhood_overlap(x, np.arange(5), k=2) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        neighborhood_overlap(x, np.arange(5), k=5)


# ---------------------------------------------------------------- cross-modal attention
def _toy_attention() -> np.ndarray:
    """2 heads over 5 positions: 0 BOS, 1 image, 2 [EOI], 3-4 text."""
    a = np.zeros((2, 5, 5))
    a[:, 0, 0] = 1
    a[:, 1, :2] = 0.5
    a[:, 2, :3] = [0.0, 0.9, 0.1]  # image-to-image attention must not count
    a[0, 3] = [0.4, 0.2, 0.2, 0.2, 0.0]
    a[0, 4] = [0.2, 0.1, 0.3, 0.2, 0.2]
    a[1, 3] = [0.1, 0.6, 0.1, 0.2, 0.0]
    a[1, 4] = [0.5, 0.1, 0.1, 0.1, 0.2]
    return a


def test_cross_modal_attention_by_hand() -> None:
    a = _toy_attention()
    # key 1: 0.2 + 0.1 + 0.6 + 0.1 = 1.0; key 2: 0.2 + 0.3 + 0.1 + 0.1 = 0.7 (4 head-query pairs)
    np.testing.assert_allclose(cross_modal_attention(a, [1, 2], [3, 4]), [1 / 1.7, 0.7 / 1.7])
    np.testing.assert_allclose(cross_modal_attention(a, [1, 2], [3, 4], normalize=False), [0.25, 0.175])
    batch = torch.tensor(np.stack([a, a]), dtype=torch.bfloat16)
    f = cross_modal_attention(batch, [[1, 2], [1, 2]], [[3, 4], [3]])
    np.testing.assert_allclose(f[0], [1 / 1.7, 0.7 / 1.7], atol=1e-2)
    np.testing.assert_allclose(f[1], [0.8 / 1.1, 0.3 / 1.1], atol=1e-2)  # query 3 only


def test_cross_modal_attention_errors() -> None:
    a = _toy_attention()
    with pytest.raises(ValueError, match="after the image span"):
        cross_modal_attention(a, [1, 2], [2, 3])
    with pytest.raises(ValueError, match="outside"):
        cross_modal_attention(a, [1, 7], [3])
    with pytest.raises(ValueError, match="post-softmax"):
        cross_modal_attention(np.full((1, 5, 5), np.nan), [1, 2], [3])
    with pytest.raises(ValueError, match="differ in length"):
        cross_modal_attention(np.stack([a, a]), [[1, 2], [2]], [3, 4])
    with pytest.raises(ValueError, match="zero attention"):
        cross_modal_attention(np.zeros((1, 5, 5)), [1, 2], [3])


def test_running_mean_streams_samples_and_batches() -> None:
    rm = RunningMean()
    with pytest.raises(ValueError, match="empty"):
        rm.mean
    rm.update([1.0, 2.0])
    rm.update(torch.tensor([3.0, 4.0]))
    rm.update(np.array([[5.0, 6.0], [7.0, 8.0]]), batch=True)
    assert rm.count == 4
    np.testing.assert_allclose(rm.mean, [4.0, 5.0])
    with pytest.raises(ValueError, match="differs"):
        rm.update([1.0, 2.0, 3.0])


def test_span_names_and_aggregation() -> None:
    layout = TokenLayout(seq_len=10, image_positions=(2, 3, 5, 6), eoi=7, soi=1, row_separators=(4,), text_positions=(8, 9))
    names, groups = span_token_names(layout)
    assert names == ["image 1", "image 2", "row separator 1", "image 3", "last image", "[EOI]"]
    assert groups == ["internal image"] * 2 + ["row separators"] + ["internal image"] * 2 + ["[EOI]"]
    f = np.array([
        [0.005, 0.5, 0.004, 0.001, 0.1, 0.39],
        [0.003, 0.4, 0.012, 0.002, 0.1, 0.483],
    ])
    # layer means: .004 .45 .008 .0015 .1 .4365 -> keep image 2, last image, [EOI]
    df = aggregate_attention_shares(f, names, groups)
    layer0 = df[df.layer == 0].set_index("token")["share"]
    assert list(layer0.index) == ["image 2", "last image", "[EOI]", "internal image", "row separators"]
    np.testing.assert_allclose(layer0.values, [0.5, 0.1, 0.39, 0.006, 0.004])
    assert df.groupby("layer")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="one per position"):
        aggregate_attention_shares(f, names[:3])


# ---------------------------------------------------------------- patching
def test_patching_similarity() -> None:
    q, p = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5])
    assert patching_similarity(q, p) == pytest.approx(0.5)
    assert patching_similarity(p, p) == pytest.approx(1.0)
    assert patching_similarity([1.0, 0, 0], [0, 0, 1.0]) == 0.0
    logits = np.log([0.5, 0.3, 0.2]) + 7.0
    assert patching_similarity(logits, np.log([0.2, 0.3, 0.5]), from_logits=True) == pytest.approx(0.2 + 0.3 + 0.2)
    rows = patching_similarity(np.stack([q, p]), np.stack([p, p]))
    np.testing.assert_allclose(rows, [0.5, 1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        patching_similarity([0.5, 0.4], [0.5, 0.5])
    with pytest.raises(ValueError, match="negative"):
        patching_similarity([1.5, -0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="same shape"):
        patching_similarity(q, [0.5, 0.5])


def test_switch_rate_counts_sign_flips_over_all_pairs_by_hand() -> None:
    base, target = [0, 0, 1, 0], [1, 2, 3, 1]
    clean = np.array([
        [2.0, 1, 0, 0],  # d = l1 - l0 = -1
        [3.0, 0, 1, 0],  # d = l2 - l0 = -2
        [0.0, 1, 0, 2],  # d = l3 - l1 = +1 (the base image already favours the target class)
        [1.0, 0, 0, 0],  # d = l1 - l0 = -1
    ])
    patched = np.array([
        [1.0, 2, 0, 0],  # d = +1: flip
        [3.0, 0, 2, 0],  # d = -1: no flip
        [0.0, 2, 0, 1],  # d = -1: flip (either direction counts, as sign(clean) != sign(patched))
        [1.0, 1, 0, 0],  # d = 0: sign 0 != -1, flip
    ])
    np.testing.assert_array_equal(logit_sign_flips(clean, patched, base, target), [True, False, True, True])
    assert switch_rate(clean, patched, base, target) == pytest.approx(3 / 4)
    assert switch_rate(torch.tensor(clean), torch.tensor(clean), base, target) == 0.0
    with pytest.raises(ValueError, match="same base and target"):
        switch_rate(clean, patched, [0, 0, 1, 1], target)
    with pytest.raises(ValueError, match="lengths differ"):
        switch_rate(clean, patched, base[:3], target[:3])
    with pytest.raises(ValueError, match="same shape"):
        switch_rate(clean, patched[:, :3], base, target)
    with pytest.raises(ValueError, match="vocab"):
        switch_rate(clean, patched, base, [1, 2, 3, 4])


def test_switch_rate_argmax() -> None:
    assert switch_rate_argmax([5, 6, 7, 5], [1, 1, 1, 1], [5, 6, 8, 9]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same base and target"):
        switch_rate_argmax([1], [2], [2])
    with pytest.raises(ValueError, match="lengths differ"):
        switch_rate_argmax([1, 2], [3], [4])


# ---------------------------------------------------------------- captioning
REFS = [
    ["a dog runs on the grass", "a brown dog running in a field", "the dog is running outside"],
    ["a man rides a red bicycle", "a person riding a bike down the street", "a cyclist on a red bike"],
    ["two children play in the snow", "kids playing in snow", "two kids building a snowman"],
]


def test_caption_tokenize() -> None:
    assert caption_tokenize("A Dog's T-shirt, running!") == "a dog's t-shirt running"


def test_cider_raw_keeps_case_and_punctuation() -> None:
    from pycocoevalcap.cider.cider import Cider

    predictions = ["A dog runs on the grass.", "a man rides a red bicycle", "Two children play in the snow!"]
    simple = cider_scores(predictions, REFS)
    raw = cider_scores(predictions, REFS, tokenize="raw")
    # raw: "A" != "a", "grass." != "grass", "snow!" != "snow"; item 1 is already plain, but the
    # corpus IDF is shared, so only the word matches are pinned here
    assert raw[0] < simple[0] and raw[2] < simple[2]
    # raw = pycocoevalcap on the unchanged strings; simple = pycocoevalcap on caption_tokenize
    gts = {i: list(r) for i, r in enumerate(REFS)}
    _, direct_raw = Cider().compute_score(gts, {i: [p] for i, p in enumerate(predictions)})
    np.testing.assert_allclose(raw, direct_raw)
    _, direct_simple = Cider().compute_score({i: [caption_tokenize(c) for c in r] for i, r in gts.items()},
                                             {i: [caption_tokenize(p)] for i, p in enumerate(predictions)})
    np.testing.assert_allclose(simple, direct_simple)
    # on captions already in the simple form the two options agree
    plain = [caption_tokenize(p) for p in predictions]
    np.testing.assert_allclose(cider_scores(plain, REFS, tokenize="raw"), cider_scores(plain, REFS))
    assert cider(predictions, REFS, tokenize="raw") == pytest.approx(raw.mean())
    with pytest.raises(ValueError, match="tokenize must be"):
        cider(predictions, REFS, tokenize="ptb")


def test_cider_identical_unrelated_and_ranking() -> None:
    start = time.perf_counter()
    identical = cider_scores([r[0] for r in REFS], REFS)
    unrelated = cider_scores(["a plate of food on a table", "an old clock tower at night", "a bowl of soup"], REFS)
    assert np.all(identical > 2.0)
    assert np.all(unrelated < 0.1)
    # per item: close paraphrase > partial match > unrelated
    graded = cider_scores(["A dog is running on grass.", "a man on a bicycle", "a plate of food"], REFS)
    assert graded[0] > graded[1] > graded[2] == 0.0
    as_dict = cider({f"img{i}": r[0] for i, r in enumerate(REFS)}, {f"img{i}": r for i, r in enumerate(REFS)})
    assert as_dict == pytest.approx(identical.mean())
    assert time.perf_counter() - start < 5  # no Java tokenizer involved
    with pytest.raises(ValueError, match="at least 2"):
        cider(["a dog"], [REFS[0]])
    with pytest.raises(ValueError, match="both be dicts"):
        cider({"a": "x", "b": "y"}, REFS[:2])


# ---------------------------------------------------------------- classification
def test_classification_accuracy() -> None:
    names = ["sea lion", "sea", "cat", "tiger cat"]
    assert first_class_mention("It is a Sea Lion on a rock", names) == "sea lion"
    assert first_class_mention("a cat, or a tiger cat", names) == "cat"
    assert first_class_mention("concatenate", names) is None  # whole words only
    texts = ["a tiger cat.", "the sea", "nothing here"]
    assert classification_accuracy(texts, ["tiger cat", "sea lion", "cat"], names) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not in class_names"):
        classification_accuracy(texts, ["dog", "cat", "cat"], names)
