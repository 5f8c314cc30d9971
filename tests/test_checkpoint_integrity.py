"""What a checkpoint proves about itself (issue 32, cases 7 and 10): every saved array's
checksum, verified on restore (a checkpoint whose bytes changed is set aside as corrupt and
the previous one used), and a distillation checkpoint's teacher digest (a resume with other
teacher weights is refused, unless config.teacher.allow_change says the change is meant)."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import xla_flags
from jax.sharding import NamedSharding, PartitionSpec as P

from mdistill.weights import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- helpers ------------------------------------------------------------------------------
def main(workdir, config, *extra):
    """A training process (2 simulated devices); -> CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "mdistill.main", f"--config={config}", f"--workdir={workdir}",
                           *extra], cwd=ROOT, env=dict(os.environ, XLA_FLAGS=xla_flags(2), PYTHONUNBUFFERED="1"),
                          capture_output=True, text=True, timeout=600)


def ok(out):
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def steps(directory):
    return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def raw_params(directory, step):
    """The step's parameters as Orbax reads them, with no checksum verified."""
    mngr = checkpoint.manager(str(directory), create=False)
    saved = mngr.item_metadata(step)["params"]
    target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), saved)
    return mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]


def flip_array_bytes(directory, step) -> str:
    """Flip 16 bytes inside the parameters' array data of checkpoint `step`, the file's size
    unchanged, where Orbax still reads it back but with other values (the data files are
    zstd frames: random floats stay raw bytes inside them). -> the leaf that changed."""
    before = raw_params(directory, step)
    files = sorted(glob.glob(os.path.join(str(directory), str(step), "params", "ocdbt.process_*", "d", "*")),
                   key=os.path.getsize, reverse=True)
    for path in files:
        size = os.path.getsize(path)
        for offset in (size // 2, size // 3, 2 * size // 3, size // 4):
            with open(path, "r+b") as f:
                f.seek(offset)
                original = f.read(16)
                f.seek(offset)
                f.write(bytes(b ^ 0xFF for b in original))
            try:
                after = raw_params(directory, step)
            except Exception:  # a frame header was hit: that is truncation's case, not this one
                after = None
            if after is not None:
                changed = [jax.tree_util.keystr(k) for (k, a), b in
                           zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after))
                           if not np.array_equal(a, b)]
                if changed:
                    assert os.path.getsize(path) == size
                    return changed[0]
            with open(path, "r+b") as f:  # undo, try elsewhere
                f.seek(offset)
                f.write(original)
    raise AssertionError("found no bytes to flip that change a restored value")


def tiny_state(seed):
    rng = np.random.default_rng(seed)  # random floats: incompressible, stored as raw bytes
    params = {"w": rng.standard_normal((64, 256)).astype(np.float32), "b": rng.standard_normal(256).astype(np.float32)}
    opt_state = {"mu": jax.tree.map(lambda x: x * 0.5, params), "count": np.int32(seed)}
    return params, opt_state


def abstract_of(tree):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding), tree)


# ---- checksums ------------------------------------------------------------------------------
def test_checksums_are_exact_and_independent_of_the_placement():
    params, opt_state = tiny_state(0)
    params["half"] = np.arange(12, dtype=np.float32).reshape(3, 4).astype(jnp.bfloat16)
    host = checkpoint.checksums(params)
    mesh = jax.make_mesh((jax.device_count(),), ("x",))
    sharded = {"w": jax.device_put(params["w"], NamedSharding(mesh, P("x"))),
               "b": jax.device_put(params["b"], NamedSharding(mesh, P())),
               "half": jnp.asarray(params["half"])}
    assert checkpoint.checksums(sharded) == host
    assert host["['w']"].startswith("float32[64, 256]:") and host["['half']"].startswith("bfloat16[3, 4]:")
    assert checkpoint.checksums({"count": jnp.int32(3)})["['count']"].startswith("int32[]:")
    flipped = params["w"].copy()
    flipped.view(np.uint32)[7, 9] ^= 1  # one bit of one value
    assert checkpoint.checksums(dict(params, w=flipped))["['w']"] != host["['w']"]


def test_a_corrupt_checkpoint_is_set_aside_for_the_newest_intact_one(tmp_path, capsys):
    directory = tmp_path / "checkpoints"
    mngr = checkpoint.manager(str(directory), keep=5)
    for step in (1, 2, 3):
        params, opt_state = tiny_state(step)
        checkpoint.save(mngr, step, params, opt_state, {"step": step})
    checkpoint.wait(mngr)
    meta = json.load(open(directory / "3" / "meta" / "metadata"))
    assert set(meta["checksums"]) == {"params", "opt_state"} and "['w']" in meta["checksums"]["params"]
    for step in (3, 2):  # the two newest are both damaged, same size
        changed = flip_array_bytes(directory, step)
    # reading one for its parameters (a teacher, an evaluation) names it and moves nothing
    with pytest.raises(checkpoint.CorruptCheckpoint, match=r"checkpoints/2 is corrupt.*params\['"):
        checkpoint.load_params(str(directory / "2"), None)
    assert steps(directory) == [1, 2, 3]
    params, opt_state = tiny_state(0)
    mngr = checkpoint.manager(str(directory), keep=5)
    restored = checkpoint.restore_latest_good(mngr, abstract_of(params), abstract_of(opt_state))
    assert restored is not None and restored[2]["step"] == 1
    np.testing.assert_array_equal(np.asarray(restored[0]["w"]), tiny_state(1)[0]["w"])
    out = capsys.readouterr().out
    assert "checkpoint 3 in" in out and "is corrupt" in out and "checkpoint 2 in" in out, out
    assert f"params{changed}" in out, out
    aside = sorted(d for d in os.listdir(directory) if d.startswith("corrupt-"))
    assert [d.split("-")[1] for d in aside] == ["2", "3"]  # moved, never deleted
    assert steps(directory) == [1]


def test_a_checkpoint_saved_without_checksums_restores_as_before(tmp_path):
    directory = tmp_path / "checkpoints"
    mngr = checkpoint.manager(str(directory))
    params, opt_state = tiny_state(4)
    mngr.save(4, args=ocp.args.Composite(params=ocp.args.StandardSave(params),  # as older versions saved
                                         opt_state=ocp.args.StandardSave(opt_state),
                                         meta=ocp.args.JsonSave({"step": 4})))
    mngr.wait_until_finished()
    restored = checkpoint.restore_latest_good(checkpoint.manager(str(directory)), abstract_of(params),
                                              abstract_of(opt_state))
    assert restored[2]["step"] == 4
    np.testing.assert_array_equal(np.asarray(restored[0]["w"]), params["w"])
    loaded, _ = checkpoint.load_params(str(directory), None)
    np.testing.assert_array_equal(np.asarray(loaded["b"]), params["b"])


@pytest.mark.slow
def test_same_size_corruption_of_a_run_falls_back_to_the_previous_checkpoint(tmp_path):
    """A training run whose newest checkpoint was damaged in place resumes from the one
    before it, says so, keeps the damaged one aside and ends bitwise where it would have."""
    args = ["--config.total_steps=10", "--config.checkpoint_every=5", "--config.keep_checkpoints=10"]
    ok(main(tmp_path, "configs/mae_vitb.py:smoke", *args))
    directory = tmp_path / "checkpoints"
    intact = raw_params(directory, 10)
    changed = flip_array_bytes(directory, 10)
    out = ok(main(tmp_path, "configs/mae_vitb.py:smoke", *args))
    assert f"checkpoint 10 in {directory} is corrupt" in out.stdout and changed in out.stdout, out.stdout[-3000:]
    assert f"resumed from {directory}/5" in out.stdout
    assert any(d.startswith("corrupt-10-") for d in os.listdir(directory))
    assert steps(directory) == [5, 10]
    for a, b in zip(jax.tree.leaves(intact), jax.tree.leaves(raw_params(directory, 10))):
        np.testing.assert_array_equal(a, b)  # exact resume: the redone step 10 is the lost one


# ---- the teacher's digest -------------------------------------------------------------------
def test_the_teacher_record_is_a_digest_of_the_weights(tmp_path):
    params, _ = tiny_state(0)
    a = checkpoint.teacher_record("", params)
    assert a == checkpoint.teacher_record("", jax.tree.map(jnp.asarray, params)) and a["path"] == ""
    assert len(a["digest"]) == 64 and a["step"] is None
    other = dict(params, b=params["b"] + 1)
    assert checkpoint.teacher_record("", other)["digest"] != a["digest"]
    where = "checkpoint 5 in runs/x/checkpoints"
    checkpoint.check_teacher({"teacher": a}, dict(a, path="/elsewhere"), where)  # same weights: fine
    b = dict(checkpoint.teacher_record("", other), path="/t2", step=7)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.check_teacher({"teacher": dict(a, path="/t1", step=5)}, b, where)
    line = str(e.value)
    assert "\n" not in line and a["digest"][:16] in line and b["digest"][:16] in line
    assert "/t1, step 5" in line and "/t2, step 7" in line and "config.teacher.allow_change" in line


def test_config_teacher_allow_change_is_declared_and_may_change_on_resume():
    from mdistill.config import base_config

    c = base_config().to_dict()
    assert c["teacher"]["allow_change"] is False
    before = json.loads(json.dumps(c))
    del before["teacher"]["allow_change"]  # a checkpoint of an older version
    assert checkpoint.config_changes(before, c) == []
    c["teacher"]["allow_change"] = True
    assert checkpoint.config_changes(before, c) == []


@pytest.mark.slow
def test_resuming_a_distillation_with_other_teacher_weights_is_refused(tmp_path):
    teacher = tmp_path / "teacher"
    student = tmp_path / "student"
    ok(main(teacher, "configs/mae.py:smoke", "--config.total_steps=5", "--config.checkpoint_every=5"))
    distill = ["configs/dmae_vitb.py:smoke", f"--config.teacher.checkpoint={teacher}", "--config.checkpoint_every=5",
               "--config.keep_checkpoints=10"]
    ok(main(student, *distill, "--config.total_steps=10"))
    saved = json.load(open(student / "checkpoints" / "10" / "meta" / "metadata"))["teacher"]
    assert saved["path"] == str(teacher) and saved["step"] == 5 and len(saved["digest"]) == 64
    # the same teacher: resumes
    out = ok(main(student, *distill, "--config.total_steps=10"))
    assert "resumed from" in out.stdout and "distilled from teacher" not in out.stdout + out.stderr
    assert "records no teacher digest" not in out.stdout

    ok(main(teacher, "configs/mae.py:smoke", "--config.total_steps=10", "--config.checkpoint_every=5"))
    before = {s: open(student / "checkpoints" / str(s) / "meta" / "metadata").read() for s in (5, 10)}
    out = main(student, *distill, "--config.total_steps=15")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len([x for x in lines if x.startswith("error:")]) == 1, out.stderr[-3000:]
    error = lines[-1]
    assert error.startswith(f"error: checkpoint 10 in {student / 'checkpoints'} was distilled from teacher "
                            f"{saved['digest'][:16]} ({teacher}, step 5)"), error
    assert f"({teacher}, step 10)" in error and "config.teacher.allow_change=True" in error, error
    assert steps(student / "checkpoints") == [5, 10]  # nothing resumed, nothing moved
    assert {s: open(student / "checkpoints" / str(s) / "meta" / "metadata").read() for s in (5, 10)} == before

    # meant: resumes with the new teacher, and records it
    out = ok(main(student, *distill, "--config.total_steps=15", "--config.teacher.allow_change=True"))
    assert "resuming with the new teacher" in out.stdout and f"resumed from {student / 'checkpoints'}/10" in out.stdout
    now = json.load(open(student / "checkpoints" / "15" / "meta" / "metadata"))["teacher"]
    assert now["step"] == 10 and now["digest"] != saved["digest"]

    # a checkpoint written before teacher digests were recorded resumes, saying it was not checked
    meta_file = student / "checkpoints" / "15" / "meta" / "metadata"
    meta = json.load(open(meta_file))
    del meta["teacher"]
    json.dump(meta, open(meta_file, "w"))
    out = ok(main(student, *distill, "--config.total_steps=15"))
    assert "records no teacher digest" in out.stdout and "could not be checked" in out.stdout, out.stdout[-2000:]
    assert f"resumed from {student / 'checkpoints'}/15" in out.stdout
