"""The one training loop (mdistill/loop.py) on a toy step, and each job through it: the mesh
line every run starts with, fine-tuning on an FSDP mesh against one device."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags
from jax.sharding import NamedSharding, PartitionSpec as P

from mdistill import loop, sharding
from mdistill.config import apply_smoke, base_config
from mdistill.weights import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH_LINE = re.compile(r"^(\w+: )?mesh data=(\d+) fsdp=(\d+) \| per device: params ([\d,]+) B \+ optimizer "
                       r"([\d,]+) B = [\d.]+ (B|KiB|MiB|GiB)$", re.M)


# ---- the loop on a toy step ----------------------------------------------------------------------
@jax.jit
def toy_step(state, batch):
    """Gradient descent on 0.5 |w - batch|^2; the loss is the mean of its terms."""
    grads = state.params["w"] - batch
    params = {"w": state.params["w"] - 0.5 * grads}
    metrics = {"loss": 0.5 * jnp.mean(grads ** 2), "grad_norm": jnp.linalg.norm(grads)}
    return loop.TrainState(state.step + 1, params, state.opt_state), metrics


def toy_state():
    return loop.TrainState(jnp.zeros((), jnp.int32), {"w": jnp.zeros(4)}, {"m": jnp.zeros(4)})


class Recorder:
    """A monitor due every `every` steps, recording the steps it ran at and the saves."""

    def __init__(self, every, name="seen"):
        self.every, self.name, self.calls = every, name, []

    def metric_names(self):
        return {self.name}

    def due(self, step, is_last=False, saving=False):
        return step % self.every == 0

    def maybe_run(self, step, params, is_last=False, saving=False):
        if not self.due(step, is_last, saving):
            return {}
        self.calls.append((step, saving, float(params["w"][0])))
        return {self.name: float(step)}


def batches(values):
    return iter([jnp.full(4, v, jnp.float32) for v in values])


def test_plan_from_epochs_or_explicit_steps():
    c = base_config()
    c.num_epochs, c.warmup_epochs, c.total_steps, c.warmup_steps = 2.5, 0.5, -1, -1
    assert loop.plan_steps(c, 100, 8) == loop.Plan(12, 30, 6)
    c.total_steps, c.warmup_steps = 4, 10  # warm-up at most the run
    assert loop.plan_steps(c, 100, 8) == loop.Plan(12, 4, 4)
    assert loop.plan_steps(c, 3, 8).steps_per_epoch == 1


def test_loop_logs_means_runs_monitors_and_saves_on_schedule(tmp_path, capsys):
    mngr = checkpoint.manager(str(tmp_path / "checkpoints"), keep=5)
    monitor = Recorder(every=3)
    meta = lambda step: {"step": step}  # noqa: E731
    result = loop.run(toy_step, toy_state(), batches([2.0] * 6), mesh=sharding.make_mesh(jax.devices()[:1]),
                      start=0, total=6, batch_size=4, log_every=4, monitors=(monitor,),
                      checkpoints=loop.Checkpoints(mngr, 5, meta), what="toy: ")
    out = capsys.readouterr().out
    assert MESH_LINE.search(out).group(1, 2, 3, 4, 5) == ("toy: ", "1", "1", "16", "16")
    # the monitor ran at 3 and 6 on the state of that step (w halves its distance to 2 each step)
    assert [(s, saving) for s, saving, _ in monitor.calls] == [(3, False), (6, True)]
    assert monitor.calls[0][2] == pytest.approx(2.0 - 2.0 * 0.5 ** 3)
    # lines at 3 (the monitor's metrics), 4 (log_every) and 6 (the last): each the mean since the previous
    losses = [0.5 * (2.0 * 0.5 ** i) ** 2 for i in range(6)]
    assert result.last["step"] == 6 and result.last["seen"] == 6.0 and not result.stopped
    assert result.last["loss"] == pytest.approx(np.mean(losses[4:6]))
    assert sorted(mngr.all_steps()) == [5, 6]
    assert float(result.state.params["w"][0]) == pytest.approx(2.0 - 2.0 * 0.5 ** 6)


def test_a_non_finite_step_stops_before_monitors_logs_and_saves(tmp_path):
    mngr = checkpoint.manager(str(tmp_path / "checkpoints"), keep=5)
    monitor = Recorder(every=1)
    with pytest.raises(FloatingPointError, match=r"toy: non-finite loss and grad_norm at step 3 .*"
                                                 r"checkpoints/2 is kept"):
        loop.run(toy_step, toy_state(), batches([1.0, 1.0, np.inf, 1.0]), mesh=sharding.make_mesh(jax.devices()[:1]),
                 start=0, total=4, batch_size=4, log_every=10, monitors=(monitor,),
                 checkpoints=loop.Checkpoints(mngr, 1, lambda step: {"step": step}), what="toy: ")
    assert [s for s, _, _ in monitor.calls] == [1, 2] and sorted(mngr.all_steps()) == [1, 2]
    with pytest.raises(FloatingPointError, match="non-finite loss and grad_norm at step 1; this run saves no"):
        loop.run(toy_step, toy_state(), batches([np.nan]), mesh=sharding.make_mesh(jax.devices()[:1]), start=0,
                 total=1, batch_size=4, log_every=1)


class Preemption:
    requested = False

    def __init__(self, at):
        self.at = at

    def should_stop(self, step):
        return step >= self.at


def test_preemption_saves_the_step_and_stops(tmp_path, capsys):
    mngr = checkpoint.manager(str(tmp_path / "checkpoints"), keep=5)
    closed = []
    result = loop.run(toy_step, toy_state(), batches([1.0] * 8), mesh=sharding.make_mesh(jax.devices()[:1]),
                      start=0, total=8, batch_size=4, log_every=100, preemption=Preemption(at=3),
                      checkpoints=loop.Checkpoints(mngr, 100, lambda step: {"step": step}),
                      closers=(lambda: closed.append(1),))
    assert result.stopped and int(result.state.step) == 3 and mngr.all_steps() == [3] and closed == [1]
    assert "SIGTERM: saved step 3, stopping" in capsys.readouterr().out
    early = Preemption(at=0)
    early.requested = True
    result = loop.run(toy_step, toy_state(), batches([1.0]), mesh=sharding.make_mesh(jax.devices()[:1]), start=0,
                      total=1, batch_size=4, log_every=1, preemption=early, closers=(lambda: closed.append(2),))
    assert result.stopped and int(result.state.step) == 0 and closed == [1, 2]


def test_bytes_held_counts_one_devices_share():
    mesh = sharding.make_mesh(shape={"data": 4, "fsdp": 2})
    x = jax.device_put(jnp.zeros((8, 4096)), NamedSharding(mesh, P("fsdp")))
    y = jax.device_put(jnp.zeros(10, jnp.int32), NamedSharding(mesh, P()))
    assert loop.bytes_held({"x": x, "y": y}) == 4 * 4096 * 4 + 40
    assert "mesh data=4 fsdp=2 | per device: params 1,024 B + optimizer 0 B = 1.0 KiB" == loop.mesh_line(mesh, 1024, 0)


# ---- every job starts with its mesh line ----------------------------------------------------------
def mesh_lines(out):
    return [m.groups() for m in MESH_LINE.finditer(out)]


def fsdp_mesh():
    return sharding.make_mesh(shape={"data": 4, "fsdp": 2})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from mdistill.train import train

    c = apply_smoke(base_config())
    c.update(method="mae", total_steps=2, warmup_steps=0, log_every=2, checkpoint_every=2, visualize_every=0)
    workdir = str(tmp_path_factory.mktemp("pretrained"))
    train(c, workdir, fsdp_mesh())
    return workdir


@pytest.mark.slow
def test_pretraining_names_its_mesh_and_bytes_per_device(tmp_path, capsys):
    from mdistill.train import Trainer, count_params, train

    c = apply_smoke(base_config())
    c.update(method="mae", total_steps=1, warmup_steps=0, log_every=1, visualize_every=0)
    mesh = fsdp_mesh()
    train(c, str(tmp_path), mesh)
    [(what, data, fsdp, params, opt, _)] = mesh_lines(capsys.readouterr().out)
    trainer = Trainer(c, mesh)
    state = trainer.abstract_state()
    assert (what, data, fsdp) == (None, "4", "2")
    assert int(params.replace(",", "")) == sharding.bytes_per_device(state.params, trainer.state_sharding.params)
    assert int(opt.replace(",", "")) == sharding.bytes_per_device(state.opt_state, trainer.state_sharding.opt_state)
    assert int(params.replace(",", "")) < 4 * count_params(state.params)  # float32, split over 'fsdp'


@pytest.mark.slow
def test_finetuning_and_the_probe_name_their_mesh_and_bytes_per_device(pretrained, tmp_path, capsys):
    from configs.finetune_fmnist import get_config as finetune_config
    from configs.linprobe_fmnist import get_config as linprobe_config
    from mdistill.evaluate import finetune, linprobe

    c = finetune_config("smoke")
    c.update(pretrained=pretrained, total_steps=2, warmup_steps=0, log_every=2, eval_every=2, checkpoint_every=2)
    c.mesh.update(data=4, fsdp=2)
    finetune.run(c, str(tmp_path / "ft"))  # the mesh of config.mesh
    [(what, data, fsdp, params, opt, _)] = mesh_lines(capsys.readouterr().out)
    ft = finetune.FineTuner(c, fsdp_mesh())
    state = ft.abstract_state()
    assert (what, data, fsdp) == ("finetune: ", "4", "2")
    assert int(params.replace(",", "")) == sharding.bytes_per_device(state.params, ft.state_sharding.params)
    assert int(opt.replace(",", "")) == sharding.bytes_per_device(state.opt_state, ft.state_sharding.opt_state)

    p = linprobe_config("smoke")
    p.update(pretrained=pretrained, total_steps=2, warmup_steps=0, log_every=2)
    p.mesh.update(data=4, fsdp=2)
    linprobe.run(p, str(tmp_path / "lp"))
    [(what, data, fsdp, params, opt, _)] = mesh_lines(capsys.readouterr().out)
    width, classes = 64, 10  # mu/4's features, the smoke data's classes: Dense kernel and bias (BatchNorm has none)
    assert (what, data, fsdp) == ("linprobe: ", "4", "2")
    assert int(params.replace(",", "")) == 4 * (width * classes + classes)
    assert int(opt.replace(",", "")) >= int(params.replace(",", ""))  # LARS's momentum, its count


# ---- fine-tuning on an FSDP mesh -----------------------------------------------------------------
def finetune_command(workdir, *extra):
    return [sys.executable, "-m", "mdistill.evaluate.finetune", "--config=configs/finetune_fmnist.py:smoke",
            "--config.total_steps=6", "--config.warmup_steps=2", "--config.log_every=1", "--config.eval_every=6",
            "--config.checkpoint_every=6", f"--workdir={workdir}", *extra]


@pytest.mark.slow
def test_finetuning_shards_over_fsdp_and_logs_the_losses_of_one_device(tmp_path):
    from configs.finetune_fmnist import get_config
    from mdistill.evaluate import finetune

    # the partition rules split the encoder's large matrices and their Adam moments over 'fsdp'
    c = get_config("smoke")
    ft = finetune.FineTuner(c, fsdp_mesh())
    state = ft.init_state()
    kernel = state.params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert "fsdp" in kernel.sharding.spec and kernel.addressable_shards[0].data.size == kernel.size // 2
    moments = [x for path, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
               if jax.tree_util.keystr(path).endswith("['encoder']['block_0']['mlp']['fc1']['kernel']")]
    assert len(moments) == 2 and all(m.sharding.spec == kernel.sharding.spec for m in moments)  # Adam's mu, nu
    assert jax.tree.leaves(ft.state_sharding.params) == jax.tree.leaves(jax.tree.map(lambda x: x.sharding,
                                                                                     state.params))
    runs = {}
    for devices, extra in ((1, ()), (8, ("--config.mesh.fsdp=2",))):
        workdir = tmp_path / f"d{devices}"
        out = subprocess.run(finetune_command(workdir, *extra), cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, XLA_FLAGS=xla_flags(devices)), timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[devices] = ([json.loads(line) for line in open(workdir / "metrics.jsonl")], mesh_lines(out.stdout))
    (one, [line1]), (eight, [line8]) = runs[1], runs[8]
    assert line1[1:3] == ("1", "1") and line8[1:3] == ("4", "2")
    assert int(line8[3].replace(",", "")) < int(line1[3].replace(",", ""))  # params split over two devices
    assert [r["step"] for r in one] == [r["step"] for r in eight] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in eight], [r[key] for r in one], rtol=1e-5)
    assert one[-1]["top1"] == pytest.approx(eight[-1]["top1"], abs=1e-4)
