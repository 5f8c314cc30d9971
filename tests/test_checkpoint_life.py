"""Checkpoints through their whole life: a fine-tuned run exports its trained classifier into
timm's VisionTransformer with the same logits, and every run (pre-training, fine-tuning, linear
probe) leaves its resolved config readable at <workdir>/config.json."""

import json
import os

import jax
import numpy as np
import pytest

from mdistill import sharding
from mdistill.weights import checkpoint, convert
from real_timm import import_timm

pytestmark = pytest.mark.slow  # fine-tuning and probe runs (tests/README.md)

# configs/finetune_fmnist.py:smoke fine-tunes mu/4 at 32px on 3-channel synthetic images
IMG, PATCH, CHANS, WIDTH, DEPTH, HEADS = 32, 4, 3, 64, 4, 4


def finetune_smoke(pool: str):
    from configs.finetune_fmnist import get_config

    c = get_config("smoke")
    c.eval.pool = pool
    c.total_steps, c.warmup_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 1, 2, 2, 4
    c.test_examples = 64
    return c


@pytest.fixture(scope="module", params=["avg", "cls"])
def finetuned(request, tmp_path_factory):
    """A 4-step fine-tuning smoke run (global pool + fc_norm, as MAE's recipe, or the cls token)."""
    from mdistill.evaluate import finetune

    c = finetune_smoke(request.param)
    workdir = str(tmp_path_factory.mktemp(f"finetune_{request.param}") / "run")
    finetune.run(c, workdir, sharding.make_mesh(jax.devices()[:1]))
    return request.param, workdir


def mdistill_logits(workdir: str, images: np.ndarray) -> np.ndarray:
    from mdistill.evaluate.finetune import Classifier
    from mdistill.models.vit import ViTSpec

    params, meta = checkpoint.load_params(workdir, None)
    rows = params["head"]["bias"].shape[0]
    model = Classifier(ViTSpec.parse(meta["config"]["student"]["variant"]), rows, meta["config"]["eval"]["pool"])
    return np.asarray(model.apply({"params": params}, images))


def timm_classifier(pool: str, num_classes: int):
    VisionTransformer = import_timm().models.vision_transformer.VisionTransformer
    return VisionTransformer(img_size=IMG, patch_size=PATCH, in_chans=CHANS, embed_dim=WIDTH, depth=DEPTH,
                             num_heads=HEADS, num_classes=num_classes,
                             global_pool="avg" if pool == "avg" else "token").eval()


@pytest.mark.parametrize("folder", ["", "best"])
def test_a_finetuned_run_exports_its_trained_classifier_into_timm(finetuned, folder, tmp_path):
    """Its head (of the run's classes) and, pooled globally, its trained fc_norm in place of norm:
    strict loads into timm's VisionTransformer, the logits of mdistill's classifier."""
    pytest.importorskip("torch")
    import torch
    from safetensors.torch import load_file

    pool, workdir = finetuned
    src = os.path.join(workdir, folder)
    images = np.random.default_rng(0).normal(size=(3, IMG, IMG, CHANS)).astype(np.float32)
    expected = mdistill_logits(src, images)
    rows = expected.shape[-1]
    assert np.abs(expected).max() > 1e-3  # a trained head, not zeros
    for name in ("student.pth", "student.safetensors"):
        out = str(tmp_path / name)
        convert.main(["--export", "--input", src, "--output", out])
        sd = torch.load(out, weights_only=True)["model"] if name.endswith(".pth") else load_file(out)
        assert sd["head.weight"].shape == (rows, WIDTH)
        if pool == "avg":
            assert "norm.weight" not in sd and not torch.equal(sd["fc_norm.weight"], torch.ones(WIDTH))
        else:
            assert "fc_norm.weight" not in sd and "norm.weight" in sd
        vit = timm_classifier(pool, rows)
        vit.load_state_dict(sd, strict=True)
        with torch.no_grad():
            logits = vit(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_flag_that_disagrees_with_the_finetuned_run_is_refused(finetuned, tmp_path):
    pool, workdir = finetuned
    rows = checkpoint.load_shapes(workdir)[0]["head"]["bias"].shape[0]
    out = str(tmp_path / "student.safetensors")  # written without PyTorch
    with pytest.raises(SystemExit, match=rf"^error: --num_classes {rows + 1}: .* trained head has {rows} classes"):
        convert.main(["--export", "--input", workdir, "--output", out, "--num_classes", str(rows + 1)])
    other = "--noglobal_pool" if pool == "avg" else "--global_pool"
    with pytest.raises(SystemExit, match=rf"^error: {other}: .* was fine-tuned on [^\n]*$"):
        convert.main(["--export", "--input", workdir, "--output", out, other])
    assert not os.path.exists(out)
    # flags that repeat the run's own settings are accepted
    convert.main(["--export", "--input", workdir, "--output", out, "--num_classes", str(rows),
                  "--global_pool" if pool == "avg" else "--noglobal_pool"])


# ---- <workdir>/config.json ---------------------------------------------------------------------
def read_config(workdir) -> dict:
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)


def test_finetuning_writes_its_resolved_config(finetuned):
    _, workdir = finetuned
    _, meta = checkpoint.load_params(workdir, None)
    assert read_config(workdir) == json.loads(json.dumps(meta["config"]))
    assert not [f for f in os.listdir(workdir) if f.startswith("config.json.")]  # no temporary left


def test_pretraining_and_the_linear_probe_write_their_config(tmp_path):
    from configs.linprobe_fmnist import get_config as linprobe_config
    from mdistill.config import apply_smoke, base_config
    from mdistill.evaluate import linprobe
    from mdistill.train import train

    c = apply_smoke(base_config())
    c.total_steps, c.warmup_steps = 1, 0
    train(c, str(tmp_path / "pre"))
    assert read_config(tmp_path / "pre") == json.loads(json.dumps(c.to_dict()))
    _, meta = checkpoint.load_params(str(tmp_path / "pre"), None)
    assert read_config(tmp_path / "pre") == json.loads(json.dumps(meta["config"]))
    p = linprobe_config("smoke")
    p.pretrained, p.num_epochs = str(tmp_path / "pre"), 1.0
    linprobe.run(p, str(tmp_path / "lp"))
    written = read_config(tmp_path / "lp")
    assert written["pretrained"] == str(tmp_path / "pre") and written["student"]["variant"] == "mu/4"


def test_the_config_file_is_replaced_whole_and_written_by_process_0_only(tmp_path, monkeypatch):
    import ml_collections

    path = checkpoint.write_config(str(tmp_path), ml_collections.ConfigDict({"a": (1, 2), "b": {"c": "x"}}))
    assert path == str(tmp_path / "config.json") and read_config(tmp_path) == {"a": [1, 2], "b": {"c": "x"}}
    checkpoint.write_config(str(tmp_path), ml_collections.ConfigDict({"a": 3}))
    assert read_config(tmp_path) == {"a": 3} and os.listdir(tmp_path) == ["config.json"]
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert checkpoint.write_config(str(tmp_path / "other"), ml_collections.ConfigDict({"a": 4})) is None
    assert not os.path.exists(tmp_path / "other")
