"""Every config loads and validates; bad configs stop with one message naming the field."""

import glob
import importlib.util
import math
import os

import pytest

from mdistill.config import apply_smoke, base_config
from mdistill.config.validation import ConfigError, validate

CONFIG_FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "[!_]*.py")))


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_every_config_validates(path, arg):
    config = load(path, arg)
    # a pod's 256 devices, or as many as the (laptop-sized) batch splits over
    validate(config, num_devices=8 if arg == "smoke" else math.gcd(256, config.batch_size))
    assert load(path, arg).to_dict() == config.to_dict()  # deterministic
    if arg == "smoke":
        assert config.data.source == "synthetic" and config.total_steps <= 100


def test_dmae_vitb_reproduces_the_release_settings():
    c = load(os.path.join(os.path.dirname(__file__), "..", "configs", "dmae_vitb.py"))
    assert (c.method, c.student.variant, c.teacher.variant) == ("dmae", "B/16", "L/16")
    assert (c.mask_ratio, c.batch_size, c.num_epochs, c.warmup_epochs) == (0.75, 4096, 100.0, 20.0)
    assert (c.optim.blr, c.optim.b1, c.optim.b2, c.optim.weight_decay) == (1.5e-4, 0.9, 0.95, 0.05)
    assert tuple(map(tuple, c.distill.pairs)) == ((8, 17),)
    assert (c.distill.head, tuple(c.distill.projection), c.distill.loss, c.distill.normalize) == (
        "linear", (768, 1024), "l1", True)
    assert (c.data.source, c.data.name) == ("tfds", "imagenet2012")


def smoke(method="dmae"):
    c = apply_smoke(base_config())
    c.method = method
    return c


BAD = [
    ("image_size", lambda c: c.update(image_size=30), "config.image_size=30"),
    ("student block", lambda c: c.distill.update(pairs=((4, 3),)), "student block 4 is outside 0..3"),
    ("teacher block", lambda c: c.distill.update(pairs=((1, 6),)), "teacher block 6 is outside 0..5"),
    ("projection", lambda c: c.distill.update(projection=(64, 256)), "config.distill.projection"),
    ("mask ratio", lambda c: c.update(mask_ratio=0.99), "config.mask_ratio=0.99"),
    ("batch", lambda c: c.update(batch_size=12), "multiple of the device count (8)"),
    ("method", lambda c: c.update(method="byol"), "config.method='byol'"),
    ("loss", lambda c: c.distill.update(loss="hinge"), "config.distill.loss='hinge'"),
    ("head", lambda c: c.distill.update(head="conv"), "config.distill.head='conv'"),
    ("variant", lambda c: c.teacher.update(variant="XL/16"), "config.teacher.variant"),
    ("patch", lambda c: c.teacher.update(variant="xs/8"), "student's patch size 4"),
    ("accum", lambda c: c.optim.update(accum_steps=4), "config.optim.accum_steps=4"),
    ("source", lambda c: c.data.update(source="webdataset"), "config.data.source='webdataset'"),
    # issue 19: values that trained with a negative lr, crashed later or deleted checkpoints
    ("keep 0", lambda c: c.update(keep_checkpoints=0), "config.keep_checkpoints=0 is invalid: must be >= 1"),
    ("keep -1", lambda c: c.update(keep_checkpoints=-1), "config.keep_checkpoints=-1"),
    ("lr", lambda c: c.optim.update(lr=-0.5), "config.optim.lr=-0.5 is invalid: must be > 0"),
    ("lr 0", lambda c: c.optim.update(lr=0.0), "config.optim.lr=0.0"),
    ("blr", lambda c: c.optim.update(lr=-1.0, blr=-0.5), "config.optim.blr=-0.5 is invalid: must be > 0"),
    ("b1", lambda c: c.optim.update(b1=1.0), "config.optim.b1=1.0 is invalid: must be in [0, 1)"),
    ("b2", lambda c: c.optim.update(b2=2.0), "config.optim.b2=2.0 is invalid: must be in [0, 1)"),
    ("weight decay", lambda c: c.optim.update(weight_decay=-0.1), "config.optim.weight_decay=-0.1"),
    ("min lr", lambda c: c.optim.update(min_lr=-1e-6), "config.optim.min_lr=-1e-06"),
    ("grad clip", lambda c: c.optim.update(grad_clip=-1.0), "config.optim.grad_clip=-1.0"),
    ("mask ratio 0", lambda c: c.update(mask_ratio=0.0), "config.mask_ratio=0.0 is invalid: must be in (0, 1)"),
    ("seed", lambda c: c.update(seed=-1), "config.seed=-1 is invalid: must be in [0, 2**31)"),
    ("warmup", lambda c: c.update(warmup_steps=-1, warmup_epochs=-1.0), "config.warmup_epochs=-1.0"),
    ("best metric mode", lambda c: c.update(best_metric="top:loss"), "config.best_metric='top:loss' is invalid"),
    ("best metric knn", lambda c: c.update(best_metric="max:knn_top1"),
     "config.best_metric='max:knn_top1' is invalid: needs the k-NN monitor (config.eval.knn_every > 0)"),
]


@pytest.mark.parametrize("name,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_invalid_config_names_the_field(name, mutate, message):
    c = smoke()
    mutate(c)
    with pytest.raises(ConfigError) as e:
        validate(c, num_devices=8)
    assert message in str(e.value)


def configs_path(name):
    return os.path.join(os.path.dirname(__file__), "..", "configs", name + ".py")


@pytest.mark.parametrize("family,variant,name", [("amd", "S/16", "amd_vits"), ("amd", "B/16", "amd_vitb"),
                                                 ("mae", "L/16", "mae_vitl"), ("mae", "B/16", "mae_vitb")])
def test_a_config_argument_picks_the_model_size(family, variant, name):
    """configs/amd.py:variant=S/16 is configs/amd_vits.py, with or without smoke."""
    path = configs_path(family)
    assert load(path, f"variant={variant}").to_dict() == load(configs_path(name)).to_dict()
    assert load(path, f"variant={variant},smoke").to_dict() == load(configs_path(name), "smoke").to_dict()
    with pytest.raises(ValueError, match="expected 'smoke' or key=value with key one of \\['variant'\\]"):
        load(path, "size=S")
