"""Video: VideoMAE checkpoints (the pre-training layout AMD's teachers come in, and the
fine-tuning layout) load with the tubelet embedding, the 1-D sin-cos table and q / v biases,
and reproduce a PyTorch reference of VideoMAE's architecture block by block; tube masks
follow the official counts; MAE, DMAE and AMD train on clips."""

import json
import os

import jax
import numpy as np
import pytest

from mdistill import masking
from mdistill.models.mae import MAE
from mdistill.models.vit import Encoder, posemb_sincos_1d
from mdistill.weights import loader

FRAMES, IMG, PATCH, TUBELET, CHANS = 4, 16, 4, 2, 3
WIDTH, DEPTH, HEADS, DEC = 64, 4, 4, (64, 2, 1)  # mu/4; decoder heads 64 wide, as VideoMAE's
PARITY = 1e-4


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("torch")
    import torch_reference

    return torch_reference


@pytest.fixture(scope="module")
def release(ref, tmp_path_factory):
    import torch

    model = ref.randomize(ref.VideoMAE(FRAMES, IMG, PATCH, TUBELET, CHANS, WIDTH, DEPTH, HEADS, *DEC), 3).eval()
    path = tmp_path_factory.mktemp("videomae") / "videomae_pretrain_tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, str(path)


def clips_and_mask(batch=2, ratio=0.75, seed=0):
    clips = np.random.default_rng(seed).normal(size=(batch, FRAMES, IMG, IMG, CHANS)).astype(np.float32)
    m = masking.tube_masking(jax.random.PRNGKey(seed), batch, FRAMES // TUBELET, (IMG // PATCH) ** 2, ratio)
    return clips, np.sort(np.asarray(m.ids_keep), axis=1), m


def reference(model, clips, ids_keep):
    import torch

    num_tokens = (FRAMES // TUBELET) * (IMG // PATCH) ** 2
    hidden = np.ones((clips.shape[0], num_tokens), bool)
    np.put_along_axis(hidden, ids_keep, False, axis=1)
    with torch.no_grad():
        latent, blocks, pred = model(torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy()), torch.from_numpy(hidden))
    return latent.numpy(), [b.numpy() for b in blocks], pred.numpy(), hidden


def test_the_1d_table_is_videomaes(ref):
    np.testing.assert_allclose(posemb_sincos_1d(48, 20), ref.sinusoid_table(20, 48)[0].numpy(), atol=1e-6)


def test_the_official_tube_counts():
    # VideoMAE / AMD hide int(ratio * 196) patches of each frame: 20 seen at 0.9, 49 at 0.75
    assert masking.num_visible_per_frame(196, 0.9) == 20 and masking.num_visible_per_frame(196, 0.75) == 49
    m = masking.sample("random", jax.random.PRNGKey(0), 3, 8 * 196, 0.9, 0.75, frames=8)
    assert m.student.ids_keep.shape == (3, 8 * 20) and m.teacher_ids.shape == (3, 8 * 49)
    seen = np.zeros((3, 8, 196), bool)
    for b in range(3):
        seen[b].reshape(-1)[np.asarray(m.student.ids_keep[b])] = True
    assert (seen == seen[:, :1]).all()  # tubes: the same patches on every frame


@pytest.mark.slow
def test_a_videomae_release_matches_the_reference(release):
    model, path = release
    w = loader.load(path, "mu/4")
    layout = w.arch.spec.layout
    assert (layout.tubelet, layout.class_token, layout.posemb, layout.k_bias) == (2, False, "sincos_1d", False)
    assert w.arch.decoder == DEC
    clips, ids_keep, m = clips_and_mask()
    want_latent, want_blocks, want_pred, hidden = reference(model, clips, ids_keep)
    latent, feats = Encoder(w.arch.spec).apply({"params": w.encoder}, clips, ids_keep,
                                               return_blocks=tuple(range(DEPTH)))
    for i in range(DEPTH):
        np.testing.assert_allclose(np.asarray(feats[i]), want_blocks[i], atol=PARITY, err_msg=f"block {i}")
    np.testing.assert_allclose(np.asarray(latent), want_latent, atol=PARITY)
    mae = MAE(w.arch.spec, *w.arch.decoder, channels=CHANS)
    ids_restore = np.argsort(np.concatenate([ids_keep, np.nonzero(hidden)[1].reshape(len(clips), -1)], 1), 1)
    pred, _ = mae.apply({"params": w.params}, clips, ids_keep, ids_restore)
    hidden_ids = np.nonzero(hidden)[1].reshape(len(clips), -1)  # ascending, as the reference predicts them
    np.testing.assert_allclose(np.take_along_axis(np.asarray(pred), hidden_ids[:, :, None], 1), want_pred,
                               atol=PARITY)


def test_the_finetuning_layout_loads_as_an_encoder(ref, release, tmp_path):
    """models_vit-style names (no 'encoder.' prefix), mean pooling with fc_norm, a head."""
    import torch

    model, _ = release
    sd = {k.removeprefix("encoder."): v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    sd["fc_norm.weight"], sd["fc_norm.bias"] = sd.pop("norm.weight"), sd.pop("norm.bias")
    sd["head.weight"], sd["head.bias"] = torch.zeros(174, WIDTH), torch.zeros(174)
    torch.save({"model": sd}, tmp_path / "videomae_finetuned.pth")
    w = loader.load(str(tmp_path / "videomae_finetuned.pth"), "mu/4", decoder=False)
    assert not w.arch.spec.layout.final_norm
    clips, ids_keep, _ = clips_and_mask(seed=1)
    _, want_blocks, _, _ = reference(model, clips, ids_keep)
    _, feats = Encoder(w.arch.spec).apply({"params": w.encoder}, clips, ids_keep, return_blocks=(DEPTH - 1,))
    np.testing.assert_allclose(np.asarray(feats[DEPTH - 1]), want_blocks[-1], atol=PARITY)


# ---- training on clips ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def xs_teacher(ref, tmp_path_factory):
    """A VideoMAE pre-training checkpoint of the smoke teacher's size (xs/4: 128 wide, 6 blocks)."""
    import torch

    model = ref.randomize(ref.VideoMAE(4, 32, PATCH, TUBELET, CHANS, 128, 6, 4, 64, 1, 1), 5).eval()
    path = tmp_path_factory.mktemp("video_teacher") / "videomae_xs.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.mark.parametrize("method", ["mae", "dmae"])
@pytest.mark.slow
def test_mae_and_dmae_train_on_clips(method, tmp_path):
    from mdistill import sharding, train
    from mdistill.config import apply_smoke, base_config

    c = base_config()
    c.method, c.num_frames = method, 16
    apply_smoke(c)
    c.update(total_steps=2, warmup_steps=1, log_every=1)
    last = train.train(c, str(tmp_path / "run"), sharding.make_mesh(jax.devices()[:2]))
    assert last["step"] == 2 and np.isfinite(last["loss"]) and last["rec_loss"] > 0


@pytest.mark.slow
def test_amd_video_smoke_trains_from_a_videomae_teacher_from_the_command_line(xs_teacher, tmp_path):
    """configs/amd_video_vitb.py:smoke on synthetic 4-frame clips, the teacher a VideoMAE .pth."""
    from test_cli import cli

    out = cli("--config=configs/amd_video_vitb.py:smoke", f"--workdir={tmp_path / 'run'}",
              f"--config.teacher.checkpoint={xs_teacher}", "--config.total_steps=2", "--config.log_every=2",
              devices=2)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert record["step"] == 2 and record["dir_loss"] > 0 and record["gen_loss"] > 0


def test_an_image_teacher_is_refused_for_clips(ref, tmp_path):
    import torch

    from mdistill import sharding
    from mdistill.weights.checkpoint import CheckpointError
    from mdistill.config import apply_smoke, base_config
    from mdistill.train import Trainer

    image_teacher = ref.randomize(ref.MAE(32, PATCH, CHANS, 128, 6, 4, 64, 1, 2), 1)
    torch.save({"model": image_teacher.state_dict()}, tmp_path / "mae.pth")
    c = base_config()
    c.method, c.num_frames = "dmae", 16
    apply_smoke(c)
    c.teacher.checkpoint = str(tmp_path / "mae.pth")
    with pytest.raises(CheckpointError, match="the teacher embeds 2-D patches .images., the student 2-frame"):
        Trainer(c, sharding.make_mesh(jax.devices()[:1]))


@pytest.mark.slow
def test_the_dry_run_of_the_video_config_reports_frames_and_tubelets():
    from test_cli import cli

    out = cli("--config=configs/amd_video_vitb.py", "--dry_run")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["num_frames"], summary["tubelet_size"]) == (16, 2)
    assert (summary["teacher"], summary["teacher_blocks_run"]) == ("L/16", 24)
    assert summary["student"] == "B/16" and summary["global_batch_size"] == 2048
    # the release's repeated sampling: 512 videos x 4 clips a step, 200 epochs over SSv2's videos
    assert summary["records_per_step"] == 512 and summary["steps_per_epoch"] == 168_913 // 512
    assert summary["total_steps"] == 200 * summary["steps_per_epoch"]


def write_clips(folder, count, frames=20, seed=0):
    """`count` random .mp4 clips and their VideoMAE list file (label i % 2)."""
    from mdistill.data.video import write_video

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        write_video(str(folder / f"v{i}.mp4"), rng.integers(0, 255, (frames, 40, 48, 3), dtype=np.uint8))
        lines.append(f"v{i}.mp4 {i % 2}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return str(folder / "train.csv")


@pytest.mark.parametrize("batch_size,num_sample", [(5, 1), (10, 2)])
@pytest.mark.slow
def test_mae_trains_on_video_files_through_the_pipeline(tmp_path, capsys, batch_size, num_sample):
    """A VideoMAE list file of real .mp4 files (one of them truncated, which is skipped and
    logged), read by the pipeline with VideoMAE's sampling and multi-scale crop; with
    repeated sampling (num_sample 2) each step reads 5 videos for its 10 clips."""
    pytest.importorskip("av")
    from mdistill import sharding, train
    from mdistill.config import apply_smoke, base_config

    write_clips(tmp_path, 10)
    (tmp_path / "v3.mp4").write_bytes((tmp_path / "v3.mp4").read_bytes()[:300])  # truncated
    c = base_config()
    c.method, c.num_frames = "mae", 16
    apply_smoke(c)  # 4 frames of 32 px, 2-frame tubelets
    c.data.update(source="video_list", path=str(tmp_path / "train.csv"), root="", sampling_rate=2, flip=False,
                  size=0, max_bad_fraction=0.5, num_sample=num_sample)
    c.update(batch_size=batch_size, total_steps=2, warmup_steps=1, log_every=1)  # 2 steps: every video once
    last = train.train(c, str(tmp_path / "run"), sharding.make_mesh(jax.devices()[:1]))
    assert last["step"] == 2 and np.isfinite(last["loss"])
    out = capsys.readouterr()
    assert "v3.mp4" in out.out + out.err  # the truncated video, logged by name


@pytest.mark.slow
def test_knn_on_clip_features_monitor_and_command(tmp_path):
    """k-NN on average-pooled clip features: as the pre-training monitor on synthetic clips,
    and as the standalone command on a list of video files, beside both baselines."""
    pytest.importorskip("av")
    from mdistill import sharding, train
    from mdistill.config import apply_smoke, base_config
    from mdistill.evaluate import knn

    c = base_config()
    c.method, c.num_frames = "mae", 16
    apply_smoke(c)
    c.update(total_steps=2, warmup_steps=1, log_every=1)
    c.eval.update(knn_every=2, knn_train_examples=32, knn_test_examples=16, batch_size=16)
    mesh = sharding.make_mesh(jax.devices()[:1])
    last = train.train(c, str(tmp_path / "run"), mesh, knn.monitors(c, mesh))
    assert 0.0 <= last["knn_top1"] <= 100.0

    listing = write_clips(tmp_path, 12, seed=1)
    overrides = {"data.source": "video_list", "data.path": listing, "data.root": "", "data.sampling_rate": 2,
                 "data.flip": False, "data.size": 0, "eval.train_split": "train", "eval.test_split": "train",
                 "eval.knn_train_examples": -1, "eval.knn_test_examples": -1, "eval.batch_size": 4,
                 "eval.knn_k": 5}
    knn.evaluate_checkpoint(str(tmp_path / "run"), str(tmp_path / "knn"), overrides, mesh, baselines=True)
    result = json.load(open(tmp_path / "knn" / "knn.json"))
    assert set(result["baselines"]) == {"pixels", "random"} and 0.0 <= result["knn_top1"] <= 100.0


@pytest.mark.slow
def test_a_video_student_exports_to_videomaes_finetuning_layout(ref, tmp_path):
    """A trained video student, exported, loads into the reference's fine-tuning names and
    gives its block outputs; mdistill reads the export back."""
    import torch

    from mdistill import sharding, train
    from mdistill.weights import convert
    from mdistill.config import apply_smoke, base_config

    c = base_config()
    c.method, c.num_frames = "mae", 16
    apply_smoke(c)
    c.update(total_steps=1, warmup_steps=0, log_every=1)
    train.train(c, str(tmp_path / "run"), sharding.make_mesh(jax.devices()[:1]))
    convert.main(["--export", "--input", str(tmp_path / "run"), "--output", str(tmp_path / "student.pth"),
                  "--global_pool", "--num_classes", "174"])
    sd = torch.load(tmp_path / "student.pth", weights_only=True)["model"]
    assert sd["patch_embed.proj.weight"].shape == (64, 3, 2, 4, 4) and "blocks.0.attn.q_bias" in sd
    assert "fc_norm.weight" in sd and "norm.weight" not in sd and sd["head.weight"].shape == (174, 64)
    reference_encoder = ref.VideoMAEEncoder(4, 32, 4, 2, 3, 64, 4, 4)
    reference_encoder.norm = torch.nn.Identity()
    missing, unexpected = reference_encoder.load_state_dict(sd, strict=False)
    assert not missing and sorted(unexpected) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    back = loader.load(str(tmp_path / "student.pth"), "mu/4", decoder=False)
    trained = loader.load(str(tmp_path / "run"), decoder=False)
    clips = np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
    ids = np.tile(np.arange(128), (2, 1))
    _, ours = Encoder(back.arch.spec).apply({"params": back.encoder}, clips, ids, return_blocks=(3,))
    _, theirs = Encoder(trained.arch.spec).apply({"params": trained.encoder}, clips, ids, return_blocks=(3,))
    np.testing.assert_allclose(np.asarray(ours[3]), np.asarray(theirs[3]), atol=1e-6)
    with torch.no_grad():
        _, blocks = reference_encoder(torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy()),
                                      torch.zeros(2, 128, dtype=torch.bool))
    np.testing.assert_allclose(blocks[3].numpy(), np.asarray(theirs[3]), atol=PARITY)


def test_a_planned_size_that_is_not_the_datas_is_refused(tmp_path):
    pytest.importorskip("av")
    from configs import amd_video
    from mdistill import train
    from mdistill.config.validation import ConfigError

    c = amd_video.get_config("variant=S/16,smoke")
    assert amd_video.get_config("variant=S/16").data.size == 168_913  # SSv2's published count
    c.data.update(source="video_list", path=write_clips(tmp_path, 3), size=168_913)  # (smoke resets it)
    with pytest.raises(ConfigError, match=r"config.data.size=168913 .* holds 3 examples: set --config.data.size=0"):
        train.train(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


@pytest.mark.slow
def test_a_video_student_fine_tunes_with_the_multi_view_test(tmp_path):
    """Fine-tuning on clip files: VideoMAE's fine-tuning sampling for training, and each test
    video as 2 windows x 3 crops whose softmax is averaged."""
    pytest.importorskip("av")
    from mdistill import sharding, train
    from mdistill.config import apply_smoke, base_config
    from mdistill.evaluate import finetune

    c = base_config()
    c.method, c.num_frames = "mae", 16
    apply_smoke(c)
    c.update(total_steps=1, warmup_steps=0, log_every=1)
    mesh = sharding.make_mesh(jax.devices()[:1])
    train.train(c, str(tmp_path / "run"), mesh)

    listing = write_clips(tmp_path, 8, frames=24, seed=2)
    ft = finetune.finetune_config(apply_smoke(base_config()))
    ft.num_frames, ft.tubelet_size = 4, 2
    ft.data.update(source="video_list", path=listing, root="", sampling_rate=2, flip=False, size=0,
                   temporal="finetune", test_num_segment=2, test_num_crop=3, augment="none")
    ft.update(pretrained=str(tmp_path / "run"), batch_size=4, total_steps=2, warmup_steps=0,
              eval_every=2, log_every=1)
    ft.eval.update(train_split="train", test_split="train", batch_size=4)
    ft.finetune.update(randaug_layers=0, flip=True)
    # other data than the (synthetic) run's, named as the command line would
    explicit = {"data.source", "data.path", "data.root", "data.sampling_rate", "eval.train_split", "eval.test_split"}
    tuner = finetune.FineTuner(ft, mesh, explicit)
    assert tuner.test_transform().sample_shape == (6, 4, 32, 32, 3)
    result = finetune.run(ft, str(tmp_path / "ft"), mesh, explicit)
    assert 0.0 <= result["top1"] <= 100.0 and result["steps"] == 2
