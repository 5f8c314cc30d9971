"""The structured mask kinds (config.masking.kind): exact counts, AMD's nesting, and the
structure each is for, measured against MAE's uniform masks."""

import jax
import numpy as np
import pytest

from mdistill import masking
from mdistill.config import base_config

OPTIONS = masking.options_of(base_config())  # config.masking's default options

KINDS = sorted(masking.ORDERS)
STRUCTURED = [("block", {}), ("block", {"block_square": 2}), ("colored_noise", {"noise_color": "red"}),
              ("colored_noise", {"noise_color": "green"})]


def hidden_grid(kind, options=None, batch=256, grid=14, ratio=0.75, seed=0):
    m = masking.sample(kind, jax.random.PRNGKey(seed), batch, grid * grid, ratio, options=options)
    return np.asarray(m.student.mask).reshape(batch, grid, grid)


def neighbour_agreement(h: np.ndarray) -> float:
    """Fraction of horizontally and vertically adjacent patch pairs equally masked."""
    return float(np.mean(np.concatenate([(h[:, :, 1:] == h[:, :, :-1]).ravel(), (h[:, 1:] == h[:, :-1]).ravel()])))


def mean_run_length(h: np.ndarray) -> float:
    """Mean length of the runs of hidden patches along the rows."""
    runs = []
    for row in h.reshape(-1, h.shape[-1]):
        n = 0
        for v in row:
            if v:
                n += 1
            elif n:
                runs.append(n)
                n = 0
        if n:
            runs.append(n)
    return float(np.mean(runs))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_every_kind_keeps_the_exact_count_for_every_image(kind, ratio):
    m = jax.jit(lambda r: masking.sample(kind, r, 16, 196, ratio, options=OPTIONS))(jax.random.PRNGKey(1))
    keep = masking.num_visible(196, ratio)
    assert m.student.ids_keep.shape == (16, keep)
    np.testing.assert_array_equal(np.asarray(m.student.mask).sum(axis=1), 196 - keep)
    for b in range(16):
        ids = np.asarray(m.student.ids_keep[b])
        assert len(set(ids.tolist())) == keep
        np.testing.assert_array_equal(np.asarray(m.student.mask[b])[ids], 0.0)


@pytest.mark.parametrize("kind,options", [("random", {}), *STRUCTURED])
def test_amd_nesting_holds_for_every_kind(kind, options):
    m = masking.sample(kind, jax.random.PRNGKey(2), 8, 196, 0.9, 0.75, options={**OPTIONS, **options})
    keep_s, keep_t = masking.num_visible(196, 0.9), masking.num_visible(196, 0.75)
    assert m.teacher_ids.shape == (8, keep_t) and m.diff_ids.shape == (8, keep_t - keep_s)
    for b in range(8):
        student, teacher = set(np.asarray(m.student.ids_keep[b]).tolist()), set(np.asarray(m.teacher_ids[b]).tolist())
        assert student < teacher and len(teacher) == keep_t
        np.testing.assert_array_equal(np.asarray(m.student.mask[b])[list(teacher - student)], 1.0)


def test_structured_kinds_hide_connected_regions():
    """Uniform masks at 0.75 agree on a neighbour pair with p^2 + q^2 = 0.625; blocks, squares
    and low-frequency noise hide larger connected regions, with longer hidden runs."""
    base = hidden_grid("random")
    assert abs(neighbour_agreement(base) - 0.625) < 0.01
    for kind, options in STRUCTURED:
        h = hidden_grid(kind, {**OPTIONS, **options})
        assert neighbour_agreement(h) > neighbour_agreement(base) + 0.05, (kind, options)
        assert mean_run_length(h) > mean_run_length(base) + 0.5, (kind, options)


def test_blue_noise_spreads_the_visible_patches():
    """High-pass noise anti-correlates neighbours: fewer equal pairs than uniform masks."""
    blue = hidden_grid("colored_noise", {**OPTIONS, "noise_color": "blue", "noise_sigma": 1.0})
    assert neighbour_agreement(blue) < neighbour_agreement(hidden_grid("random")) - 0.02


def test_simmim_squares_are_hidden_whole():
    """With block_square=2 on a 14 x 14 grid (49 squares) and a count of whole squares
    hidden (0.75 -> 147 = 36.75 squares: at most one square is partly hidden)."""
    h = hidden_grid("block", {**OPTIONS, "block_square": 2}, batch=32)
    per_square = h.reshape(32, 7, 2, 7, 2).sum(axis=(2, 4))
    partial = ((per_square > 0) & (per_square < 4)).sum(axis=(1, 2))
    assert partial.max() <= 1


def test_block_rectangles_follow_the_area_bounds():
    """Square 16-patch rectangles, 16 patches hidden: the first rectangle, a 4 x 4 square."""
    opts = {**OPTIONS, "block_min_patches": 16, "block_max_patches": 16, "block_aspect": 1.0}
    h = hidden_grid("block", opts, batch=64, ratio=15.5 / 196)
    for img in h:
        rows, cols = np.nonzero(img)
        assert img.sum() == 16 and np.ptp(rows) == 3 and np.ptp(cols) == 3


def test_the_noise_filters_are_the_documented_ones():
    r = np.asarray(masking.noise_response(14, "red", 1.0))
    assert r[0, 0] == pytest.approx(1.0) and r[7, 7] < 0.01  # low-pass
    b = np.asarray(masking.noise_response(14, "blue", 1.0))
    np.testing.assert_allclose(b, 1.0 - r, atol=1e-6)
    g = np.asarray(masking.noise_response(14, "green", 1.0))
    assert g[0, 0] == pytest.approx(0.0, abs=1e-6) and g[7, 7] < 0.01 and g.max() > 0.3  # band-pass
    np.testing.assert_allclose(np.asarray(masking.noise_response(14, "purple", 1.0)), 1.0 - g, atol=1e-6)
    with pytest.raises(ValueError, match="noise colour"):
        masking.noise_response(14, "pink", 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_same_rng_same_masks(kind):
    a = masking.sample(kind, jax.random.PRNGKey(3), 4, 64, 0.75, options=OPTIONS)
    b = masking.sample(kind, jax.random.PRNGKey(3), 4, 64, 0.75, options=OPTIONS)
    c = masking.sample(kind, jax.random.PRNGKey(4), 4, 64, 0.75, options=OPTIONS)
    np.testing.assert_array_equal(a.student.ids_keep, b.student.ids_keep)
    assert not np.array_equal(a.student.mask, c.student.mask)


@pytest.mark.parametrize("kind", ["block", "colored_noise"])
@pytest.mark.slow
def test_the_reconstruction_grid_draws_the_configured_kind(kind):
    """visualize draws the masks of config.masking.kind: the AMD grid's student and
    teacher masks are the objective's, structured and nested."""
    from configs import amd_vitb
    from mdistill import visualize
    from mdistill.config import apply_smoke
    from mdistill.models.mae import patchify
    from mdistill.objectives import build_objective

    config = apply_smoke(amd_vitb.get_config())
    config.masking.kind = kind
    objective = build_objective(config)
    images = np.full((2, 32, 32, 3), 200, np.uint8)
    params = objective.init(jax.random.PRNGKey(0), images)
    rng = jax.random.PRNGKey(3)
    parts = jax.device_get(visualize.predict(objective, params, images, rng))
    masks = objective.sample_masks(rng, 2)
    p = objective.spec.patch_size
    masked = np.asarray(patchify(parts["masked"], p))[..., 0]  # [B, L, p*p]: shaded where hidden
    hidden = np.asarray(masks.student.mask, bool)
    np.testing.assert_allclose(masked[hidden], 200 / 255.0 * visualize.HIDDEN_SHADE, atol=1e-5)
    np.testing.assert_allclose(masked[~hidden], 200 / 255.0, atol=1e-5)
    random = masking.sample("random", rng, 2, objective.num_patches, config.mask_ratio, config.amd.teacher_mask_ratio)
    assert not np.array_equal(hidden, np.asarray(random.student.mask, bool))
    tinted = np.asarray(patchify(parts["masks"], p)).reshape(2, objective.num_patches, -1, 3)
    teacher_only = np.zeros_like(hidden)
    teacher_only[np.arange(2)[:, None], np.asarray(masks.diff_ids)] = True
    # teacher-only patches are tinted (red and green channels dimmed, blue kept)
    assert np.all(tinted[teacher_only][..., 0] < tinted[teacher_only][..., 2])
