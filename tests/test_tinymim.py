"""TinyMIM: relations out of one block's attention, the last block's own head count, the
student's colour jitter (against PIL's, which the release's ColorJitter runs), the parameters
the relations never reach, the configs, FLOPs, the CLI smoke run and dry run, sequential
distillation from a TinyMIM student's workdir and export, and the loss against a PyTorch
rendition of the release's own computation (tests/torch_reference.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags

from mdistill.config import apply_smoke, base_config, validation
from mdistill.models.vit import Encoder, ViTSpec, relation_logits
from mdistill.objectives import build_objective
from mdistill.objectives.tinymim import apply_jitter, jitter_draws, relation_kl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = 1e-4


def smoke(**tinymim):
    from configs.tinymim_vitb import get_config

    c = get_config("smoke")
    c.tinymim.update(**tinymim)
    return c


def images(n=4, seed=0, size=32):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)), jnp.uint8)


# ---- the model: relations, the last block's heads --------------------------------------------

def test_relations_are_a_blocks_attention_logits_on_its_norm1_and_nothing_after_runs():
    spec = ViTSpec.parse("mu/4")
    enc = Encoder(spec, last_heads=8)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    params = enc.init(jax.random.PRNGKey(1), x)["params"]
    (qk, vv), _ = enc.apply({"params": params}, x, relations_at=2)
    assert qk.shape == vv.shape == (2, 4, 65, 65) and qk.dtype == jnp.float32
    # by hand: block 1's output, block 2's norm1 and qkv
    _, feats = enc.apply({"params": params}, x, return_blocks=(1,), stop_after=1)
    block = params["block_2"]
    h = feats[1]
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-6)
    h = h * block["norm1"]["scale"] + block["norm1"]["bias"]
    qkv = h @ block["attn"]["qkv"]["kernel"] + block["attn"]["qkv"]["bias"]
    q, k, v = (qkv[..., i * 64:(i + 1) * 64].reshape(2, 65, 4, 16).transpose(0, 2, 1, 3) for i in range(3))
    np.testing.assert_allclose(qk, jnp.einsum("bhqd,bhkd->bhqk", q, k) / 4.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vv, jnp.einsum("bhqd,bhkd->bhqk", v, v) / 4.0, rtol=1e-4, atol=1e-4)
    # blocks past it are never called: their parameters are not needed
    kept = {k: v for k, v in params.items() if k not in ("block_3", "norm")}
    (qk2, _), _ = enc.apply({"params": kept}, x, relations_at=2)
    np.testing.assert_array_equal(qk, qk2)
    # the last block's relations take its own head count, each scaled by its own head_dim
    (last_qk, _), _ = enc.apply({"params": params}, x, relations_at=3)
    assert last_qk.shape == (2, 8, 65, 65)


def test_the_last_heads_change_no_parameter():
    spec = ViTSpec.parse("mu/4")
    x = jnp.zeros((1, 32, 32, 3))
    shapes = lambda e: jax.tree.map(jnp.shape, e.init(jax.random.PRNGKey(0), x)["params"])  # noqa: E731
    assert shapes(Encoder(spec)) == shapes(Encoder(spec, last_heads=16))


def test_relation_logits_scale_by_head_dim():
    qkv = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 3 * 48))
    for heads in (3, 4, 12):
        qk, vv = relation_logits(qkv, heads)
        d = 48 // heads
        q = qkv[0, :, :d]
        np.testing.assert_allclose(qk[0, 0], q @ qkv[0, :, 48:48 + d].T * d ** -0.5, rtol=1e-5, atol=1e-5)
        v = qkv[0, :, 96:96 + d]
        np.testing.assert_allclose(vv[0, 0], v @ v.T * d ** -0.5, rtol=1e-5, atol=1e-5)


def test_relation_kl_is_the_kl_of_the_softmaxes():
    t, s = (jax.random.normal(jax.random.PRNGKey(k), (2, 3, 4, 5)) for k in (0, 1))
    p, q = jax.nn.softmax(t), jax.nn.softmax(s)
    np.testing.assert_allclose(relation_kl(t, s), jnp.mean(jnp.sum(p * jnp.log(p / q), -1)), rtol=1e-5)
    assert float(relation_kl(t, t)) == pytest.approx(0.0, abs=1e-6)


# ---- the student's colour jitter ----------------------------------------------------------------

def pil_jitter(image: np.ndarray, factors, order) -> np.ndarray:
    """ColorJitter's PIL path: ImageEnhance Brightness, Contrast, Color, each rounding to 8 bits."""
    from PIL import Image, ImageEnhance

    img = Image.fromarray(image)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for op in order:
        img = enhancers[op](img).enhance(float(factors[op]))
    return np.asarray(img)


def test_the_jitter_is_pils_colorjitter_up_to_its_8_bit_rounding():
    x = np.asarray(images(6, seed=3))
    factors, order = jitter_draws(jax.random.PRNGKey(4), 6, (0.4, 0.4, 0.4))
    ours = np.asarray(apply_jitter(jnp.asarray(x, jnp.float32) / 255.0, factors, order)) * 255.0
    for i in range(6):
        ref = pil_jitter(x[i], np.asarray(factors[i]), np.asarray(order[i]))
        # PIL truncates to 8 bits after each of the three, off by < 1.2 each, amplified by the next factors
        np.testing.assert_allclose(ours[i], ref, atol=4.5)
        assert np.abs(ours[i] - ref).mean() < 1.6  # PIL truncates: about 0.5 low after each
    # the draws: factors within [0.6, 1.4], orders permutations, and not all alike
    f = np.asarray(factors)
    assert (f >= 0.6).all() and (f <= 1.4).all() and len({tuple(o) for o in np.asarray(order)}) > 1
    assert all(sorted(o) == [0, 1, 2] for o in np.asarray(order).tolist())


def test_zero_strengths_leave_the_image_as_it_is():
    x = jnp.asarray(images(2), jnp.float32) / 255.0
    factors, order = jitter_draws(jax.random.PRNGKey(0), 2, (0.0, 0.0, 0.0))
    np.testing.assert_allclose(apply_jitter(x, factors, order), x, atol=1e-6)


@pytest.mark.slow  # eager: every op dispatched alone
def test_the_teacher_sees_the_crop_and_the_student_its_jittered_copy():
    obj = build_objective(smoke())
    seen = {}
    relations = obj.teacher.relations
    obj.teacher.relations = lambda p, x, b: seen.setdefault("teacher", (x, relations(p, x, b)))[1]
    student = obj.student_relations
    obj.student_relations = lambda p, x, r: seen.setdefault("student", (x, student(p, x, r)))[1]
    x, rng = images(), jax.random.PRNGKey(7)
    params, teacher = obj.init(rng, x[:1]), obj.teacher.init(rng, jnp.zeros((1, 32, 32, 3)))
    obj.loss(params, teacher, x, rng)
    np.testing.assert_allclose(seen["teacher"][0], obj.prepare_images(x))
    np.testing.assert_allclose(seen["student"][0], obj.student_view(x, jax.random.split(rng)[0]), atol=1e-6)
    assert float(jnp.abs(seen["student"][0] - seen["teacher"][0]).mean()) > 0.05


# ---- what is trained ----------------------------------------------------------------------

def test_only_what_the_relations_reach_gets_a_gradient_and_the_rest_is_frozen():
    obj = build_objective(smoke())
    x, rng = images(), jax.random.PRNGKey(0)
    params, teacher = obj.init(rng, x[:1]), obj.teacher.init(rng, jnp.zeros((1, 32, 32, 3)))
    grads = jax.jit(jax.grad(lambda p: obj.loss(p, teacher, x, rng)[0]))(params)
    frozen = obj.frozen()(params)
    names = {"/".join(str(k.key) for k in path): (bool(f), float(jnp.abs(g).max()))
             for (path, g), f in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(frozen))}
    assert {n for n, (f, _) in names.items() if f} == {
        "mae/encoder/norm/scale", "mae/encoder/norm/bias", "mae/encoder/block_3/norm2/scale",
        "mae/encoder/block_3/norm2/bias", "mae/encoder/block_3/attn/proj/kernel", "mae/encoder/block_3/attn/proj/bias",
        "mae/encoder/block_3/mlp/fc1/kernel", "mae/encoder/block_3/mlp/fc1/bias", "mae/encoder/block_3/mlp/fc2/kernel",
        "mae/encoder/block_3/mlp/fc2/bias"}
    for name, (is_frozen, g) in names.items():
        assert (g == 0.0) == is_frozen, name


@pytest.mark.slow
def test_a_train_step_leaves_the_frozen_parameters_as_they_were():
    from mdistill import sharding
    from mdistill.train import Trainer

    trainer = Trainer(smoke(), sharding.make_mesh())
    state, teacher = trainer.init_state(), trainer.load_teacher()
    start = jax.tree.map(np.asarray, state.params)
    for i in range(3):  # the first step's lr is 0 (warm-up from 0)
        state, _ = trainer.step_fn(state, teacher, jax.device_put(np.asarray(images(16, seed=i)),
                                                                 trainer.batch_sharding))
    frozen = trainer.objective.frozen()(start)
    for f, a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(start), jax.tree.leaves(state.params)):
        assert np.array_equal(a, np.asarray(b)) == f


@pytest.mark.slow
def test_same_losses_and_parameters_on_one_and_eight_devices():
    """The jitter and drop path are drawn for the global batch: the devices do not change them."""
    from mdistill import sharding
    from mdistill.train import Trainer

    runs = []
    for devices in (jax.devices()[:1], jax.devices()):
        trainer = Trainer(smoke(), sharding.make_mesh(devices))
        state, teacher, losses = trainer.init_state(), trainer.load_teacher(), []
        for i in range(3):
            state, metrics = trainer.step_fn(state, teacher, jax.device_put(np.asarray(images(16, seed=i)),
                                                                         trainer.batch_sharding))
            losses.append(float(metrics["loss"]))
        runs.append((losses, jax.tree.map(np.asarray, state.params)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1])):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ---- configs ----------------------------------------------------------------------------------

BAD = [
    ("teacher block", dict(teacher_block=6), "config.tinymim.teacher_block=6 is invalid: outside 0..5"),
    ("relations", dict(relations=("qk", "kk")), "config.tinymim.relations=('qk', 'kk') is invalid"),
    ("no relations", dict(relations=()), "config.tinymim.relations=() is invalid"),
    ("jitter", dict(jitter=(0.4, -0.1, 0.4)), "config.tinymim.jitter=(0.4, -0.1, 0.4) is invalid"),
    ("drop path", dict(drop_path=1.0), "config.tinymim.drop_path=1.0 is invalid"),
    ("student heads", dict(student_heads=3), "config.tinymim.student_heads=3 is invalid: must be 0"),
]


@pytest.mark.parametrize("name,tinymim,message", BAD, ids=[b[0] for b in BAD])
def test_invalid_tinymim_config_names_the_field(name, tinymim, message):
    with pytest.raises(validation.ConfigError) as e:
        validation.validate(smoke(**tinymim), num_devices=8)
    assert message in str(e.value)


def test_no_reconstruction_pictures_and_no_clips():
    c = smoke()
    c.visualize_every = 10
    with pytest.raises(validation.ConfigError, match="config.visualize_every=10 is invalid: TinyMIM's student"):
        validation.validate(c, num_devices=8)
    c = smoke()
    c.num_frames = 4
    with pytest.raises(validation.ConfigError, match="config.num_frames=4 is invalid"):
        validation.validate(c, num_devices=8)


@pytest.mark.parametrize("config,student,teacher,block,heads,last", [
    ("tinymim_vitb", "B/16", "L/16", 17, 12, 16),  # the 18th of ViT-L's 24 blocks
    ("tinymim_vits", "S/16", "B/16", 11, 6, 12),   # TinyMIM-B's last (mae_vit_base: intermediate 12)
    ("tinymim_vitt", "Ti/16", "B/16", 11, 6, 12),  # the release pre-trains ViT-T with 6 heads
])
def test_the_configs_take_the_releases_settings(config, student, teacher, block, heads, last):
    import importlib

    c = importlib.import_module(f"configs.{config}").get_config()
    validation.validate(c, num_devices=256)
    obj = build_objective(c)
    assert (c.student.variant, c.teacher.variant, obj.teacher_block) == (student, teacher, block)
    assert (obj.spec.num_heads, obj.encoder.heads_of(11), obj.encoder.heads_of(10)) == (heads, last, heads)
    assert tuple(c.tinymim.relations) == ("qk", "vv") and tuple(c.tinymim.jitter) == (0.4, 0.4, 0.4)
    assert (c.tinymim.drop_path, c.batch_size, c.num_epochs, c.warmup_epochs, c.optim.blr) == (
        0.1, 4096, 300.0, 15.0, 1.5e-4)
    assert (c.data.augment, tuple(c.data.crop_scale), c.visualize_every) == ("mae", (0.2, 1.0), 0)
    assert obj.teacher.blocks_run(obj.teacher_blocks) == block + 1


def test_the_flop_model_counts_every_patch_and_no_decoder():
    from benchmarks import flops

    c = smoke()
    terms = flops.step_flops(c)
    assert terms["decoder"] == 0.0 and terms["heads"] == 0.0
    c2 = smoke(teacher_block=-1)  # one more teacher block: exactly one block on cls + 64 patches more
    extra = flops.step_flops(c2)["teacher_forward"] - terms["teacher_forward"]
    assert extra == pytest.approx(c.batch_size * flops.block_flops(65, 128))


@pytest.mark.slow
def test_the_compiled_step_matches_the_flop_model():
    from benchmarks import flops
    from mdistill import sharding, train

    c = smoke()
    summary = train.summarize(c, sharding.make_mesh())
    assert 1.0 <= summary["flops_per_step"] / flops.step_flops(c)["total"] <= 1.15


# ---- the command line: smoke run, dry run, sequential distillation -------------------------------

def cli(*args, check=True):
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_dry_run_describes_teacher_target_block_and_student():
    out = cli("mdistill.main", "--config=configs/tinymim_vitb.py:smoke", "--dry_run")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["method"], summary["student"], summary["teacher"]) == ("tinymim", "mu/4", "xs/4")
    assert (summary["teacher_relation_block"], summary["teacher_relation_heads"]) == (4, 4)
    assert (summary["student_relation_block"], summary["student_relation_heads"]) == (3, 4)
    assert summary["teacher_blocks_run"] == 5 and summary["relations"] == ["qk", "vv"]
    assert "teacher xs/4 block 4 (0-based: 5 of 6)" in summary["distilled"]


@pytest.mark.slow
def test_sequential_distillation_from_a_tinymim_students_workdir_and_export(tmp_path):
    first = tmp_path / "first"
    out = cli("mdistill.main", "--config=configs/tinymim_vitb.py:smoke", f"--workdir={first}",
              "--config.total_steps=10", "--config.log_every=5")
    lines = [json.loads(line) for line in open(first / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [5, 10] and all(np.isfinite(r["loss"]) for r in lines)
    assert {"qk_loss", "vv_loss"} <= set(lines[-1])
    export = tmp_path / "first.safetensors"
    cli("mdistill.weights.convert", "--export", f"--input={first}", f"--output={export}")
    losses = []
    for teacher in (first, export):  # its student, a mu/4, is the next run's teacher
        work = tmp_path / f"from_{teacher.name}"
        out = cli("mdistill.main", "--config=configs/tinymim_vitb.py:smoke", f"--workdir={work}",
                  f"--config.teacher.checkpoint={teacher}", "--config.total_steps=5", "--config.log_every=5")
        assert "config.teacher.variant 'xs/4' -> 'mu/4'" in out.stdout + out.stderr
        losses.append(json.loads(open(work / "metrics.jsonl").readline())["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # the same weights either way


# ---- parity with the release's computation (PyTorch) ----------------------------------------

@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("torch")
    import torch_reference

    return torch_reference


@pytest.mark.parametrize("jitter,relations", [((0.0, 0.0, 0.0), ("qk", "vv")), ((0.4, 0.4, 0.4), ("qk", "vv")),
                                              ((0.4, 0.4, 0.4), ("vv",))])
def test_the_loss_is_the_releases(ref, tmp_path, jitter, relations):
    """Same weights, same inputs: the release's student (2 heads, its last block the teacher's
    4) and teacher (relations of its 5th block of 6), forward_kd_loss of qk and vv."""
    import torch

    from mdistill.weights import loader

    c = smoke(jitter=jitter, relations=relations, drop_path=0.0, teacher_block=4, student_heads=2)
    obj = build_objective(c)
    student = ref.randomize(ref.TinyMIMViT(32, 4, 3, 64, 4, 2, relation_block=4, last_heads=4), 1).eval()
    teacher = ref.randomize(ref.TinyMIMViT(32, 4, 3, 128, 6, 4, relation_block=5), 2).eval()
    paths = {}
    for name, model in (("student", student), ("teacher", teacher)):
        paths[name] = str(tmp_path / f"{name}.pth")
        torch.save({"model": model.state_dict()}, paths[name])
    params = {"mae": {"encoder": loader.load_encoder(paths["student"], "mu/4")}}
    teacher_params = obj.teacher.prepare(loader.load_encoder(paths["teacher"], "xs/4"))

    x, rng = images(3, seed=5), jax.random.PRNGKey(11)
    loss, metrics = jax.jit(obj.loss)(params, teacher_params, x, rng)
    as_torch = lambda a: torch.from_numpy(np.asarray(a, np.float32).transpose(0, 3, 1, 2).copy())  # noqa: E731
    with torch.no_grad():
        t_qk, t_vv = teacher(as_torch(obj.prepare_images(x)))  # the crop, without jitter
        s_qk, s_vv = student(as_torch(obj.student_view(x, jax.random.split(rng)[0])))
        qk_loss, vv_loss = ref.tinymim_kd_loss(s_qk, t_qk), ref.tinymim_kd_loss(s_vv, t_vv)
    expected = {"qk": float(qk_loss), "vv": float(vv_loss)}
    assert min(expected.values()) > 1e-2  # relations that differ: the comparison means something
    for name in relations:
        np.testing.assert_allclose(float(metrics[f"{name}_loss"]), expected[name], rtol=PARITY, atol=PARITY)
    np.testing.assert_allclose(float(loss), sum(expected[n] for n in relations), rtol=PARITY, atol=PARITY)
