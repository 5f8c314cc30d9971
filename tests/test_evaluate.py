"""Downstream evaluation: k-NN (standalone and as a pre-training monitor), linear probe and
fine-tuning, on tiny models and 8 simulated devices (tests/conftest.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from mdistill import sharding
from mdistill.config import apply_smoke, base_config
from mdistill.data.fashion_mnist import DEFAULT_DIR as FMNIST_DIR
from mdistill.evaluate import augment, common, finetune, knn, linprobe, randaugment
from mdistill.models.vit import Encoder, ViTSpec
from mdistill.weights import checkpoint


# ---- k-NN -----------------------------------------------------------------------------
def clusters(n, num_classes=10, dim=32, seed=0, noise=0.3):
    """Features around one random centre per class: separable by construction."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    return (centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32), labels.astype(np.int32)


def test_knn_separable_is_accurate_and_shuffled_is_chance():
    train_x, train_y = clusters(2000, seed=0)
    test_x, test_y = clusters(500, seed=0)  # same centres (seed), fresh noise below
    test_x = test_x + 0.3 * np.random.default_rng(1).normal(size=test_x.shape).astype(np.float32)
    good = knn.knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07)
    assert good["knn_top1"] > 95.0 and good["knn_top5"] >= good["knn_top1"]
    shuffled = np.random.default_rng(2).permutation(train_y)
    chance = knn.knn_accuracy(train_x, shuffled, test_x, test_y, k=20, temperature=0.07)
    assert abs(chance["knn_top1"] - 10.0) < 6.0


def test_knn_ignores_padding_rows():
    train_x, train_y = clusters(200, num_classes=4, seed=3)
    padded_x = np.concatenate([train_x, 100 * np.ones((50, 32), np.float32)])  # close to everything
    padded_y = np.concatenate([train_y, -np.ones(50, np.int32)])
    a = knn.knn_accuracy(train_x, train_y, train_x[:64], train_y[:64], k=5, chunk=32)
    b = knn.knn_accuracy(padded_x, padded_y, train_x[:64], train_y[:64], k=5, chunk=32)
    assert a == b


def smoke_config():
    c = apply_smoke(base_config())
    c.eval.update(knn_every=5, knn_train_examples=64, knn_test_examples=32, batch_size=16, knn_k=5)
    return c


def test_knn_monitor_schedule_and_switch():
    monitor = knn.KNNMonitor(smoke_config(), sharding.make_mesh())
    assert monitor.maybe_run(3, params=None) == {}  # not due: nothing is computed
    assert len(monitor.train_split) == 64 and len(monitor.test_split) == 32
    c = smoke_config()
    c.eval.knn_every, c.best_metric = 0, "max:knn_top1"
    with pytest.raises(ValueError, match="knn_every"):
        knn.KNNMonitor(c, sharding.make_mesh())


def test_unlabelled_source_is_a_clear_error(monkeypatch):
    class NoLabels:
        def __len__(self):
            return 10

        def images(self, idx):
            return np.zeros((len(idx), 28, 28, 1), np.uint8)

    monkeypatch.setattr(common.data, "build_source", lambda config, split: NoLabels())
    c = smoke_config()
    c.data.source = "tfds"
    with pytest.raises(ValueError, match="has no labels"):
        knn.KNNMonitor(c, sharding.make_mesh())
    from configs.finetune_fmnist import get_config

    c = get_config("smoke")
    c.data.source = "tfds"
    with pytest.raises(ValueError, match="has no labels"):
        finetune.FineTuner(c, sharding.make_mesh())


# ---- fine-tuning pieces -----------------------------------------------------------------
def test_layer_decay_multipliers_per_block_and_in_the_optimizer():
    from configs.finetune_fmnist import get_config

    c = get_config("smoke")
    c.finetune.layer_decay, c.warmup_steps = 0.5, 0
    ft = finetune.FineTuner(c, sharding.make_mesh())  # mu/4: layer ids 0 (embed), 1..4 (blocks), 5 (head)
    m = finetune.layer_decay_multipliers(ft.abstract_params, 4, 0.5)
    assert m["head"]["kernel"] == 1.0 and m["fc_norm"]["scale"] == 1.0
    for i in range(4):
        assert m["encoder"][f"block_{i}"]["attn"]["qkv"]["kernel"] == 0.5 ** (4 - i)
        assert m["encoder"][f"block_{i}"]["norm1"]["bias"] == 0.5 ** (4 - i)
    assert m["encoder"]["patch_embed"]["proj"]["kernel"] == 0.5 ** 5 and m["encoder"]["cls_token"] == 0.5 ** 5
    # AdamW's first step moves every parameter by ~lr; layer decay scales that per block
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape), ft.abstract_params)
    updates, _ = jax.jit(lambda p: ft.tx.update(jax.tree.map(jnp.ones_like, p), ft.tx.init(p), p))(zeros)
    peak = float(jnp.abs(updates["head"]["bias"][0]))
    assert peak == pytest.approx(3e-3, rel=1e-3)
    for i in range(4):
        assert float(jnp.abs(updates["encoder"][f"block_{i}"]["mlp"]["fc1"]["bias"][0])) == pytest.approx(
            peak * 0.5 ** (4 - i), rel=1e-3)


def test_mixup_cutmix_keep_label_mass():
    """Each image i mixes with image 7-i. With constant images, the share of the partner's
    pixels is readable from the mean; the partner's label must get the same share."""
    values = jnp.arange(8.0)
    images = jnp.broadcast_to(values[:, None, None, None], (8, 16, 16, 1))
    labels, s = np.arange(8), 0.1
    mix = jax.jit(lambda rng: augment.mixup_cutmix(rng, images, labels, 8, 0.8, 1.0, smoothing=s))
    for seed in range(6):
        x, t = map(np.asarray, mix(jax.random.PRNGKey(seed)))
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-5)
        assert np.all(t >= s / 8 - 1e-6)
        pixel_share = (x.mean(axis=(1, 2, 3)) - values) / (values[::-1] - values)
        label_share = (t[np.arange(8), labels[::-1]] - s / 8) / (1 - s)
        np.testing.assert_allclose(label_share, pixel_share, atol=1e-5)


def test_random_erasing_changes_only_some_images():
    erase = jax.jit(lambda r, x: augment.random_erasing(r, x, prob=0.25))
    out = erase(jax.random.PRNGKey(0), jnp.zeros((64, 16, 16, 3)))
    erased = np.asarray(jnp.any(out != 0, axis=(1, 2, 3)))
    assert 4 <= erased.sum() <= 32


def test_randaugment_operations_match_pil():
    from PIL import Image, ImageOps

    img = np.random.default_rng(0).integers(0, 256, (12, 10, 3)).astype(np.uint8)
    pil, x = Image.fromarray(img), jnp.asarray(img, jnp.float32)
    exact = {"equalize": (0.0, ImageOps.equalize(pil)), "posterize": (0.6, ImageOps.posterize(pil, 2)),
             "solarize": (0.5, ImageOps.solarize(pil, 128))}
    for name, (level, ref) in exact.items():
        np.testing.assert_array_equal(randaugment.apply_op(name, x, level), np.asarray(ref, np.float32), err_msg=name)
    # geometric: bilinear sampling as PIL's, away from the borders
    fill = (124, 116, 104)
    ours = randaugment.apply_op("shear_x", x, 0.5, fill)
    ref = pil.transform(pil.size, Image.AFFINE, (1, 0.15, 0, 0, 1, 0), Image.BILINEAR, fillcolor=fill)
    assert np.mean(np.abs(np.asarray(ours) - np.asarray(ref, np.float32))) < 3.0


def test_rand_augment_on_a_batch():
    images = jax.random.uniform(jax.random.PRNGKey(0), (16, 12, 12, 1), minval=0, maxval=255)
    out = jax.jit(lambda r, x: randaugment.rand_augment(r, x, num_layers=2, fill=(73,)))(jax.random.PRNGKey(1), images)
    changed = np.asarray(jnp.any(out != images, axis=(1, 2, 3)))
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 255
    assert 4 <= changed.sum() <= 16  # each of 2 ops applies with probability 0.5: ~75% change


def test_drop_path_keeps_parameter_names_and_is_identity_when_deterministic():
    spec = ViTSpec(width=16, depth=2, num_heads=2, patch_size=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    plain, dropping = Encoder(spec), Encoder(spec, drop_path=0.5)
    shapes = jax.eval_shape(plain.init, jax.random.PRNGKey(1), x)
    assert jax.tree.structure(shapes) == jax.tree.structure(jax.eval_shape(dropping.init, jax.random.PRNGKey(1), x))
    rng = np.random.default_rng(0)  # parameters drawn on the host: compiling an init costs more than the test
    params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), jnp.float32), shapes)

    @jax.jit
    def outputs(params, rng):
        drop = lambda det: dropping.apply(params, x, deterministic=det, rngs={"dropout": rng})[0]  # noqa: E731
        return plain.apply(params, x)[0], drop(True), drop(False)

    reference, deterministic, training = outputs(params, jax.random.PRNGKey(1))
    np.testing.assert_allclose(deterministic, reference, atol=1e-6)
    assert not np.allclose(training, reference)


# ---- end to end, on a pre-trained student ------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 20-step MAE smoke run with the k-NN monitor every 10 steps, on a 4 x 2 (data x fsdp)
    mesh: the monitor computes features from the training state where it is sharded."""
    from mdistill import train

    c = apply_smoke(base_config())
    c.total_steps, c.log_every, c.checkpoint_every = 20, 20, 20
    c.eval.update(knn_every=10, knn_train_examples=128, knn_test_examples=64, batch_size=32)
    if "mesh" in c:
        c.mesh.update(data=4, fsdp=2)
    workdir = str(tmp_path_factory.mktemp("pretrained"))
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    train.train(c, workdir, mesh, knn.monitors(c, mesh))
    return workdir


@pytest.mark.slow
def test_pretraining_writes_knn_metrics(pretrained):
    with open(os.path.join(pretrained, "metrics.jsonl")) as f:
        records = {r["step"]: r for r in map(json.loads, f)}
    assert sorted(records) == [10, 20]  # step 10 is logged for the monitor although log_every=20
    for r in records.values():
        assert 0.0 <= r["knn_top1"] <= r["knn_top5"] <= 100.0 and "loss" in r


@pytest.mark.slow
def test_standalone_knn_reproduces_the_monitor(pretrained, tmp_path):
    results = knn.evaluate_checkpoint(pretrained, str(tmp_path))
    with open(os.path.join(pretrained, "metrics.jsonl")) as f:
        final = [json.loads(line) for line in f][-1]
    assert results["train_examples"] == 128 and results["test_examples"] == 64
    assert abs(results["knn_top1"] - final["knn_top1"]) <= 100 / 64 + 1e-6  # at most one query apart
    assert json.load(open(tmp_path / "knn.json"))["knn_top1"] == results["knn_top1"]


@pytest.mark.slow
def test_finetune_from_pretrained_improves_accuracy_and_resumes(pretrained, tmp_path):
    from configs.finetune_fmnist import get_config

    c = get_config("smoke")
    # pre-trained at 32px; position embeddings are sin-cos, so the encoder also runs at 16px
    c.pretrained, c.image_size, c.total_steps, c.eval_every, c.checkpoint_every = pretrained, 16, 40, 40, 40
    results = finetune.run(c, str(tmp_path))
    assert results["top1"] > results["initial_top1"] + 5.0, results
    assert (tmp_path / "finetune.json").exists() and (tmp_path / "best").is_dir()
    assert (tmp_path / "checkpoints" / "40").is_dir()
    again = finetune.run(c, str(tmp_path))  # a finished run resumes at its end and reports the same
    assert again["top1"] == results["top1"] and again["initial_top1"] == results["initial_top1"]


@pytest.mark.slow
def test_linprobe_on_pretrained(pretrained, tmp_path):
    from configs.linprobe_fmnist import get_config

    c = get_config("smoke")
    c.pretrained, c.num_epochs = pretrained, 3.0
    results = linprobe.run(c, str(tmp_path))
    assert 10.0 < results["top1"] <= 100.0 and (tmp_path / "linprobe.json").exists()


@pytest.mark.slow
def test_evaluated_encoders_are_placed_by_the_partition_rules(pretrained):
    """load_encoder and the random baseline split the encoder over 'fsdp' as they make it (as
    fine-tuning's state is split), so an fsdp evaluation never holds a whole copy per device;
    the values are those of a replicated one."""
    mesh, whole = sharding.make_mesh(shape={"data": 4, "fsdp": 2}), sharding.make_mesh()
    loaded = common.load_encoder(pretrained, mesh, "mu/4", 32, 3)[0]
    random = common.random_encoder("mu/4", 32, 3, mesh)
    for params, replicated in ((loaded, common.load_encoder(pretrained, whole, "mu/4", 32, 3)[0]),
                               (random, common.random_encoder("mu/4", 32, 3, whole))):
        rules = jax.tree.leaves(sharding.tree_shardings(mesh, params))
        assert all(x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(jax.tree.leaves(params), rules))
        assert any("fsdp" in x.sharding.spec for x in jax.tree.leaves(params))  # the MLP kernels are split
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(replicated))


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_the_config_is_a_clear_error(pretrained, tmp_path):
    from configs.finetune_fmnist import get_config as finetune_config
    from configs.linprobe_fmnist import get_config as linprobe_config

    # a variant given on the command line that is not the run's: refused before anything is read
    flag = {"student.variant"}
    c = finetune_config("smoke")
    c.student.variant, c.pretrained = "xs/4", pretrained  # 128 wide, 6 blocks; the checkpoint is mu/4
    with pytest.raises(ValueError, match=r"--config.student.variant='xs/4' disagrees with config.pretrained .* 'mu/4'"):
        finetune.run(c, str(tmp_path / "ft"), explicit=flag)
    c = linprobe_config("smoke")
    c.student.variant, c.pretrained = "xs/4", pretrained
    with pytest.raises(ValueError, match="disagrees with config.pretrained"):
        linprobe.run(c, str(tmp_path / "lp"), explicit=flag)
    # a config file's variant is a default: the run's replaces it
    c = linprobe_config("smoke")
    c.student.variant, c.pretrained, c.total_steps = "xs/4", pretrained, 1
    assert linprobe.run(c, str(tmp_path / "lp2"))["data"]["source"] == "synthetic" and c.student.variant == "mu/4"


@pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz")),
                    reason=f"Fashion-MNIST IDX files not in {FMNIST_DIR}")
def test_fashion_mnist_configs_read_labelled_splits():
    from configs.finetune_fmnist import get_config as finetune_config
    from configs.linprobe_fmnist import get_config as linprobe_config

    for c in (finetune_config(), linprobe_config()):
        common.validate_downstream(c, 8)
        train_split = common.load_split(c, c.eval.train_split, num_classes=c.num_classes)
        test_split = common.load_split(c, c.eval.test_split, num_classes=c.num_classes)
        assert (len(train_split), len(test_split)) == (60000, 10000)
        assert set(np.unique(test_split.labels)) == set(range(10))
        assert train_split.images([0, 1]).shape == (2, 28, 28, 1)


@pytest.mark.slow
def test_linprobe_reports_the_same_knn_as_the_standalone_knn(pretrained, tmp_path):
    """--config.knn=True: k-NN from the probe's own forward pass, on the same examples as
    mdistill.evaluate.knn with the run's settings (avg pool, k=20), gives its accuracy."""
    from configs.linprobe_fmnist import get_config

    c = get_config("smoke")
    c.pretrained, c.num_epochs, c.knn = pretrained, 1.0, True
    c.train_examples, c.test_examples = 128, 64  # the run's knn_train_examples / knn_test_examples
    results = linprobe.run(c, str(tmp_path / "lp"))
    standalone = knn.evaluate_checkpoint(pretrained, str(tmp_path / "knn"))
    assert results["knn_pool"] == standalone["pool"] == "avg" and results["test_examples"] == 64
    assert results["knn_top1"] == pytest.approx(standalone["knn_top1"], abs=1e-4)
    assert results["knn_top5"] == pytest.approx(standalone["knn_top5"], abs=1e-4)
    c.knn = False  # the probe itself is unchanged by the extra pooling
    assert linprobe.run(c, str(tmp_path / "lp_only"))["top1"] == results["top1"]
    c.knn, c.eval.knn_pool = True, "max"
    with pytest.raises(ValueError, match="config.eval.knn_pool='max' is invalid: expected one of"):
        linprobe.run(c, str(tmp_path / "bad"))


@pytest.mark.slow
def test_baselines_are_pixels_and_a_fixed_random_encoder_in_both_evaluators(pretrained, tmp_path):
    """k-NN --baselines: the pixel row is k-NN on the normalised, flattened images (computed
    here with numpy), the random row a freshly initialised encoder of the run's architecture,
    the same one every time; the linear probe's baselines give the same k-NN."""
    from configs.linprobe_fmnist import get_config

    results = knn.evaluate_checkpoint(pretrained, str(tmp_path / "knn"), baselines=True)
    base = results["baselines"]
    c = common.run_config(checkpoint.load_params(pretrained, None)[1])
    c.eval.knn_every = 1
    mesh = sharding.make_mesh()
    monitor = knn.KNNMonitor(c, mesh)
    pixels = lambda split: ((split.images(np.arange(len(split))) / 255.0 - np.asarray(c.data.mean))  # noqa: E731
                            / np.asarray(c.data.std)).reshape(len(split), -1).astype(np.float32)
    expected = knn.knn_accuracy(pixels(monitor.train_split), monitor.train_split.labels,
                                pixels(monitor.test_split), monitor.test_split.labels, c.eval.knn_k,
                                c.eval.knn_temperature)
    assert base["pixels"]["knn_top1"] == pytest.approx(expected["knn_top1"], abs=1e-4)
    again = monitor.run_encoder(common.baseline_params("random", c, mesh))
    assert base["random"]["knn_top1"] == again["knn_top1"] and base["random"]["knn_top5"] == again["knn_top5"]
    other_seed = common.random_encoder(c.student.variant, c.image_size, c.data.channels, mesh, seed=1)
    assert not np.allclose(other_seed["cls_token"], common.baseline_params("random", c, mesh)["cls_token"])
    saved = json.load(open(tmp_path / "knn" / "knn.json"))
    assert set(saved["baselines"]) == {"pixels", "random"} and saved["knn_top1"] == results["knn_top1"]
    with pytest.raises(ValueError, match="baseline 'noise': expected one of"):
        common.baseline_params("noise", c, mesh)

    c = get_config("smoke")
    c.pretrained, c.num_epochs, c.knn, c.baselines = pretrained, 1.0, True, True
    c.train_examples, c.test_examples = 128, 64  # the run's knn_train_examples / knn_test_examples
    probe = linprobe.run(c, str(tmp_path / "lp"))
    assert set(probe["baselines"]) == {"pixels", "random"}
    for r in (probe, *probe["baselines"].values()):
        assert 0.0 <= r["top1"] <= 100.0 and 0.0 <= r["knn_top1"] <= 100.0 and r["test_examples"] == 64
    for name in ("pixels", "random"):
        assert probe["baselines"][name]["knn_top1"] == pytest.approx(base[name]["knn_top1"], abs=1e-4)
    assert "| pixels |" in common.comparison_table(probe["baselines"], ("knn_top1", "top1"))
