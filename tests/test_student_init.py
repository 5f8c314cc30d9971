"""config.student.init: the student starts from a checkpoint (a run, a converted release or a
PyTorch / safetensors file), checked against the student's variant and decoder."""

import numpy as np
import pytest

from mdistill import convert, sharding
from mdistill.checkpoint import CheckpointError
from mdistill.config_base import apply_smoke, base_config
from mdistill.state_dict import flatten
from mdistill.train import Trainer, train


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
    from mdistill import weights

    c = smoke("dmae", total_steps=2)
    c.student.init = mae_run
    trainer = Trainer(c, sharding.make_mesh())
    state = trainer.init_state()
    saved = weights.load(mae_run)
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
    from mdistill import weights

    assert_same(state.params["mae"]["encoder"], weights.load_encoder(mae_run))
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
