"""Official checkpoints: converted weights reproduce a PyTorch reference of the official MAE
(tests/torch_reference.py) block by block; exports load strictly into the fine-tuning model;
bad checkpoints fail naming what is wrong."""

import json
import os
import struct

import jax
import numpy as np
import pytest

import mdistill
from mdistill.models.vit import ViTSpec
from mdistill.weights import checkpoint, convert, loader, state_dict
from mdistill.weights.pretrained import ids_restore_for
from real_timm import import_timm

# mdistill's 'mu/4' encoder, a 2-block decoder whose heads follow the width/32 default
IMG, PATCH, CHANS, WIDTH, DEPTH, HEADS = 16, 4, 3, 64, 4, 4
DEC = (64, 2, 2)
ATOL = 2e-5
CPU = jax.sharding.SingleDeviceSharding(jax.devices()[0])


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("torch")
    import torch_reference

    return torch_reference


def make_mae(ref, img=IMG, seed=0, width=WIDTH, depth=DEPTH, heads=HEADS, patch=PATCH):
    return ref.randomize(ref.MAE(img, patch, CHANS, width, depth, heads, *DEC), seed).eval()


def save_release(model, path, encoder_only=False, **extra):
    """As the releases: {'model': state_dict}; the pre-training ones hold the encoder only."""
    import torch

    sd = {k: v for k, v in model.state_dict().items()
          if not (encoder_only and (k.startswith("decoder_") or k == "mask_token"))}
    sd.update(extra)
    torch.save({"model": sd}, path)
    return str(path)


def inputs(batch=3, keep=6, img=IMG, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, img, img, CHANS)).astype(np.float32)
    num = (img // PATCH) ** 2
    ids_keep = np.stack([rng.permutation(num)[:keep] for _ in range(batch)]).astype(np.int64)
    return images, ids_keep


def torch_forward(model, images, ids_keep):
    """The reference encoder (latent, block outputs) and decoder on the same visible patches."""
    import torch

    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ids = torch.from_numpy(ids_keep)
    hidden = [[i for i in range(model.pos_embed.shape[1] - 1) if i not in set(row)] for row in ids_keep.tolist()]
    ids_restore = torch.argsort(torch.cat([ids, torch.tensor(hidden)], dim=1), dim=1)
    with torch.no_grad():
        latent, blocks = model.forward_encoder(x, ids)
        pred = model.forward_decoder(latent, ids_restore)
    return latent.numpy(), [b.numpy() for b in blocks], pred.numpy()


@pytest.fixture(scope="module")
def release(ref, tmp_path_factory):
    """A random 'mae_visualize'-style release (encoder + decoder), its reference outputs and
    its conversion to an Orbax directory through the command line."""
    d = tmp_path_factory.mktemp("release")
    model = make_mae(ref)
    path = save_release(model, d / "mae_visualize_vit_tiny.pth")
    convert.main(["--input", path, "--output", str(d / "orbax")])
    images, ids_keep = inputs()
    return dict(model=model, path=path, orbax=str(d / "orbax"), images=images, ids_keep=ids_keep,
                out=torch_forward(model, images, ids_keep))


def test_converted_encoder_and_decoder_match_pytorch(release):
    latent, blocks, pred = release["out"]
    model = mdistill.load_pretrained(release["path"])
    assert (model.spec.width, model.spec.depth, model.spec.num_heads, model.arch.decoder) == (WIDTH, DEPTH, HEADS, DEC)
    feats = model.encode(release["images"], release["ids_keep"])
    assert sorted(feats) == list(range(DEPTH))
    for i in range(DEPTH):
        np.testing.assert_allclose(feats[i], blocks[i], atol=ATOL, err_msg=f"block {i}")
    np.testing.assert_allclose(model.features(release["images"], release["ids_keep"]), latent, atol=ATOL)
    np.testing.assert_allclose(model.reconstruct(release["images"], release["ids_keep"]), pred, atol=ATOL)
    assert model.encode(release["images"], release["ids_keep"], layers=(1,)).keys() == {1}


def test_orbax_conversion_loads_as_checkpoint_teacher_and_pretrained(release):
    params, meta = checkpoint.load_params(release["orbax"], CPU)
    assert set(params["mae"]) == {"encoder", "decoder"} and meta["architecture"]["decoder_heads"] == DEC[2]
    from_pth = loader.load_encoder(release["path"], placement=CPU, variant="mu/4", image_size=IMG)
    from_dir = loader.load_encoder(release["orbax"], placement=CPU, variant="mu/4", image_size=IMG)
    jax.tree.map(np.testing.assert_array_equal, from_pth, from_dir)
    jax.tree.map(np.testing.assert_array_equal, from_dir, params["mae"]["encoder"])
    model = mdistill.load_pretrained(release["orbax"])
    np.testing.assert_allclose(model.reconstruct(release["images"], release["ids_keep"]), release["out"][2], atol=ATOL)


def test_encoder_only_release_converts_without_decoder(ref, tmp_path):
    path = save_release(make_mae(ref, seed=1), tmp_path / "mae_pretrain_vit_tiny.pth", encoder_only=True)
    model = mdistill.load_pretrained(path)
    assert model.arch.decoder is None and set(model.params) == {"encoder"}
    with pytest.raises(ValueError, match="no decoder"):
        model.reconstruct(*inputs())


def test_ids_restore_matches_the_official_unshuffle():
    ids_keep = np.array([[5, 0, 9], [1, 2, 3]])
    restore = np.asarray(ids_restore_for(ids_keep, 10))
    for keep, r in zip(ids_keep, restore):
        order = np.argsort(r)  # position -> patch: the visible ones first, in the given order
        assert list(order[:3]) == list(keep) and sorted(order) == list(range(10))


def test_other_image_size_uses_the_sincos_table_of_its_grid(ref, release, capsys):
    """A 16px checkpoint run at 24px equals the release's model built at 24px: the fixed
    sin-cos table is a function of patch position, recomputed for the 6x6 grid."""
    big = ref.MAE(24, PATCH, CHANS, WIDTH, DEPTH, HEADS, *DEC).eval()
    sd = {k: v for k, v in release["model"].state_dict().items() if "pos_embed" not in k}
    assert set(big.load_state_dict(sd, strict=False).missing_keys) == {"pos_embed", "decoder_pos_embed"}
    images, ids_keep = inputs(img=24, keep=9)
    latent, blocks, pred = torch_forward(big, images, ids_keep)
    model = mdistill.load_pretrained(release["path"])
    np.testing.assert_allclose(model.encode(images, ids_keep)[DEPTH - 1], blocks[-1], atol=ATOL)
    np.testing.assert_allclose(model.reconstruct(images, ids_keep), pred, atol=ATOL)
    loader.load_encoder(release["path"], placement=CPU, image_size=24)
    assert "used at 24px" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a multiple of the checkpoint's patch size 4"):
        loader.load_encoder(release["path"], placement=CPU, image_size=18)


@pytest.mark.parametrize("global_pool", [False, True])
def test_export_loads_strictly_into_the_finetuning_model(ref, release, tmp_path, global_pool):
    import torch

    out = tmp_path / "student.pth"
    args = ["--export", "--input", release["orbax"], "--output", str(out), "--num_classes", "10"]
    convert.main(args + (["--global_pool"] if global_pool else []))
    sd = torch.load(out, weights_only=True)["model"]
    vit = ref.ViT(IMG, PATCH, CHANS, WIDTH, DEPTH, HEADS, num_classes=10, global_pool=global_pool).eval()
    vit.load_state_dict(sd, strict=True)
    images, _ = inputs()
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        feats, logits = vit.forward_features(x).numpy(), vit(x).numpy()
    model = mdistill.load_pretrained(release["orbax"])
    if global_pool:  # mean of the last block's patch tokens, then a fresh LayerNorm
        pooled = np.asarray(model.encode(images, layers=(DEPTH - 1,))[DEPTH - 1])[:, 1:].mean(1)
        expected = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True) + 1e-6)
    else:
        expected = np.asarray(model.features(images))[:, 0]
    np.testing.assert_allclose(feats, expected, atol=ATOL)
    np.testing.assert_array_equal(logits, 0.0)  # zero head: fine-tuning initialises it


def test_export_without_head_round_trips_to_the_release_layout(ref, release, tmp_path):
    import torch

    out = tmp_path / "student.pth"
    convert.main(["--export", "--input", release["orbax"], "--output", str(out), "--num_classes", "0"])
    exported = torch.load(out, weights_only=True)["model"]
    original = {k: v for k, v in release["model"].state_dict().items()
                if not (k.startswith("decoder_") or k == "mask_token")}
    assert exported.keys() == original.keys()
    for k in original:
        np.testing.assert_allclose(exported[k].numpy(), original[k].numpy(), atol=1e-6, err_msg=k)
    # and back in: the export is itself a valid teacher checkpoint
    loader.load_encoder(str(out), placement=CPU, variant="mu/4")
    sd = convert.export_state_dict(loader.load_encoder(str(out)), image_size=24, num_classes=0)
    assert sd["pos_embed"].shape == (1, 37, WIDTH)


def test_export_at_another_size_interpolates_as_the_official_finetuning(ref, release, tmp_path):
    """--image_size 24 for a 16px run: the 4x4 sin-cos table resized to 6x6 exactly as
    main_finetune.py's interpolate_pos_embed does (bicubic, align_corners=False)."""
    import torch

    convert.main(["--export", "--input", release["orbax"], "--output", str(tmp_path / "s.pth"),
                  "--num_classes", "0", "--image_size", "24"])
    exported = torch.load(tmp_path / "s.pth", weights_only=True)["model"]["pos_embed"]
    table = release["model"].pos_embed.detach()  # the 16px release's table
    patches = table[:, 1:].reshape(1, 4, 4, WIDTH).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(6, 6), mode="bicubic", align_corners=False)
    official = torch.cat([table[:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    np.testing.assert_allclose(exported.numpy(), official.numpy(), atol=1e-5)
    convert.main(["--export", "--input", release["orbax"], "--output", str(tmp_path / "t.pth"),
                  "--num_classes", "0", "--image_size", "24", "--posemb", "sincos"])
    exported = torch.load(tmp_path / "t.pth", weights_only=True)["model"]["pos_embed"]
    np.testing.assert_allclose(exported.numpy()[0], ref.sincos_table(WIDTH, 6), atol=1e-5)


def test_conversion_never_writes_over_an_existing_output(release, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="already exists and is not an empty directory"):
        convert.main(["--input", release["path"], "--output", str(tmp_path / "taken")])
    with pytest.raises(SystemExit, match="already exists"):
        convert.main(["--input", release["path"], "--output", release["orbax"]])
    assert os.listdir(tmp_path / "taken") == ["notes.txt"]


def test_architecture_mismatch_names_every_tensor(release):
    with pytest.raises(ValueError) as e:
        loader.load_encoder(release["path"], placement=CPU, variant="xs/4")
    msg = str(e.value)
    assert "width 64, depth 4, patch 4" in msg and "'xs/4' is width 128, depth 6, patch 4" in msg
    assert "blocks.0.attn.qkv.weight: shape (192, 64) in the checkpoint, (384, 128) expected" in msg
    assert "blocks.4.norm1.weight: missing from the checkpoint (expected (128,))" in msg
    with pytest.raises(ValueError, match=r"patch_embed.proj.weight: shape \(64, 3, 4, 4\) in the checkpoint, "
                                         r"\(64, 3, 8, 8\) expected"):
        loader.load_encoder(release["path"], placement=CPU, variant="mu/8")
    with pytest.raises(ValueError, match=r"block_0/attn/qkv/kernel: shape \(64, 192\) in the checkpoint, "
                                         r"\(128, 384\) expected"):
        loader.load_encoder(release["orbax"], placement=CPU, variant="xs/4")
    with pytest.raises(SystemExit, match="error: .*'B/16' is width 768, depth 12, patch 16"):
        convert.main(["--input", release["path"], "--output", "unused", "--variant", "B/16"])


def test_unknown_and_missing_keys_are_reported(ref, tmp_path):
    import torch

    model = make_mae(ref, seed=2)
    sd = dict(model.state_dict(), **{"head.weight": torch.zeros(10, WIDTH)})
    del sd["blocks.1.mlp.fc2.bias"]
    torch.save({"model": sd}, tmp_path / "odd.pth")
    path = str(tmp_path / "odd.pth")
    with pytest.raises(ValueError) as e:
        mdistill.load_pretrained(path)
    assert "head.weight: not in the model (shape (10, 64))" in str(e.value)
    assert "blocks.1.mlp.fc2.bias: missing from the checkpoint (expected (64,))" in str(e.value)
    with pytest.raises(ValueError) as e:  # an explicit ignore drops the head, nothing else
        loader.state_dict_to_params(state_dict.read_state_dict(path), path, ignore=("head.",))
    assert "head.weight" not in str(e.value) and "blocks.1.mlp.fc2.bias" in str(e.value)


def test_a_learned_position_embedding_becomes_a_parameter(ref, tmp_path):
    """A fine-tuned checkpoint's table is no longer MAE's sin-cos one: it is kept as the
    encoder's pos_embed (a learned layout) and reproduces the reference with that table."""
    import torch

    model = make_mae(ref, seed=3)
    with torch.no_grad():
        model.pos_embed.add_(0.02 * torch.randn(model.pos_embed.shape))
    path = save_release(model, tmp_path / "finetuned.pth", encoder_only=True)
    w = loader.load(path, decoder=False)
    assert w.arch.spec.layout.posemb == "learned" and w.encoder["pos_embed"].shape == (1, 17, WIDTH)
    images, ids_keep = inputs()
    latent, _, _ = torch_forward(model, images, ids_keep)
    ours, _ = mdistill.models.Encoder(w.arch.spec).apply({"params": w.encoder}, images, ids_keep)
    np.testing.assert_allclose(np.asarray(ours), latent, atol=ATOL)


def test_corrupt_or_missing_files_fail_naming_the_file(release, tmp_path):
    data = open(release["path"], "rb").read()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"could not read '{bad}'.*is the file complete"):
        loader.load_encoder(str(bad))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        state_dict.read_state_dict(str(tmp_path / "nowhere.pth"))
    with pytest.raises(SystemExit, match=f"error: could not read '{bad}'"):
        convert.main(["--input", str(bad), "--output", str(tmp_path / "out")])


def test_release_with_training_extras_loads(ref, tmp_path):
    """Full training checkpoints also hold 'optimizer', 'epoch' and an argparse 'args'."""
    import argparse

    import torch

    model = make_mae(ref, seed=4)
    torch.save({"model": model.state_dict(), "epoch": 799, "args": argparse.Namespace(model="mae_vit_tiny")},
               tmp_path / "checkpoint-799.pth")
    assert mdistill.load_pretrained(str(tmp_path / "checkpoint-799.pth")).arch.decoder == DEC


def test_safetensors_files_read_without_torch(tmp_path):
    """timm's hub files: an 8-byte header length, a JSON header, raw little-endian data."""
    tensors = {"cls_token": np.arange(4, dtype=np.float32).reshape(1, 1, 4),
               "norm.weight": np.ones(4, np.float16)}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        blob = value.tobytes()
        header[name] = {"dtype": {np.float32: "F32", np.float16: "F16"}[value.dtype.type],
                        "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    sd = state_dict.read_state_dict(str(path))
    np.testing.assert_array_equal(sd["cls_token"], tensors["cls_token"])
    assert sd["norm.weight"].dtype == np.float32 and sd["norm.weight"].sum() == 4


def smoke_config(checkpoint):
    """configs/dmae_vitb.py:smoke: DMAE from an xs/4 teacher (128 wide, 6 blocks) at 32px."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dmae_vitb", os.path.join(os.path.dirname(__file__), "..", "configs", "dmae_vitb.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    assert (config.teacher.variant, config.image_size) == ("xs/4", 32)
    config.teacher.checkpoint = checkpoint
    return config


@pytest.fixture(scope="module")
def xs_teacher(ref, tmp_path_factory):
    """An encoder-only release of the smoke config's teacher architecture, and its conversion."""
    d = tmp_path_factory.mktemp("xs_teacher")
    teacher = ref.randomize(ref.MAE(32, 4, 3, 128, 6, 4, *DEC), 5).eval()
    pth = save_release(teacher, d / "mae_pretrain_vit_xs.pth", encoder_only=True)
    convert.main(["--input", pth, "--output", str(d / "orbax"), "--variant", "xs/4"])
    return pth, str(d / "orbax")


@pytest.mark.slow
def test_teacher_pth_is_placed_by_the_partition_rules(xs_teacher):
    """config.teacher.checkpoint=<.pth> gives the same teacher as its Orbax conversion, each
    leaf with the sharding the train step expects, here split over a 2-device 'fsdp' axis."""
    from mdistill import sharding, train

    pth, orbax = xs_teacher
    mesh = sharding.make_mesh(jax.devices()[:2], {"data": 1, "fsdp": 2})
    from_pth = train.Trainer(smoke_config(pth), mesh).load_teacher()
    trainer = train.Trainer(smoke_config(orbax), mesh)
    from_dir = trainer.load_teacher()
    jax.tree.map(np.testing.assert_array_equal, from_pth, from_dir)
    jax.tree.map(lambda x, s: assert_same_sharding(x.sharding, s, x.shape), from_pth, trainer.teacher_sharding)
    specs = [x.sharding.spec for x in jax.tree.leaves(from_pth)]
    assert any("fsdp" in spec for spec in specs) and any(not any(spec) for spec in specs)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"(?s)'mu/4' is width 64, depth 4, patch 4.*\n  blocks.0.attn.qkv.weight: "
                                         r"shape \(384, 128\) in the checkpoint, \(192, 64\) expected"):
        config = smoke_config(pth)
        config.teacher.variant = "mu/4"
        config.distill.update(pairs=((1, 3),), projection=(64, 64))
        train.Trainer(config, mesh).load_teacher()


def assert_same_sharding(actual, expected, shape):
    assert actual.is_equivalent_to(expected, len(shape)), (shape, actual, expected)


@pytest.mark.slow
def test_dmae_smoke_run_with_a_pth_teacher(ref, xs_teacher, tmp_path):
    """The smoke DMAE config trains from the .pth itself (converted in memory)."""
    from mdistill import sharding, train

    config = smoke_config(xs_teacher[0])
    config.total_steps, config.warmup_steps, config.log_every = 2, 1, 1
    last = train.train(config, str(tmp_path / "run"), sharding.make_mesh(jax.devices()[:2]))
    assert last["step"] == 2 and np.isfinite(last["distill_loss"]) and last["distill_loss"] > 0
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")
    # the trained student: loadable as a pretrained MAE, exportable to the fine-tuning model
    student = mdistill.load_pretrained(str(tmp_path / "run"))
    assert (student.spec, student.arch.decoder, student.arch.image_size) == (
        ViTSpec.parse("mu/4"), (64, 1, 4), 32)
    import torch

    convert.export_to_torch(str(tmp_path / "run"), str(tmp_path / "student.pth"), num_classes=0)
    vit = ref.ViT(32, 4, 3, 64, 4, 4, num_classes=0, global_pool=False)
    vit.load_state_dict(torch.load(tmp_path / "student.pth", weights_only=True)["model"], strict=True)


# ---- timm itself (tests/run.sh installs it; tests/real_timm.py) ------------------------------
def timm_vit(global_pool="token", num_classes=0):
    VisionTransformer = import_timm().models.vision_transformer.VisionTransformer
    return VisionTransformer(img_size=IMG, patch_size=PATCH, in_chans=CHANS, embed_dim=WIDTH, depth=DEPTH,
                             num_heads=HEADS, num_classes=num_classes, global_pool=global_pool).eval()


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_export_loads_strictly_into_timm(release, tmp_path, global_pool):
    import torch

    vit = timm_vit(global_pool, num_classes=10)
    out = tmp_path / "student.pth"
    convert.main(["--export", "--input", release["orbax"], "--output", str(out), "--num_classes", "10"]
                 + (["--global_pool"] if global_pool == "avg" else []))
    vit.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
    images, _ = inputs()
    with torch.no_grad():
        tokens = vit.forward_features(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    model = mdistill.load_pretrained(release["orbax"])
    if global_pool == "token":  # timm's forward_features ends with the final norm
        np.testing.assert_allclose(tokens, model.features(images), atol=ATOL)
    else:  # norm is Identity, fc_norm comes after pooling: the last block's raw output
        np.testing.assert_allclose(tokens, model.encode(images, layers=(DEPTH - 1,))[DEPTH - 1], atol=ATOL)
    # the .safetensors export (written without torch) loads as strictly, with the same logits
    from safetensors.torch import load_file

    st = tmp_path / "student.safetensors"
    convert.main(["--export", "--input", release["orbax"], "--output", str(st), "--num_classes", "10"]
                 + (["--global_pool"] if global_pool == "avg" else []))
    again = timm_vit(global_pool, num_classes=10)
    again.load_state_dict(load_file(str(st)), strict=True)
    batch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        np.testing.assert_array_equal(again(batch).numpy(), vit(batch).numpy())


def test_timm_mae_checkpoint_imports(ref, tmp_path):
    """timm's vit_*_patch16_224.mae: a bare state dict (no 'model' wrapper), .pth or .safetensors."""
    import torch

    vit = timm_vit()
    with torch.no_grad():
        vit.pos_embed.copy_(torch.from_numpy(ref.sincos_table(WIDTH, IMG // PATCH))[None])
    ref.randomize(vit, 6)
    torch.save(vit.state_dict(), tmp_path / "pytorch_model.bin")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file(vit.state_dict(), str(tmp_path / "model.safetensors"))
    images, ids_keep = inputs()
    with torch.no_grad():
        tokens = vit.forward_features(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    for name in ("pytorch_model.bin", "model.safetensors"):
        model = mdistill.load_pretrained(str(tmp_path / name), variant="mu/4")
        np.testing.assert_allclose(model.features(images), tokens, atol=ATOL, err_msg=name)


# ---- .safetensors export ---------------------------------------------------------------------
@pytest.mark.slow
def test_safetensors_export_needs_no_torch_and_reimports(tmp_path, monkeypatch):
    """A smoke student written as .safetensors: the same tensors as export_state_dict, read
    back by safetensors' numpy API and by mdistill, and a valid checkpoint again; with torch
    made unimportable, so the writer cannot lean on it."""
    import sys

    import orbax.checkpoint as ocp

    from configs import mae_vitb
    from mdistill.config import apply_smoke
    from mdistill.objectives import build_objective

    config = apply_smoke(mae_vitb.get_config())
    objective = build_objective(config)
    params = objective.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8))
    run = tmp_path / "run"
    mngr = checkpoint.manager(str(run))
    mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                         meta=ocp.args.JsonSave({"step": 0, "config": config.to_dict()})))
    mngr.wait_until_finished()
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    out = tmp_path / "student.safetensors"
    convert.main(["--export", "--input", str(run), "--output", str(out), "--num_classes", "10"])
    from safetensors.numpy import load_file

    written = load_file(str(out))
    expected = convert.export_state_dict(jax.device_get(params["mae"]["encoder"]), 32, num_classes=10)
    assert written.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(written[k], expected[k], err_msg=k)
        assert written[k].dtype == np.float32
    np.testing.assert_array_equal(state_dict.read_state_dict(str(out))["blocks.0.attn.qkv.weight"],
                                  expected["blocks.0.attn.qkv.weight"])
    back = loader.load_encoder(str(out), "mu/4", ignore=("head.",))
    for path, value in state_dict.flatten(params["mae"]["encoder"]).items():
        np.testing.assert_array_equal(state_dict.flatten(back)[path], np.asarray(value), err_msg=str(path))


@pytest.mark.parametrize("global_pool", [False, True])
def test_safetensors_export_loads_strictly_into_the_timm_layout(ref, release, tmp_path, global_pool):
    import torch
    from safetensors.torch import load_file

    vit = ref.ViT(IMG, PATCH, CHANS, WIDTH, DEPTH, HEADS, num_classes=10, global_pool=global_pool).eval()
    out = tmp_path / "student.safetensors"
    convert.main(["--export", "--input", release["orbax"], "--output", str(out), "--num_classes", "10"]
                 + (["--global_pool"] if global_pool else []))
    vit.load_state_dict(load_file(str(out)), strict=True)
    pth = tmp_path / "student.pth"
    convert.main(["--export", "--input", release["orbax"], "--output", str(pth), "--num_classes", "10"]
                 + (["--global_pool"] if global_pool else []))
    from_pth = torch.load(pth, weights_only=True)["model"]
    for k, v in load_file(str(out)).items():
        np.testing.assert_array_equal(v.numpy(), from_pth[k].numpy(), err_msg=k)


# ---- export defaults: the pre-training release's tensors ------------------------------------------
def test_a_pretrained_export_by_default_has_the_pretraining_releases_tensors(ref, release, tmp_path):
    """mae_pretrain_vit_*.pth holds the encoder and its final norm, no head and no fc_norm: the
    official main_finetune.py --finetune drops head.* only when its shape differs and then asserts
    that exactly head.* (and fc_norm.*) are missing, so a zero head of 1000 rows kept there fails."""
    import torch
    from safetensors.numpy import load_file

    release_keys = {k for k in release["model"].state_dict() if not (k.startswith("decoder_") or k == "mask_token")}
    pth, st = tmp_path / "student.pth", tmp_path / "student.safetensors"
    for out in (pth, st):
        convert.main(["--export", "--input", release["orbax"], "--output", str(out)])
    assert set(torch.load(pth, weights_only=True)["model"]) == release_keys
    assert set(load_file(str(st))) == release_keys
    assert set(convert.export_state_dict(loader.load_encoder(release["orbax"]), IMG)) == release_keys
    # asked for: a zero head of --num_classes rows, fc_norm (ones, zeros) in place of norm
    convert.main(["--export", "--input", release["orbax"], "--output", str(pth), "--num_classes", "7",
                  "--global_pool", "--overwrite"])
    sd = torch.load(pth, weights_only=True)["model"]
    assert set(sd) == release_keys - {"norm.weight", "norm.bias"} | {"fc_norm.weight", "fc_norm.bias",
                                                                      "head.weight", "head.bias"}
    assert sd["head.weight"].shape == (7, WIDTH) and not sd["head.weight"].any() and sd["fc_norm.weight"].all()
