"""Nearest neighbours by masked correlation, against a brute-force numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medddpm.audit.neighbours import (
    FOREGROUND_LEVEL,
    foreground_mask,
    nearest_by_cosine,
    nearest_two,
    pair_ssim,
    unit_vectors,
)


def _volumes(n: int, seed: int, shape=(6, 5, 7)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0, 1, (n, 1, *shape)).astype(np.float32))


def _brute_force(queries, training, mask, mirror, exclude_self):
    """Correlations [Q, T] with np.corrcoef on the masked voxels (the better of plain and mirrored)."""
    m = mask.numpy()
    sims = np.empty((len(queries), len(training)))
    mirrored = np.zeros_like(sims, dtype=bool)
    for q in range(len(queries)):
        for t in range(len(training)):
            a = queries[q, 0].numpy()[m]
            plain = np.corrcoef(a, training[t, 0].numpy()[m])[0, 1]
            flipped = np.corrcoef(a, training[t, 0].numpy()[::-1][m])[0, 1] if mirror else -np.inf
            sims[q, t], mirrored[q, t] = max(plain, flipped), flipped > plain
            if exclude_self and q == t:
                sims[q, t] = -np.inf
    return sims, mirrored


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("block", [2, 3, 100])
def test_nearest_two_matches_a_brute_force_search(mirror: bool, block: int):
    queries, training = _volumes(7, 0), _volumes(5, 1)
    mask = torch.from_numpy(np.random.default_rng(2).uniform(size=(6, 5, 7)) > 0.3)
    nb = nearest_two(queries, training, mask, mirror=mirror, block=block)
    sims, mirrored = _brute_force(queries, training, mask, mirror, False)
    order = np.argsort(-sims, axis=1)
    np.testing.assert_array_equal(nb.index, order[:, 0])
    np.testing.assert_array_equal(nb.second_index, order[:, 1])
    np.testing.assert_allclose(nb.similarity, sims[np.arange(7), order[:, 0]], atol=1e-5)
    np.testing.assert_allclose(nb.second, sims[np.arange(7), order[:, 1]], atol=1e-5)
    np.testing.assert_array_equal(nb.mirrored, mirrored[np.arange(7), order[:, 0]])
    np.testing.assert_allclose(nb.gap, nb.similarity - nb.second)


def test_a_volume_is_not_its_own_neighbour_with_exclude_self():
    training = _volumes(6, 3)
    mask = torch.ones(6, 5, 7, dtype=torch.bool)
    nb = nearest_two(training, training, mask, mirror=True, exclude_self=True, block=4)
    sims, _ = _brute_force(training, training, mask, True, True)
    assert (nb.index != np.arange(6)).all() and (nb.second_index != np.arange(6)).all()
    np.testing.assert_array_equal(nb.index, sims.argmax(1))
    with pytest.raises(ValueError, match="at least 2"):
        nearest_two(training[:2], training[:2], mask, exclude_self=True)


def test_a_mirrored_copy_is_found_only_with_mirroring():
    training = _volumes(4, 4)
    copy = training[2:3].flip(2)  # left-right in RAS
    mask = torch.ones(6, 5, 7, dtype=torch.bool)
    found = nearest_two(copy, training, mask, mirror=True)
    assert found.index[0] == 2 and found.mirrored[0] and found.similarity[0] == pytest.approx(1.0, abs=1e-5)
    plain = nearest_two(copy, training, mask, mirror=False)
    assert plain.similarity[0] < 0.5 and not plain.mirrored[0]


def test_correlation_ignores_brightness_and_contrast_inside_the_mask():
    training = _volumes(3, 5)
    rescaled = training[1:2] * 0.5 + 0.2
    nb = nearest_two(rescaled, training, torch.ones(6, 5, 7, dtype=torch.bool), mirror=False)
    assert nb.index[0] == 1 and nb.similarity[0] == pytest.approx(1.0, abs=1e-5)


def test_foreground_mask_is_where_the_training_mean_is_bright_else_everything():
    volumes = torch.zeros(4, 1, 4, 4, 4)
    volumes[:, :, :2] = 0.9  # half the volume bright in every scan
    volumes[0, :, 3, 3, 3] = 0.7  # one voxel bright in one scan: mean 0.175, below the level
    mask = foreground_mask(volumes)
    assert mask[:2].all() and not mask[2:].any()
    assert FOREGROUND_LEVEL > 0.7 / 4  # why that voxel stays out
    assert foreground_mask(torch.zeros(3, 1, 4, 4, 4)).all()  # nothing bright: the whole volume


def test_a_volume_constant_inside_the_mask_correlates_with_nothing():
    z = unit_vectors(torch.full((1, 1, 3, 3, 3), 0.4), torch.ones(3, 3, 3, dtype=torch.bool))
    assert torch.equal(z, torch.zeros_like(z))


def test_pair_ssim_is_one_for_copies_and_follows_the_mirror_flag():
    training = _volumes(3, 6, shape=(12, 12, 12))
    queries = torch.cat([training[1:2], training[2:3].flip(2)])
    values = pair_ssim(queries, training, np.array([1, 2]), np.array([False, True]))
    np.testing.assert_allclose(values, [1.0, 1.0], atol=1e-5)
    unflipped = pair_ssim(queries, training, np.array([1, 2]), np.array([False, False]))
    assert unflipped[1] < 0.5


def test_nearest_by_cosine_matches_a_brute_force_search():
    rng = np.random.default_rng(7)
    q, t = rng.normal(size=(5, 8)), rng.normal(size=(9, 8))
    index, cosine = nearest_by_cosine(q, t * rng.uniform(0.5, 3, size=(9, 1)))  # lengths do not matter
    brute = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in t] for a in q])
    np.testing.assert_array_equal(index, brute.argmax(1))
    np.testing.assert_allclose(cosine, brute.max(1))


@pytest.mark.parametrize("win_size", [3, 7, 11])
def test_separable_ssim_equals_monai_ssim_metric(win_size: int):
    from monai.metrics import SSIMMetric

    from medddpm.audit.neighbours import ssim

    x = _volumes(3, 8, shape=(16, 14, 12))
    y = (x * 0.7 + _volumes(3, 9, shape=(16, 14, 12)) * 0.3).clamp(0, 1)
    monai = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=win_size, kernel_sigma=1.5, reduction="none")
    expected = monai(y_pred=x, y=y).reshape(-1)
    torch.testing.assert_close(ssim(x, y, win_size), expected, atol=2e-6, rtol=1e-5)


def test_nearest_feature_takes_the_better_of_a_training_vector_and_its_mirror_image():
    from medddpm.audit.neighbours import nearest_feature

    rng = np.random.default_rng(2)
    training, mirrored = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    queries = np.stack([mirrored[3] * 2.0, training[1] + 0.01 * rng.normal(size=16)])
    index, cosine, is_mirrored = nearest_feature(queries, training, mirrored)
    assert index.tolist() == [3, 1] and is_mirrored.tolist() == [True, False]
    assert cosine[0] == pytest.approx(1.0) and cosine[1] > 0.99
    index, cosine, is_mirrored = nearest_feature(queries, training)
    assert not is_mirrored.any() and cosine[0] < 0.9
