"""Issue 32, the masking and message cases: mask options that make masking degenerate (a
constant filtered noise field, blocks larger than the grid) and non-finite floats refused
at validation; a config file that cannot be loaded, an undecodable video, a damaged
results.json and a malicious pickle each reported in one line with the real cause."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mdistill import masking
from mdistill.config import apply_smoke, base_config, validation
from mdistill.config.validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(**fields):
    """The smoke config (32 px, 4 px patches: an 8x8 grid) with dotted `fields` set."""
    c = apply_smoke(base_config())
    for dotted, value in fields.items():
        *parents, last = dotted.split(".")
        node = c
        for name in parents:
            node = node[name]
        node[last] = value
    return c


def distinct_masks(color: str, sigma: float, grid: int = 8, batch: int = 32) -> int:
    m = masking.sample("colored_noise", jax.random.PRNGKey(0), batch, grid * grid, 0.75,
                       options={**masking.options_of(base_config()), "noise_color": color, "noise_sigma": sigma})
    return len({row.tobytes() for row in np.asarray(m.student.mask)})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def child_env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1")


# ---- 8: a noise_sigma whose filtered noise is constant ----------------------------------------
@pytest.mark.parametrize("color,sigma", [("red", 10.0), ("green", 1e9), ("blue", 1e-6)])
def test_a_noise_sigma_that_gives_one_mask_for_every_sample_is_refused(color, sigma):
    assert distinct_masks(color, sigma) == 1  # what training would have drawn, every step
    c = smoke(**{"masking.kind": "colored_noise", "masking.noise_color": color, "masking.noise_sigma": sigma})
    with pytest.raises(ConfigError, match=rf"config\.masking\.noise_sigma={sigma!r} is invalid: the {color} filter "
                                          r"passes no varying frequency on the 8x8 patch grid .*must be in "):
        validation.validate(c)


def test_the_noise_sigma_range_is_the_filters_own():
    """The range named is where the masks vary: its ends (as shown) pass and give distinct
    masks; just past them the field is constant."""
    low, high = masking.noise_sigma_range(8, "red")
    assert low == 0 and 6 < high < 8
    c = smoke(**{"masking.kind": "colored_noise", "masking.noise_color": "red", "masking.noise_sigma": 10.0})
    with pytest.raises(ConfigError) as e:
        validation.validate(c)
    shown = float(str(e.value).split("must be in (0, ")[1].split("]")[0])
    assert shown <= high and masking.noise_varies(8, "red", shown) and distinct_masks("red", shown) > 16
    validation.validate(smoke(**{"masking.noise_color": "red", "masking.noise_sigma": shown}))
    assert not masking.noise_varies(8, "red", high * 1.01)
    low, high = masking.noise_sigma_range(8, "green")
    assert 0 < low < 1e-3 and 10 < high < 30 and distinct_masks("green", 1.0) > 16
    assert masking.noise_sigma_range(8, "purple")[0] == 0  # band-stop: never constant at small sigma
    validation.validate(smoke(**{"masking.kind": "colored_noise"}))  # the defaults pass


# ---- 9: blocks above the grid's patch count ---------------------------------------------------
@pytest.mark.parametrize("fields,message", [
    ({"masking.block_max_patches": 75}, r"config\.masking\.block_max_patches=75 is invalid: must be in 4\.\.64"),
    ({"masking.block_min_patches": 65, "masking.block_max_patches": 65},
     r"config\.masking\.block_min_patches=65 is invalid: must be in 1\.\.64"),
])
def test_blocks_larger_than_the_grid_are_refused(fields, message):
    c = smoke(**{"masking.kind": "block", **fields})
    with pytest.raises(ConfigError, match=message):
        validation.validate(c)
    validation.validate(smoke(**{"masking.kind": "block", "masking.block_max_patches": 64}))
    validation.validate(smoke(**{"masking.kind": "block", "masking.block_square": 2, **fields}))  # squares: unused
    validation.validate(smoke(**fields))  # kind random: the block options are not used


# ---- 12: nan and inf ------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("mask_ratio", float("nan")), ("mask_ratio", float("inf")),
                                         ("optim.lr", float("inf")), ("masking.noise_sigma", float("nan")),
                                         ("eval.knn_temperature", float("inf"))])
def test_non_finite_floats_are_one_config_error(field, value):
    with pytest.raises(ConfigError, match=rf"config\.{field.replace('.', r'[.]')}={value!r} is invalid: "
                                          r"must be a finite number"):
        validation.validate(smoke(**{field: value}))


@pytest.mark.slow
def test_non_finite_mask_ratio_is_one_line_from_the_command():
    out = subprocess.run([sys.executable, "-m", "mdistill.main", "--config=configs/mae_vitb.py:smoke",
                          "--config.mask_ratio=nan", "--dry_run"], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [
        "error: config.mask_ratio=nan is invalid: must be a finite number"]


# ---- 14: a config file that cannot be loaded --------------------------------------------------
@pytest.mark.parametrize("config,expected", [
    ("configs/dmae_vitb.py:smok",
     "error: --config=configs/dmae_vitb.py:smok: the config file 'configs/dmae_vitb.py' failed to load "
     "(get_config('smok')): line 33: ValueError: config argument 'smok': expected 'smoke' or key=value with key "
     "one of ['target']"),
    ("configs/nope.py", "error: --config=configs/nope.py: cannot read the config file 'configs/nope.py': "
                        "No such file or directory"),
    ("{tmp}/broken.py", "error: --config={tmp}/broken.py: the config file '{tmp}/broken.py' failed to load: "
                        "line 2: SyntaxError: "),
])
def test_a_config_file_that_cannot_be_loaded_is_one_line(tmp_path, config, expected):
    (tmp_path / "broken.py").write_text("def get_config():\n    return dict(a=1\n")
    config, expected = config.format(tmp=tmp_path), expected.format(tmp=tmp_path)
    out = subprocess.run([sys.executable, "-m", "mdistill.main", f"--config={config}", "--dry_run"], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith(expected), out.stderr[-3000:]


@pytest.mark.slow
def test_the_evaluators_can_share_the_parser(tmp_path):
    """mdistill.cli.parse_flags works for any command's own config-file flag (the evaluators
    define theirs in __main__, so they cannot import mdistill.main's)."""
    # (this checkout's mdistill only: an editable install's finder would serve another's modules)
    script = ("import sys\nsys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
              "from absl import app\nfrom ml_collections import config_flags\nfrom mdistill import cli\n"
              "_C = config_flags.DEFINE_config_file('config', None, 'x')\n"
              "app.run(lambda argv: print('ran', _C.value.method), flags_parser=cli.parse_flags)\n")
    run = lambda *args: subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=child_env(),  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    out = run("--config=configs/finetune_fmnist.py:smok")
    assert out.returncode == 1 and error_lines(out.stderr) == [
        line for line in out.stderr.splitlines() if line.startswith("error: --config=configs/finetune_fmnist.py:smok: "
                                                                    "the config file 'configs/finetune_fmnist.py' "
                                                                    "failed to load (get_config('smok'))")], out.stderr
    out = run("--config=configs/mae_vitb.py:smoke")
    assert out.returncode == 0 and out.stdout.strip() == "ran mae", out.stderr[-2000:]


# ---- 11: an undecodable video ---------------------------------------------------------------
def test_an_undecodable_video_is_logged_with_the_video_decoders_reason(tmp_path):
    pytest.importorskip("av")
    from mdistill.data import pipeline, transforms, video

    for name in ("a", "b"):
        os.makedirs(tmp_path / "train" / name)
        video.write_video(str(tmp_path / "train" / name / "good.mp4"), np.zeros((8, 16, 16, 3), np.uint8))
    (tmp_path / "train" / "a" / "zbad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    source = video.VideoFolderSource(str(tmp_path), "train")
    bad = next(i for i in range(len(source)) if "zbad" in source.describe(i))
    transform = transforms.ClipTransform(16, 4, 3, 1, flip=False)
    pipe = pipeline.Pipeline(source, transform, 2, max_bad_fraction=0.5)
    why = pipe._why(bad)
    assert "cannot identify image file" not in why
    assert why.startswith("DataError: cannot decode video") and "zbad.mp4" in why, why


# ---- 15: a damaged results.json of the Fashion-MNIST study -----------------------------------
def study(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fmnist", "study.py"), *args], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("damage,message", [
    ("truncated", r"not valid JSON \(.*: line \d+, column \d+; truncated or hand-edited\?\)"),
    ("incomplete", r"run 'mae_b100_s1' lacks knn_top1 \(an incomplete record\)"),
    ("no runs", r"expected an object with a 'runs' object \(run name -> record\)"),
])
def test_a_damaged_results_json_is_one_line_and_kept(tmp_path, damage, message):
    import re

    recorded = open(os.path.join(ROOT, "benchmarks", "fmnist", "results.json")).read()
    if damage == "truncated":
        text = recorded[:len(recorded) // 2]
    elif damage == "incomplete":
        results = json.loads(recorded)
        del results["runs"]["mae_b100_s1"]["knn_top1"]
        text = json.dumps(results)
    else:
        text = "[]"
    path = tmp_path / "results.json"
    path.write_text(text)
    for command in ("plan", "report"):
        out = study(command, f"--results={path}")
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        lines = error_lines(out.stderr)
        expected = rf"error: {re.escape(str(path))}: {message}; it is left as it is"
        assert len(lines) == 1 and re.match(expected, lines[0]), lines
        assert path.read_text() == text and sorted(os.listdir(tmp_path)) == ["results.json"]


# ---- extra: a malicious pickle ----------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_named_so_with_torchs_warning(tmp_path):
    torch = pytest.importorskip("torch")
    from mdistill.weights import state_dict

    path, marker = str(tmp_path / "evil.pth"), tmp_path / "ran"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError) as e:
        state_dict.read_state_dict(path)
    text = str(e.value)
    assert "\n" not in text and "partial download" not in text
    assert f"{path!r} is not a plain state dict: it tried to run code" in text and "system" in text
    assert "arbitrary code execution" in text  # torch's own warning, kept
    assert not marker.exists()


# ---- extra: a save that fails in the background is named by its own step --------------------------
def test_a_failed_background_save_is_named_by_its_step(tmp_path):
    """An asynchronous save fails after it started: the error surfaces when the next save
    starts (or at the final wait) and names the step that failed, not the one being started."""
    from mdistill.weights import checkpoint

    class Manager:  # Orbax's CheckpointManager as the loop sees it: save starts, the write fails later
        directory, failing = str(tmp_path), False

        def save(self, step, args, metrics=None):
            self.started = step

        def wait_until_finished(self):
            if self.failing:
                self.failing = False
                raise OSError(28, "No space left on device")

    params = {"w": np.ones(3, np.float32)}
    mngr = Manager()
    checkpoint.save(mngr, 5, params, {}, {"step": 5})
    mngr.failing = True  # step 5's write fails in the background
    with pytest.raises(checkpoint.CheckpointError, match=r"^could not write checkpoint 5 .*No space left"):
        checkpoint.save(mngr, 10, params, {}, {"step": 10})
    assert mngr.started == 5  # step 10 was not started over the failure
    checkpoint.save(mngr, 10, params, {}, {"step": 10})
    mngr.failing = True
    with pytest.raises(checkpoint.CheckpointError, match=r"^could not write checkpoint 10 "):
        checkpoint.wait(mngr)


def test_library_log_records_go_to_the_workdir_not_the_console(tmp_path):
    """Orbax's tracebacks from its saving threads are absl log records: with the workdir's
    log file in place they land there, and the console keeps the one error line."""
    code = (  # as under mdistill.main: absl's app.run, then a library thread logs an error
        "import sys, threading\n"
        "from absl import app, logging\n"
        "from mdistill.main import log_to_workdir\n"
        "def main(argv):\n"
        f"    log_to_workdir({str(tmp_path)!r})\n"
        "    t = threading.Thread(target=lambda: logging.error('save failed: Traceback (most recent call last)'))\n"
        "    t.start(); t.join()\n"
        "    print('error: could not write checkpoint 10')\n"
        "app.run(main)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr + p.stdout and p.stdout.strip() == "error: could not write checkpoint 10"
    logs = [f for f in os.listdir(tmp_path) if f.startswith("mdistill.") and ".log." in f]
    assert logs and any("save failed" in open(tmp_path / f).read() for f in logs), os.listdir(tmp_path)
