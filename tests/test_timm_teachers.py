"""Teachers beyond MAE: timm-layout ViTs (learned position tables with or without a cls row,
no cls token, norm_pre, no qkv bias, fine-tuned with fc_norm and a head) load from .pth and
.safetensors and reproduce a PyTorch reference of timm's VisionTransformer block by block;
DMAE and AMD train from them; what cannot be expressed is refused in one line."""

import json
import os

import jax
import numpy as np
import pytest

from mdistill import sharding
from mdistill.config import apply_smoke, base_config
from mdistill.models.vit import Encoder
from mdistill.train import Trainer, train
from mdistill.weights import loader
from mdistill.weights.checkpoint import CheckpointError
from real_timm import import_timm

IMG, PATCH, CHANS, WIDTH, DEPTH, HEADS = 16, 4, 3, 64, 4, 4  # mu/4
PARITY = 1e-4

# name -> TimmViT options: the layouts of the families the issue names
LAYOUTS = {
    "deit": dict(),                                         # DeiT / DINO / supervised ViT: cls, learned table
    "clip": dict(pre_norm=True),                            # CLIP ViTs: norm_pre (ln_pre)
    "no_qkv_bias": dict(qkv_bias=False),
    "no_embed_class": dict(no_embed_class=True),            # table without a cls row
    "finetuned_avg": dict(fc_norm=True, num_classes=10),    # fine-tuned, global pool: fc_norm, head, no norm
    "no_cls": dict(class_token=False, fc_norm=True),        # no cls token at all
}


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("torch")
    import torch_reference

    return torch_reference


def timm_model(ref, seed, img=IMG, width=WIDTH, depth=DEPTH, heads=HEADS, **options):
    return ref.randomize(ref.TimmViT(img, PATCH, CHANS, width, depth, heads, **options), seed, pos_embed=True).eval()


def save(model, path):
    """timm's hub layouts: a bare state dict as .safetensors (numpy API) or .pth."""
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(sd, str(path))
    else:
        import torch

        torch.save(model.state_dict(), path)
    return str(path)


def reference(model, images, ids_keep=None):
    import torch

    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        out, blocks = model.forward_blocks(x, None if ids_keep is None else torch.from_numpy(ids_keep))
    return out.numpy(), [b.numpy() for b in blocks]


def inputs(batch=2, keep=5, img=IMG, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, img, img, CHANS)).astype(np.float32)
    ids = np.stack([rng.permutation((img // PATCH) ** 2)[:keep] for _ in range(batch)]).astype(np.int64)
    return images, ids


def run_encoder(w, images, ids_keep=None):
    enc = Encoder(w.arch.spec)
    blocks = tuple(range(w.arch.spec.depth))
    out, feats = enc.apply({"params": w.encoder}, images, ids_keep, return_blocks=blocks)
    return np.asarray(out), [np.asarray(feats[b]) for b in blocks]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_timm_layouts_match_the_reference_block_by_block(ref, tmp_path, name):
    model = timm_model(ref, seed=len(name), **LAYOUTS[name])
    images, ids_keep = inputs()
    for path in (save(model, tmp_path / "model.safetensors"), save(model, tmp_path / "model.pth")):
        w = loader.load(path, "mu/4", decoder=False)
        assert w.arch.spec.layout.posemb == "learned", w.arch.describe()
        for ids in (None, ids_keep):
            out, blocks = run_encoder(w, images, ids)
            want_out, want_blocks = reference(model, images, ids)
            for i, (a, b) in enumerate(zip(blocks, want_blocks)):
                np.testing.assert_allclose(a, b, atol=PARITY, err_msg=f"{name} {path} block {i}")
            np.testing.assert_allclose(out, want_out, atol=PARITY, err_msg=f"{name} {path} output")


def test_the_layout_is_read_off_the_tensors(ref, tmp_path):
    clip = loader.architecture(save(timm_model(ref, 1, pre_norm=True, qkv_bias=False),
                                    tmp_path / "clip.safetensors"))
    assert clip.describe() == ("width 64, depth 4, patch 4, 3 channel(s), learned position embedding, "
                               "norm_pre, no qkv bias, no patch embedding bias")
    no_cls = loader.architecture(save(timm_model(ref, 2, class_token=False, fc_norm=True), tmp_path / "gap.pth"))
    layout = no_cls.spec.layout
    assert (layout.class_token, layout.posemb_cls, layout.final_norm, no_cls.grid) == (False, False, False, 4)


def test_a_learned_table_is_resized_as_timm_resizes_it(ref, tmp_path):
    """Used at 32px, a 16px checkpoint's table is resized as timm's resample_abs_pos_embed
    does (bicubic, antialiased): the reference is the same model built at 32px with the table
    torch resized."""
    import torch
    import torch.nn.functional as F

    small = timm_model(ref, seed=4)
    path = save(small, tmp_path / "deit.safetensors")
    big = ref.TimmViT(32, PATCH, CHANS, WIDTH, DEPTH, HEADS)
    sd = dict(small.state_dict())
    grid = sd["pos_embed"][:, 1:].reshape(1, IMG // PATCH, IMG // PATCH, WIDTH).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, 64, WIDTH)], dim=1)
    big.load_state_dict(sd, strict=True)
    big.eval()
    w = loader.load(path, "mu/4", decoder=False, image_size=32)
    assert w.encoder["pos_embed"].shape == (1, 65, WIDTH) and w.arch.grid == 8
    images, ids_keep = inputs(img=32, keep=20)
    out, blocks = run_encoder(w, images, ids_keep)
    want_out, want_blocks = reference(big, images, ids_keep)
    np.testing.assert_allclose(blocks[-1], want_blocks[-1], atol=PARITY)
    np.testing.assert_allclose(out, want_out, atol=PARITY)


@pytest.mark.parametrize("key, what", [("blocks.0.ls1.gamma", "LayerScale"), ("reg_token", "register tokens"),
                                       ("blocks.1.attn.q_norm.weight", "qk normalisation")])
def test_what_cannot_be_expressed_is_refused_in_one_line(ref, tmp_path, key, what):
    import torch

    sd = dict(timm_model(ref, 5).state_dict())
    sd[key] = torch.ones(WIDTH)
    torch.save(sd, tmp_path / "model.pth")
    with pytest.raises(ValueError) as e:
        loader.load_encoder(str(tmp_path / "model.pth"), "mu/4")
    assert what in str(e.value) and key in str(e.value) and "\n" not in str(e.value)


# ---- training from such teachers -------------------------------------------------------------
def smoke(method, checkpoint, **overrides):
    """The smoke student (mu/4, 32px) from an xs/4 teacher at `checkpoint`."""
    c = apply_smoke(base_config())
    c.method = method
    c.teacher.checkpoint = checkpoint
    if method == "amd":
        c.mask_ratio = 0.9  # AMD's student sees less than its teacher (amd.teacher_mask_ratio 0.75)
    c.update(total_steps=2, warmup_steps=1, log_every=1, **overrides)
    return c


@pytest.fixture(scope="module")
def xs_teachers(ref, tmp_path_factory):
    """xs/4 (the smoke teacher's size) timm-layout checkpoints: a DeiT-style one trained at 16px
    (so a 32px run resizes its table) and a CLIP-style one without cls token at 32px."""
    d = tmp_path_factory.mktemp("timm_teachers")
    deit = timm_model(ref, 7, img=16, width=128, depth=6, heads=4, num_classes=5)
    gap = timm_model(ref, 8, img=32, width=128, depth=6, heads=4, class_token=False, fc_norm=True, pre_norm=True)
    return dict(deit=(deit, save(deit, d / "deit_xs.safetensors")), gap=(gap, save(gap, d / "gap_xs.pth")))


@pytest.mark.slow
def test_the_teacher_in_the_step_is_the_reference(ref, xs_teachers):
    """What DMAE's step reads of the teacher: the reference's block outputs on the visible patches."""
    model, path = xs_teachers["gap"]
    trainer = Trainer(smoke("dmae", path), sharding.make_mesh(jax.devices()[:1]))
    params = trainer.load_teacher()
    images, ids_keep = inputs(img=32, keep=16)
    feats = trainer.objective.teacher.features(params, images, ids_keep, (3,))
    _, want = reference(model, images, ids_keep)
    assert feats[3].shape == (2, 16, 128)  # no cls token
    np.testing.assert_allclose(np.asarray(feats[3]), want[3], atol=PARITY)


@pytest.mark.slow
def test_amd_trains_from_a_teacher_without_cls_token(xs_teachers, tmp_path):
    last = train(smoke("amd", xs_teachers["gap"][1]), str(tmp_path / "run"), sharding.make_mesh(jax.devices()[:2]))
    assert last["step"] == 2 and np.isfinite(last["dir_loss"]) and last["dir_loss"] > 0 and last["gen_loss"] > 0
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")


@pytest.mark.slow
def test_dmae_trains_from_a_timm_safetensors_teacher_from_the_command_line(xs_teachers, tmp_path):
    """MaskDistill's target (configs/dmae_vitb.py:target=last) from a DeiT-style teacher saved
    at 16px (its learned table resized to the run's 32px), as a user runs it."""
    from test_cli import cli

    out = cli("--config=configs/dmae_vitb.py:smoke,target=last", f"--workdir={tmp_path / 'run'}",
              f"--config.teacher.checkpoint={xs_teachers['deit'][1]}", "--config.teacher.variant=xs/4",
              "--config.total_steps=3", "--config.log_every=3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resized bicubically to 8x8" in out.stderr
    record = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert record["step"] == 3 and "distill/proj_s3_t5" in record and record["distill_loss"] > 0


@pytest.mark.slow
def test_a_timm_checkpoint_cannot_initialise_the_mae_student(xs_teachers):
    c = smoke("mae", "")
    c.student.init = xs_teachers["deit"][1]
    c.student.variant = "xs/4"
    with pytest.raises(CheckpointError, match="learned position embedding; the student is an MAE ViT"):
        Trainer(c, sharding.make_mesh(jax.devices()[:1])).init_state()


# ---- timm itself (tests/run.sh installs it; tests/real_timm.py) ------------------------------
@pytest.mark.parametrize("options", [dict(), dict(pre_norm=True), dict(qkv_bias=False), dict(no_embed_class=True),
                                     dict(global_pool="avg", fc_norm=True, num_classes=10),
                                     dict(class_token=False, global_pool="avg")], ids=str)
def test_real_timm_vits_match(tmp_path, options):
    """timm's own VisionTransformer in these layouts: its forward_features is mdistill's."""
    timm = import_timm()
    import torch

    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=IMG, patch_size=PATCH, in_chans=CHANS, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
        **{"num_classes": 0, **options}).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    images, _ = inputs()
    with torch.no_grad():
        want = vit.forward_features(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    w = loader.load(save(vit, tmp_path / "timm.safetensors"), "mu/4", decoder=False)
    out, _ = run_encoder(w, images)
    np.testing.assert_allclose(out, want, atol=PARITY)
