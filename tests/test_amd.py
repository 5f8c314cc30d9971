"""AMD: nested masks, the generator, the wiring of both alignments, a smoke run, configs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdistill import masking
from mdistill.config import apply_smoke, base_config
from mdistill.models.heads import Generator
from mdistill.models.vit import gather_tokens
from mdistill.objectives import build_objective
from mdistill.objectives.amd import generator_name
from mdistill.train import flops_of, train
from mdistill.config.validation import ConfigError, validate


def smoke(**amd):
    c = apply_smoke(base_config())
    c.method, c.mask_ratio = "amd", 0.9
    c.amd.update(**amd)
    return c


def images(n=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3)), jnp.uint8)


# ---- masks ------------------------------------------------------------------------------

def check_nested(m: masking.AsymmetricMask, num_patches: int, keep_s: int, keep_t: int):
    student, teacher = np.asarray(m.student.ids_keep), np.asarray(m.teacher_ids)
    assert student.shape[1] == keep_s and teacher.shape[1] == keep_t
    assert m.diff_ids.shape[1] == keep_t - keep_s
    hidden = np.asarray(m.student.mask)
    for b in range(student.shape[0]):
        s, t, d = set(student[b]), set(teacher[b]), set(np.asarray(m.diff_ids[b]))
        assert len(s) == keep_s and len(t) == keep_t  # no repeats
        assert s < t and d == t - s                    # nesting; the difference is exact
        np.testing.assert_array_equal(teacher[b, :keep_s], student[b])  # student tokens first
        # the student's Mask agrees: hidden exactly where the student does not look
        np.testing.assert_array_equal(np.flatnonzero(hidden[b] == 0), np.sort(student[b]))
        assert 0 <= teacher[b].min() and teacher[b].max() < num_patches


@pytest.mark.parametrize("num_patches,ratio_s,ratio_t,keep_s,keep_t",
                         [(196, 0.9, 0.75, 19, 49), (64, 0.9, 0.75, 6, 16), (49, 0.9, 0.5, 4, 24)])
def test_asymmetric_masks_nest_with_exact_static_counts(num_patches, ratio_s, ratio_t, keep_s, keep_t):
    fn = jax.jit(lambda r: masking.asymmetric_masking(r, 32, num_patches, ratio_s, ratio_t))
    for seed in range(3):  # every key gives the same static shapes (no recompiles)
        check_nested(fn(jax.random.PRNGKey(seed)), num_patches, keep_s, keep_t)
    assert fn._cache_size() == 1


def test_asymmetric_masks_are_a_pure_function_of_the_key():
    a = masking.asymmetric_masking(jax.random.PRNGKey(3), 8, 196, 0.9, 0.75)
    b = masking.asymmetric_masking(jax.random.PRNGKey(3), 8, 196, 0.9, 0.75)
    c = masking.asymmetric_masking(jax.random.PRNGKey(4), 8, 196, 0.9, 0.75)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.teacher_ids, c.teacher_ids)
    assert not np.array_equal(a.teacher_ids[0], a.teacher_ids[1])  # per-sample masks


@pytest.mark.parametrize("ratio_t", [0.9, 0.95, 0.899])
def test_teacher_must_see_more_than_the_student(ratio_t):
    # 0.899 is below 0.9, but leaves the same 6 of 64 patches visible
    with pytest.raises(ValueError, match="need 1 <= student < teacher"):
        masking.asymmetric_masking(jax.random.PRNGKey(0), 2, 64, 0.9, ratio_t)


def test_tube_masks_are_identical_across_frames_and_nest():
    frames, per_frame, batch = 4, 49, 6
    m = masking.asymmetric_tube_masking(jax.random.PRNGKey(0), batch, frames, per_frame, 0.9, 0.5)
    # VideoMAE / AMD hide int(0.9 * 49) = 44 and int(0.5 * 49) = 24 patches of a frame
    check_nested(m, frames * per_frame, frames * 5, frames * 25)
    for ids in (m.student.ids_keep, m.teacher_ids, m.diff_ids):
        grid = np.zeros((batch, frames, per_frame), bool)
        for b in range(batch):
            grid[b].reshape(-1)[np.asarray(ids[b])] = True
        assert (grid == grid[:, :1]).all()  # the same spatial set on every frame
    hidden = np.asarray(m.student.mask).reshape(batch, frames, per_frame)
    assert (hidden == hidden[:, :1]).all() and not (hidden[0] == hidden[1]).all()

    plain = masking.tube_masking(jax.random.PRNGKey(1), batch, frames, per_frame, 0.75)
    hidden = np.asarray(plain.mask).reshape(batch, frames, per_frame)
    assert plain.ids_keep.shape == (batch, frames * 13)  # int(0.75 * 49) = 36 hidden
    assert (hidden == hidden[:, :1]).all() and (hidden.sum(axis=2) == per_frame - 13).all()


# ---- generator ----------------------------------------------------------------------------

def test_generator_predicts_one_feature_per_target_in_target_order():
    gen = Generator(width=32, depth=2, num_heads=2, grid=4)
    m = masking.asymmetric_masking(jax.random.PRNGKey(0), 3, 16, 0.75, 0.25)  # 4 visible, 8 targets
    visible = jax.random.normal(jax.random.PRNGKey(1), (3, 1 + 4, 32))
    params = jax.jit(gen.init)(jax.random.PRNGKey(2), visible, m.student.ids_keep, m.diff_ids)
    apply = jax.jit(gen.apply)
    out = apply(params, visible, m.student.ids_keep, m.diff_ids)
    assert out.shape == (3, 8, 32)
    # each output belongs to its target patch: permuting the targets permutes the outputs
    perm = jnp.asarray([5, 2, 7, 0, 1, 6, 3, 4])
    np.testing.assert_allclose(apply(params, visible, m.student.ids_keep, m.diff_ids[:, perm]),
                               out[:, perm], atol=1e-5)
    assert set(params["params"]) == {"mask_token", "block_0", "block_1"}


# ---- the objective --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def amd_setup():
    obj = build_objective(smoke())
    params = jax.jit(obj.init)(jax.random.PRNGKey(0), images(1))  # jitted: eager init is slow
    teacher = jax.jit(obj.teacher.init)(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))
    return obj, params, teacher


@pytest.mark.slow
def test_teacher_gets_no_gradient_and_every_student_part_does(amd_setup):
    obj, params, teacher = amd_setup
    loss = lambda p, t: obj.loss(p, t, images(), jax.random.PRNGKey(0))[0]  # noqa: E731
    grad_student, grad_teacher = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, teacher)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad_teacher))
    assert set(params) == {"mae", "heads", "generators"}
    assert set(params["heads"]) == {"proj_s1_t2", "proj_s3_t5"}
    assert set(params["generators"]) == {"gen_s1_t2", "gen_s3_t5"}
    for part in ("heads", "generators"):
        for path, g in jax.tree_util.tree_leaves_with_path(grad_student[part]):
            frozen = path[-1].key == "mask_token"  # the release's: never trained (amd.train_mask_tokens)
            assert (float(jnp.abs(g).max()) == 0.0) == frozen, path
    # bias-free projection, as in the official code
    assert set(params["heads"]["proj_s1_t2"]["out"]) == {"kernel"}


class PlantedTeacher:
    """Known features: at block b, the token of patch k carries features[:, 1 + k] + b."""

    def __init__(self, features, spec):
        self.planted, self.spec, self.calls = features, spec, []

    def features(self, params, x, ids, blocks):
        self.calls.append((ids, tuple(blocks)))
        tokens = jnp.concatenate([self.planted[:, :1], gather_tokens(self.planted[:, 1:], ids)], axis=1)
        return {b: tokens + b for b in blocks}


class OracleGenerator:
    """Predicts the planted block-t features at the targets it is asked for, plus one; its
    'parameters' are the teacher block t."""

    def __init__(self, features):
        self.planted = features

    def apply(self, variables, projected, ids_visible, ids_target):
        return gather_tokens(self.planted[:, 1:], ids_target) + variables["params"]["mask_token"] + 1.0


def test_alignments_compare_planted_teacher_features_at_the_right_tokens():
    """The student's projected features are the teacher's at the student's tokens plus 2, the
    generator's the teacher's at its targets plus 1: the L2 losses are then exactly 4 and 1,
    but only if the teacher is fed the student's tokens, then the difference tokens, and each
    alignment slices its targets where they lie."""
    obj = build_objective(smoke(dir_weight=2.0, gen_weight=3.0, rec_weight=0.5))
    planted = jax.random.normal(jax.random.PRNGKey(5), (4, 1 + obj.num_patches, obj.teacher.spec.width))
    obj.teacher = PlantedTeacher(planted, obj.teacher.spec)
    obj.generator = OracleGenerator(planted)

    def student_forward(params, x, mask):  # cls + visible tokens, as the real student returns them
        feats = jnp.concatenate([planted[:, :1], gather_tokens(planted[:, 1:], mask.ids_keep)], axis=1)
        return None, {s: feats for s in obj.student_blocks}, jnp.float32(0.25)

    obj.student_forward = student_forward
    obj.project = lambda params, feats: {(s, t): feats[s] + t + 2.0 for s, t in obj.pairs}
    params = {"generators": {generator_name(s, t): {"mask_token": float(t)} for s, t in obj.pairs}}

    rng = jax.random.PRNGKey(9)
    total, metrics = obj.loss(params, None, images(), rng)  # eager: no model runs here
    (ids, blocks), = obj.teacher.calls
    np.testing.assert_array_equal(ids, obj.sample_masks(rng, 4).teacher_ids)
    assert blocks == (2, 5)
    np.testing.assert_allclose(float(metrics["dir_loss"]), 4.0, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["gen_loss"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(total), 0.5 * 0.25 + 2.0 * 4.0 + 3.0 * 1.0, rtol=1e-5)
    # a generator that answers for the wrong patches (its targets reversed) is caught
    oracle = obj.generator.apply
    obj.generator.apply = lambda v, p, ids_v, ids_t: oracle(v, p, ids_v, ids_t[:, ::-1])
    assert float(obj.loss(params, None, images(), rng)[1]["gen_loss"]) > 1.5


def test_teacher_flops_stop_at_the_deepest_aligned_block():
    def loss_flops(pairs):
        obj = build_objective(smoke(pairs=pairs))
        params = jax.eval_shape(obj.init, jax.random.PRNGKey(0), images(1))
        teacher = jax.eval_shape(obj.teacher.init, jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))
        compiled = jax.jit(obj.loss).lower(params, teacher, images(), jax.random.PRNGKey(0)).compile()
        return obj, teacher, flops_of(compiled)

    obj, teacher, deep = loss_flops(((1, 2), (3, 5)))
    _, _, shallow = loss_flops(((1, 2), (3, 3)))
    # the difference is exactly two teacher blocks on cls + the 16 teacher-visible tokens
    ids = jnp.zeros((4, 16), jnp.int32)
    x = jnp.zeros((4, 32, 32, 3))
    block = [flops_of(jax.jit(lambda p, b=b: obj.teacher.features(p, x, ids, (b,))).lower(teacher).compile())
             for b in (3, 5)]
    np.testing.assert_allclose(deep - shallow, block[1] - block[0], rtol=0.02)
    assert obj.teacher.blocks_run(obj.teacher_blocks) == 6


@pytest.mark.slow
def test_smoke_run_losses_fall(tmp_path):
    c = smoke()
    c.total_steps, c.log_every, c.checkpoint_every = 20, 10, 20  # compiling is most of it
    last = train(c, str(tmp_path))
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [10, 20]
    for key in ("loss", "rec_loss", "dir_loss", "gen_loss"):
        assert lines[-1][key] < lines[0][key], key
    assert np.isfinite(last["loss"]) and sorted(os.listdir(tmp_path / "checkpoints")) == ["20"]


# ---- the generators' mask tokens: the release's (never trained) or trained -------------------

def mask_tokens(params) -> dict:
    return {name: np.asarray(gen["mask_token"]) for name, gen in params["generators"].items()}


def test_mask_tokens_start_as_the_releases_truncated_normal():
    """timm's trunc_normal_(std=.02) with a=-std, b=std, as the release draws them."""
    generator, ids = Generator(width=64, depth=1, num_heads=1, grid=8), jnp.zeros((1, 1), jnp.int32)
    draw = jax.jit(jax.vmap(lambda key: generator.init(key, jnp.zeros((1, 2, 64)), ids, ids)["params"]["mask_token"]))
    token = draw(jax.random.split(jax.random.PRNGKey(0), 32))  # 2048 values
    assert float(jnp.abs(token).max()) <= 0.02
    assert 0.0095 < float(token.std()) < 0.0120  # 0.02 x the std of a normal cut at +-1 (0.54)


@pytest.mark.slow
@pytest.mark.parametrize("trained", [False, True])
def test_mask_tokens_stay_at_their_init_unless_trained(trained):
    from mdistill import sharding
    from mdistill.train import Trainer

    trainer = Trainer(smoke(train_mask_tokens=trained), sharding.make_mesh())
    state, teacher = trainer.init_state(), trainer.load_teacher()
    start = jax.tree.map(np.asarray, state.params)
    for i in range(3):  # the first step's lr is 0 (warm-up from 0): two real updates
        state, _ = trainer.step_fn(state, teacher, jax.device_put(images(16, seed=i), trainer.batch_sharding))
    after = jax.tree.map(np.asarray, state.params)
    for name, token in mask_tokens(after).items():
        assert np.array_equal(token, mask_tokens(start)[name]) != trained, name
        others = jax.tree.leaves({k: v for k, v in after["generators"][name].items() if k != "mask_token"})
        before = jax.tree.leaves({k: v for k, v in start["generators"][name].items() if k != "mask_token"})
        assert not all(np.array_equal(a, b) for a, b in zip(others, before))  # the rest of the generator trains


@pytest.mark.slow
def test_a_resumed_run_keeps_its_mask_tokens_and_ends_bitwise_equal(tmp_path):
    import shutil

    from mdistill.weights import checkpoint

    c = smoke()
    c.total_steps, c.checkpoint_every, c.log_every = 8, 4, 4
    train(c, str(tmp_path / "clean"))
    train(c, str(tmp_path / "resumed"))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")  # as if stopped after step 4
    train(c, str(tmp_path / "resumed"))
    clean, _ = checkpoint.load_params(str(tmp_path / "clean"), None)
    resumed, meta = checkpoint.load_params(str(tmp_path / "resumed"), None)
    assert meta["step"] == 8 and set(mask_tokens(resumed)) == {generator_name(s, t) for s, t in ((1, 2), (3, 5))}
    for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


# ---- configs --------------------------------------------------------------------------------

BAD = [
    ("equal ratios", dict(teacher_mask_ratio=0.9), "config.amd.teacher_mask_ratio=0.9 is invalid"),
    ("teacher ratio above", dict(teacher_mask_ratio=0.95), "config.amd.teacher_mask_ratio=0.95"),
    ("same visible count", dict(teacher_mask_ratio=0.899), "no more than the student's 6"),
    ("student block", dict(pairs=((4, 2),)), "student block 4 is outside 0..3"),
    ("teacher block", dict(pairs=((1, 2), (3, 6))), "teacher block 6 is outside 0..5"),
    ("no pairs", dict(pairs=()), "config.amd.pairs=()"),
    ("generator heads", dict(generator_heads=3),
     "config.amd.generator_heads=3 is invalid: must divide the teacher width 128"),
    ("generator depth", dict(generator_depth=0), "config.amd.generator_depth=0"),
    ("loss", dict(loss="hinge"), "config.amd.loss='hinge'"),
    ("weight", dict(gen_weight=-1.0), "config.amd.gen_weight=-1.0"),
]


@pytest.mark.parametrize("name,amd,message", BAD, ids=[b[0] for b in BAD])
def test_invalid_amd_config_names_the_field(name, amd, message):
    with pytest.raises(ConfigError) as e:
        validate(smoke(**amd), num_devices=8)
    assert message in str(e.value)


def test_amd_vitb_uses_the_published_video_settings():
    from configs.amd_vitb import get_config

    c = get_config()
    validate(c, num_devices=256)
    assert (c.method, c.student.variant, c.teacher.variant) == ("amd", "B/16", "L/16")
    assert (c.mask_ratio, c.amd.teacher_mask_ratio) == (0.9, 0.75)
    assert tuple(map(tuple, c.amd.pairs)) == ((5, 11), (11, 23))  # {6, 12} <-> {12, 24}, 1-based
    assert (c.amd.generator_depth, c.amd.loss, c.student.decoder_depth, c.optim.grad_clip) == (2, "l2", 4, 0.02)
    obj = build_objective(c)
    assert obj.teacher.blocks_run(obj.teacher_blocks) == 24
    assert masking.num_visible(obj.num_patches, c.mask_ratio) == 19
    assert masking.num_visible(obj.num_patches, c.amd.teacher_mask_ratio) == 49
