"""A new user's first day, end to end through the command lines: their own small labelled
image folder (3 classes, train/ and val/, images of several sizes), an MAE smoke teacher, a
DMAE smoke student distilled from it, then k-NN, the linear probe and fine-tuning of that
student, each given only the data's path (no class count, no split or variant flags); every
result JSON names the data it was computed on; the fine-tuned classifier exported as
.safetensors loads strictly into timm's VisionTransformer with the same logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # the command line end to end on a folder of images (tests/README.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("circle", "square", "stripes")


def draw(kind: str, size: tuple[int, int], rng) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    colour = rng.integers(60, 255, 3)
    if kind == "circle":
        r = rng.uniform(0.25, 0.45) * min(w, h)
        on = (x - w / 2) ** 2 + (y - h / 2) ** 2 < r ** 2
    elif kind == "square":
        r = rng.uniform(0.2, 0.4) * min(w, h)
        on = (abs(x - w / 2) < r) & (abs(y - h / 2) < r)
    else:
        on = ((x + rng.integers(0, 8)) // 4) % 2 == 0
    img = np.where(on[..., None], colour, rng.integers(0, 50, 3)).astype(np.uint8)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def make_folder(root: str, per_class: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in CLASSES:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                size = (int(rng.integers(32, 64)), int(rng.integers(32, 64)))
                ext = ".png" if i % 2 else ".jpg"
                draw(c, size, rng).save(os.path.join(root, split, c, f"{c}_{i:03d}{ext}"))


def cli(module: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"{module} {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout + p.stderr


def assert_names_the_data(results: dict, root: str) -> None:
    d = results["data"]
    assert d["source"] == "folder" and d["path"] == os.path.abspath(root), d
    assert d["train"]["folder"] == os.path.join(os.path.abspath(root), "train"), d
    assert d["test"]["folder"] == os.path.join(os.path.abspath(root), "val"), d  # 'validation' found as val/
    assert d["num_classes"] == 3 and d["classes"] == list(CLASSES), d


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    base = tmp_path_factory.mktemp("user")
    data = str(base / "my_shapes")
    make_folder(data, {"train": 70, "val": 20})  # 210 + 60 images
    return base, data


def own(data: str) -> list[str]:
    return ["--config.data.source=folder", f"--config.data.path={data}"]


@pytest.fixture(scope="module")
def teacher(user):
    """The MAE smoke teacher (mu/4) on the user's folder."""
    base, data = user
    teacher = str(base / "teacher")
    cli("mdistill.main", "--config=configs/mae.py:smoke", f"--workdir={teacher}", *own(data))
    return teacher


@pytest.fixture(scope="module")
def student(user, teacher):
    """The DMAE smoke student distilled from the MAE smoke teacher, with only the data's
    path given (the teacher's variant, mu/4 here, is read off its checkpoint)."""
    base, data = user
    student = str(base / "student")
    # with the k-NN monitor at the end: the folder's val/ is its test split, 3 classes, no top-5
    out = cli("mdistill.main", "--config=configs/dmae_vitb.py:smoke", f"--workdir={student}",
              f"--config.teacher.checkpoint={teacher}", "--config.eval.knn_every=40", *own(data))
    assert "config.teacher.variant 'xs/4' -> 'mu/4'" in out
    assert "step 40 | k-NN top1" in out and "top5" not in out
    return student


@pytest.fixture(scope="module")
def finetuned(user, student):
    """The student fine-tuned on the user's folder, with only its run given."""
    base, _ = user
    ft_dir = str(base / "finetune")
    cli("mdistill.evaluate.finetune", "--config=configs/finetune_fmnist.py:smoke",
        f"--config.pretrained={student}", f"--workdir={ft_dir}")
    return ft_dir


def test_knn_probe_and_finetune_on_own_folder(user, student, finetuned):
    base, data = user
    knn_dir, probe_dir = str(base / "knn"), str(base / "probe")

    cli("mdistill.evaluate.knn", f"--checkpoint={student}", f"--workdir={knn_dir}")
    knn = json.load(open(os.path.join(knn_dir, "knn.json")))
    assert_names_the_data(knn, data)
    assert "knn_top5" not in knn and 0 <= knn["knn_top1"] <= 100

    out = cli("mdistill.evaluate.linprobe", "--config=configs/linprobe_fmnist.py:smoke",
              f"--config.pretrained={student}", f"--workdir={probe_dir}")
    assert "num_classes=3" in out and "top5" not in out
    probe = json.load(open(os.path.join(probe_dir, "linprobe.json")))
    assert_names_the_data(probe, data)
    assert probe["train_examples"] == 210 and probe["test_examples"] == 60

    ft = json.load(open(os.path.join(finetuned, "finetune.json")))
    assert_names_the_data(ft, data)
    assert ft["num_classes"] == 3 and "top5" not in ft and ft["variant"] == "mu/4"


def test_the_finetuned_classifier_exports_into_timm(user, finetuned):
    """Exported as .safetensors: a strict load into timm's VisionTransformer with the trained
    3-class head, and mdistill's logits on the user's images."""
    pytest.importorskip("torch")
    import torch
    from safetensors.torch import load_file

    from real_timm import import_timm

    from mdistill.weights import checkpoint
    from mdistill.data.image_folder import ImageFolderSource
    from mdistill.evaluate.finetune import Classifier
    from mdistill.models.vit import ViTSpec

    _, data = user
    out = os.path.join(finetuned, "student.safetensors")
    cli("mdistill.weights.convert", "--export", "--input", finetuned, "--output", out)
    params, meta = checkpoint.load_params(finetuned, None)
    run = meta["config"]
    images = ImageFolderSource(data, "val", 32, 3).images(np.arange(0, 60, 7))  # across the 3 classes
    x = (images.astype(np.float32) / 255.0 - np.float32(0.5)) / np.float32(0.25)
    assert tuple(run["data"]["mean"]) == (0.5, 0.5, 0.5) and tuple(run["data"]["std"]) == (0.25, 0.25, 0.25)
    ours = np.asarray(Classifier(ViTSpec.parse("mu/4"), 3, run["eval"]["pool"]).apply({"params": params}, x))
    vit = import_timm().models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, in_chans=3, embed_dim=64, depth=4, num_heads=4, num_classes=3,
        global_pool="avg").eval()
    vit.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        theirs = vit(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert theirs.shape == (9, 3) and np.abs(ours).max() > 1e-3
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


def test_a_class_count_that_disagrees_is_refused(user, student, tmp_path):
    base, data = user
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", "mdistill.evaluate.linprobe", "--config=configs/linprobe_fmnist.py:smoke",
                        f"--config.pretrained={student}", "--config.num_classes=10", f"--workdir={tmp_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith("error: --config.num_classes=10 but split 'train'"), p.stderr
    assert "has 3 classes" in p.stderr


def fails(module: str, *args: str) -> str:
    """The last line a refused command prints (it must fail)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode != 0, p.stdout[-2000:]
    return p.stderr.strip().splitlines()[-1]


def test_amd_smoke_student_takes_the_mae_smoke_teacher(user, teacher):
    """The AMD smoke pairs count the teacher's blocks from its last, so the mu/4 MAE smoke
    teacher fits with no flag; the dry run shows the variant read off the checkpoint."""
    base, data = user
    out = cli("mdistill.main", "--config=configs/amd_vitb.py:smoke", f"--config.teacher.checkpoint={teacher}",
              "--dry_run", *own(data))
    line = next(ln for ln in reversed(out.strip().splitlines()) if ln.startswith("{"))
    summary = json.loads(line)
    assert summary["teacher"] == "mu/4" and summary["teacher_blocks_run"] == 4


def test_a_teacher_variant_flag_that_disagrees_is_refused(user, teacher):
    base, data = user
    last = fails("mdistill.main", "--config=configs/dmae_vitb.py:smoke", f"--config.teacher.checkpoint={teacher}",
                 "--config.teacher.variant=xs/4", "--dry_run", *own(data))
    assert last.startswith("error: --config.teacher.variant='xs/4' disagrees with config.teacher.checkpoint"), last
    assert "'mu/4'" in last


def test_a_missing_test_split_names_the_field_that_picks_it(user, student, tmp_path):
    last = fails("mdistill.evaluate.knn", f"--checkpoint={student}", f"--workdir={tmp_path}",
                 "--config.eval.test_split=holdout")
    assert last.startswith("error: config.eval.test_split='holdout': image folder"), last
