"""config.student.init: the student starts from a checkpoint (a run, a converted release or a
PyTorch / safetensors file), checked against the student's variant and decoder."""

import numpy as np
import pytest

from mdistill import sharding
from mdistill.config import apply_smoke, base_config
from mdistill.train import Trainer, train
from mdistill.weights import convert
from mdistill.weights.checkpoint import CheckpointError
from mdistill.weights.state_dict import flatten

pytestmark = pytest.mark.slow  # training runs started from checkpoints (tests/README.md)


def smoke(method, **overrides):
    c = apply_smoke(base_config())
    c.method = method
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """A 3-step MAE smoke run of the smoke student (mu/4 with the smoke decoder)."""
    d = tmp_path_factory.mktemp("mae")
    train(smoke("mae", total_steps=3), str(d / "run"))
    return str(d / "run")


def assert_same(a: dict, b: dict):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_a_run_initialises_encoder_and_decoder_and_trains_on(mae_run, tmp_path):
    from mdistill.weights import loader

    c = smoke("dmae", total_steps=2)
    c.student.init = mae_run
    trainer = Trainer(c, sharding.make_mesh())
    state = trainer.init_state()
    saved = loader.load(mae_run)
    assert_same(state.params["mae"], saved.params)
    assert "heads" in state.params  # DMAE's projection keeps its random init
    assert np.isfinite(train(c, str(tmp_path / "dmae"))["loss"])


def test_an_encoder_only_file_sets_the_encoder(mae_run, tmp_path):
    """A .safetensors export (encoder only): the encoder is the file's, the decoder random."""
    out = str(tmp_path / "student.safetensors")
    convert.export_to_torch(mae_run, out, num_classes=0)
    c = smoke("mae")
    fresh = Trainer(c, sharding.make_mesh()).init_state()
    c.student.init = out
    state = Trainer(c, sharding.make_mesh()).init_state()
    from mdistill.weights import loader

    assert_same(state.params["mae"]["encoder"], loader.load_encoder(mae_run))
    assert_same(state.params["mae"]["decoder"], fresh.params["mae"]["decoder"])


def test_a_checkpoint_of_another_architecture_is_refused(mae_run):
    c = smoke("mae")
    c.student.variant = "xs/4"
    c.student.init = mae_run
    with pytest.raises(CheckpointError, match="config.student.init: .*config.student.variant='xs/4'"):
        Trainer(c, sharding.make_mesh()).init_state()
    c = smoke("mae")
    c.student.decoder_depth += 1
    c.student.init = mae_run
    with pytest.raises(CheckpointError, match=r"does not fit the student(.|\n)*decoder/block_\d+/.*missing"):
        Trainer(c, sharding.make_mesh()).init_state()
    c.student.init = "/nonexistent/run"
    with pytest.raises((CheckpointError, FileNotFoundError), match="nonexistent"):
        Trainer(c, sharding.make_mesh()).init_state()


# ---- video students (config.num_frames > 1) -------------------------------------------------
def video_smoke(**overrides):
    """configs/amd_video.py:smoke: AMD on 4-frame synthetic clips, mu/4 <- xs/4 (random teacher)."""
    from configs import amd_video

    c = amd_video.get_config("smoke")
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    train(video_smoke(total_steps=2, warmup_steps=1, log_every=1), str(d / "run"))
    return str(d / "run")


def test_a_video_run_continues_from_a_video_run(video_run, tmp_path):
    """Encoder, decoder, AMD's projection heads and generators: the run's own, at step 0."""
    from mdistill.weights import checkpoint

    c = video_smoke(total_steps=1, warmup_steps=0, log_every=1)
    c.student.init = video_run
    state = Trainer(c, sharding.make_mesh()).init_state()
    saved, _ = checkpoint.load_params(video_run, None)
    assert int(state.step) == 0 and set(saved) == {"mae", "heads", "generators"}
    assert_same(state.params, saved)
    assert np.isfinite(train(c, str(tmp_path / "continued"))["loss"])


def test_video_and_image_checkpoints_are_refused_by_the_other_kind_of_student(video_run, mae_run):
    c = smoke("mae")
    c.student.init = video_run
    with pytest.raises(CheckpointError) as e:
        Trainer(c, sharding.make_mesh()).init_state()
    msg = str(e.value)
    assert "\n" not in msg and "holds a video ViT (2-frame tubelets) but the student is an image ViT" in msg
    c = video_smoke()
    c.student.init = mae_run
    with pytest.raises(CheckpointError, match=r"holds an image ViT but the student is a video ViT \(2-frame") as e:
        Trainer(c, sharding.make_mesh()).init_state()
    assert "\n" not in str(e.value)


# ---- the official DMAE and AMD releases' students --------------------------------------------
def save_pth(sd: dict, path) -> str:
    """As the releases' main_distill.py / run_amd_pretrain.py save: {'model': ..., 'epoch': ...}."""
    import argparse

    import torch

    torch.save({"model": {k: torch.as_tensor(np.asarray(v)) for k, v in sd.items()}, "epoch": 99,
                "args": argparse.Namespace(model="student")}, path)
    return str(path)


def dmae_release(tmp_path, heads=1, mlp=False):
    """A DMAE student checkpoint in the release's layout (models_mae_distill.py) at smoke size: the
    mu/4 MAE (decoder 64 wide, 1 block), aligned_feature_projection_heads 64 -> 128."""
    torch = pytest.importorskip("torch")
    import torch_reference as ref

    model = ref.randomize(ref.MAE(32, 4, 3, 64, 4, 4, 64, 1, 4), 7)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for i in range(heads):
        prefix = f"aligned_feature_projection_heads.{i}."
        if mlp:  # 'mlp-1layer': timm's Mlp, hidden width the teacher's
            sd[prefix + "fc1.weight"], sd[prefix + "fc1.bias"] = torch.randn(128, 64, generator=g), torch.zeros(128)
            sd[prefix + "fc2.weight"], sd[prefix + "fc2.bias"] = torch.randn(128, 128, generator=g), torch.zeros(128)
        else:
            sd[prefix + "weight"] = torch.randn(128, 64, generator=g)
            sd[prefix + "bias"] = torch.randn(128, generator=g)
    sd = {k: np.asarray(v) for k, v in sd.items()}
    return save_pth(sd, tmp_path / "dmae_student.pth"), sd


def test_the_official_dmae_student_starts_a_dmae_run_with_its_projection(tmp_path, capsys):
    from mdistill.weights import loader

    path, sd = dmae_release(tmp_path, heads=2)
    c = smoke("dmae", total_steps=1, warmup_steps=0, log_every=1)
    c.student.init = path
    state = Trainer(c, sharding.make_mesh()).init_state()
    assert_same(state.params["mae"], loader.load(path, "mu/4", method_heads=True).params)
    head = state.params["heads"]["proj_s1_t3"]["out"]
    np.testing.assert_array_equal(np.asarray(head["kernel"]), sd["aligned_feature_projection_heads.0.weight"].T)
    np.testing.assert_array_equal(np.asarray(head["bias"]), sd["aligned_feature_projection_heads.0.bias"])
    out = capsys.readouterr().out
    assert "heads/proj_s1_t3 <- projection head 0" in out
    assert "projection head 1: this dmae run has 1 aligned pair(s)" in out  # listed, not loaded
    assert np.isfinite(train(c, str(tmp_path / "run"))["loss"])


def test_heads_that_do_not_fit_are_listed_and_init_ignore_drops_tensors(tmp_path, capsys):
    path, _ = dmae_release(tmp_path, mlp=True)  # 'mlp-1layer' heads; the run's are linear
    c = smoke("dmae")
    fresh = Trainer(c, sharding.make_mesh()).init_state()
    c.student.init = path
    state = Trainer(c, sharding.make_mesh()).init_state()
    assert_same(state.params["heads"], fresh.params["heads"])
    out = capsys.readouterr().out
    assert "not loaded" in out and "fc1/kernel: not in the model (shape (64, 128))" in out
    c.distill.head = "mlp"  # the release's 'mlp-1layer' is mdistill's 'mlp' head
    state = Trainer(c, sharding.make_mesh()).init_state()
    assert "heads/proj_s1_t3 <- projection head 0" in capsys.readouterr().out
    # config.student.init_ignore: prefixes of the tensors to leave out, a comma-separated string
    c.student.init_ignore = "aligned_feature_projection_heads., decoder_,mask_token"
    fresh = Trainer(c, sharding.make_mesh()).init_state()
    c.student.init = ""
    random = Trainer(c, sharding.make_mesh()).init_state()
    assert_same(fresh.params["heads"], random.params["heads"])
    assert_same(fresh.params["mae"]["decoder"], random.params["mae"]["decoder"])
    assert "the decoder keeps its random init" in capsys.readouterr().out


def test_an_mdistill_runs_heads_load_by_name_and_init_ignore_takes_parameter_paths(tmp_path):
    from mdistill.weights import checkpoint

    run = str(tmp_path / "dmae")
    train(smoke("dmae", total_steps=1, warmup_steps=0), run)
    saved, _ = checkpoint.load_params(run, None)
    c = smoke("dmae")
    c.student.init = run
    assert_same(Trainer(c, sharding.make_mesh()).init_state().params, saved)
    c.student.init_ignore = "heads/,decoder/"
    state = Trainer(c, sharding.make_mesh()).init_state()
    c.student.init = ""
    fresh = Trainer(c, sharding.make_mesh()).init_state()
    assert_same(state.params["heads"], fresh.params["heads"])
    assert_same(state.params["mae"]["decoder"], fresh.params["mae"]["decoder"])
    assert_same(state.params["mae"]["encoder"], saved["mae"]["encoder"])


def amd_release(tmp_path):
    """An AMD video student checkpoint in the release's layout (models/modeling_pretrain.py's
    PretrainAMD) at smoke size: the VideoMAE mu/4 student, encoder.projection_heads.<i>
    (bias-free, 64 -> 128) and generators.<i> (2 VideoMAE blocks at width 128, plus a norm its
    forward never uses) for the 2 aligned pairs."""
    torch = pytest.importorskip("torch")
    import torch_reference as ref

    model = ref.randomize(ref.VideoMAE(4, 32, 4, 2, 3, 64, 4, 4, 64, 1, 1), 8)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for i in range(2):
        sd[f"encoder.projection_heads.{i}.weight"] = torch.randn(128, 64, generator=g).numpy()
        generator = ref.randomize(torch.nn.ModuleList([ref.QVBlock(128, 2) for _ in range(2)]), 10 + i)
        for k, v in generator.state_dict().items():
            sd[f"generators.{i}.blocks.{k}"] = v.numpy()
        sd[f"generators.{i}.norm.weight"], sd[f"generators.{i}.norm.bias"] = np.ones(128), np.zeros(128)
    return save_pth(sd, tmp_path / "amd_student.pth"), sd


def test_the_official_amd_student_starts_an_amd_video_run_with_heads_and_generators(tmp_path, capsys):
    path, sd = amd_release(tmp_path)
    c = video_smoke()
    fresh = Trainer(c, sharding.make_mesh()).init_state()
    c.student.init = path
    state = Trainer(c, sharding.make_mesh()).init_state()
    p = state.params
    np.testing.assert_array_equal(np.asarray(p["mae"]["encoder"]["block_0"]["attn"]["q_bias"]),
                                  sd["encoder.blocks.0.attn.q_bias"])
    np.testing.assert_array_equal(np.asarray(p["mae"]["decoder"]["embed"]["kernel"]), sd["encoder_to_decoder.weight"].T)
    for i, (s, t) in enumerate(((1, 2), (3, 5))):
        np.testing.assert_array_equal(np.asarray(p["heads"][f"proj_s{s}_t{t}"]["out"]["kernel"]),
                                      sd[f"encoder.projection_heads.{i}.weight"].T)
        generator = p["generators"][f"gen_s{s}_t{t}"]
        np.testing.assert_array_equal(np.asarray(generator["block_1"]["mlp"]["fc2"]["kernel"]),
                                      sd[f"generators.{i}.blocks.1.mlp.fc2.weight"].T)
        np.testing.assert_array_equal(np.asarray(generator["block_0"]["attn"]["v_bias"]),
                                      sd[f"generators.{i}.blocks.0.attn.v_bias"])
        # the release stores no generator mask token: it keeps its init
        np.testing.assert_array_equal(np.asarray(generator["mask_token"]),
                                      np.asarray(fresh.params["generators"][f"gen_s{s}_t{t}"]["mask_token"]))
    out = capsys.readouterr().out
    assert "generators/gen_s1_t2 <- generator 0 (mask_token keep their init)" in out
    assert "generators.0.norm.weight (128,): no counterpart" in out


def test_a_student_without_a_decoder_starts_from_a_run_with_one(mae_run, capsys):
    """A TinyMIM student has no decoder: an MAE run's encoder starts it, its decoder is left out."""
    from mdistill.weights import loader

    c = smoke("tinymim")
    c.student.init = mae_run
    state = Trainer(c, sharding.make_mesh()).init_state()
    assert "decoder" not in state.params["mae"]
    assert_same(state.params["mae"]["encoder"], loader.load_encoder(mae_run))
    assert "its decoder left out (the student has none)" in capsys.readouterr().out
