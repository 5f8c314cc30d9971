"""The closed config schema (mdistill/config): every field declared with a meaning, configs
locked, every config file and every saved config read through upgrade() and validated, and
no `.get` default on a config outside the package."""

import ast
import glob
import importlib.util
import json
import math
import os

import ml_collections
import pytest

from mdistill.config import FIELDS, ConfigError, base_config, meaning, schema, upgrade
from mdistill.config import saved as saved_module
from mdistill.config.validation import validate
from mdistill.weights import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "saved_configs", "*.json")))

# Every config file with the arguments its get_config parses.
CONFIG_ARGS = {
    "amd.py": ["variant=B/16", "variant=S/16", "variant=S/16,smoke"],
    "amd_video.py": ["variant=B/16,dataset=ssv2", "variant=S/16,dataset=k400", "dataset=k400,smoke"],
    "amd_video_vitb.py": [None],
    "amd_video_vits.py": [None],
    "amd_vitb.py": [None],
    "amd_vits.py": [None],
    "dmae_vitb.py": [None, "target=last", "target=last,smoke"],
    "finetune_fmnist.py": [None, "labels10"],
    "finetune_vitb.py": [None],
    "finetune_video.py": [None, "variant=S/16,dataset=k400", "variant=B/16,dataset=ssv2", "variant=S/16,dataset=ssv2",
                          "variant=B/16,dataset=k400,smoke"],
    "fmnist_amd.py": [None],
    "fmnist_dmae.py": [None],
    "fmnist_mae_teacher.py": [None],
    "fmnist_tinymim.py": [None, "smoke"],
    "linprobe_fmnist.py": [None],
    "linprobe_vitb.py": [None],
    "mae.py": ["variant=B/16", "variant=L/16", "variant=L/16,smoke"],
    "mae_video_vitb.py": ["variant=B/16", "variant=L/16,dataset=k400", "variant=L/16,smoke"],
    "mae_vitb.py": [None],
    "mae_vitl.py": [None],
    "tinymim_vitb.py": [None],
    "tinymim_vits.py": [None],
    "tinymim_vitt.py": [None],
    "moving_fmnist.py": ["role=teacher", "role=student,method=mae", "role=student,method=amd",
                         "role=student,method=amd,smoke"],
}
CASES = [(name, arg) for name, args in CONFIG_ARGS.items() for arg in [*args, "smoke"]]  # each file takes ':smoke'


def config_files() -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "[!_]*.py")))


def load(name: str, arg):
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def as_json(config) -> dict:
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config))


def leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


# ---- the schema ------------------------------------------------------------------------------
def test_every_field_is_declared_once_with_a_one_line_meaning():
    names = [f.name for f in schema.all_fields()]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(leaves(base_config().to_dict()))  # every leaf, method sections included
    for field in leaves(base_config().to_dict()):
        text = meaning(field)
        assert text and "\n" not in text and len(text) <= 110, field
    assert meaning("amd.train_mask_tokens").startswith("train the generators' mask tokens")
    assert meaning("no.such_field") == ""


# RESUMABLE_CHANGES of mdistill/weights/checkpoint.py before the schema declared it per field:
# entries ending in '.' covered a whole sub-config.
OLD_RESUMABLE = ("log_every", "checkpoint_every", "visualize_every", "keep_checkpoints", "best_metric",
                 "total_steps", "num_epochs", "teacher.checkpoint", "teacher.allow_change",
                 "student.init", "student.init_ignore", "data.path", "data.data_dir", "eval.",
                 "data.workers", "data.threads", "data.prefetch", "data.max_bad_fraction", "data.decoder", "mesh.")


def test_the_resumable_fields_are_those_resuming_allowed_before():
    old = {k for k in leaves(base_config().to_dict())
           if any(k == f or (f.endswith(".") and k.startswith(f)) for f in OLD_RESUMABLE)}
    assert len(old) == 30 and schema.resumable() == old
    assert not {f.name for f in schema.method_fields() if f.resumable}  # no method field


def test_a_resume_refuses_exactly_the_fields_not_declared_resumable():
    saved = base_config().to_dict()
    for f in schema.all_fields():
        current = base_config()
        *parents, leaf = f.name.split(".")
        node = current
        for name in parents:
            node = node[name]
        value = node[leaf]
        node[leaf] = (not value if isinstance(value, bool) else value + "x" if isinstance(value, str)
                      else value + value if isinstance(value, tuple) else value + 1)
        assert node[leaf] != value, f.name
        changes = checkpoint.config_changes(saved, current.to_dict())
        assert [c.split(":")[0].strip() for c in changes] == ([] if f.resumable else [f.name]), f.name


def test_video_evaluation_and_pipeline_fields_are_declared():
    c = base_config()
    for field in ("num_frames", "tubelet_size", "data.num_sample", "data.temporal", "data.test_num_segment",
                  "data.test_num_crop", "data.workers", "data.threads", "data.prefetch", "data.max_bad_fraction",
                  "remat", "best_metric", "pretrained", "num_classes", "masking.kind", "finetune.layer_decay"):
        node = c
        for name in field.split("."):
            node = node[name]
        assert node == schema.BY_NAME[field].default


def test_reading_or_setting_an_undeclared_field_fails_naming_it():
    c = base_config()
    with pytest.raises(AttributeError, match="num_frame"):
        c.num_frame  # noqa: B018
    with pytest.raises(AttributeError, match="workerz"):
        c.data.workerz  # noqa: B018
    with pytest.raises(AttributeError, match="tubelet"):
        c.tubelet = 4
    c.tubelet_size = 4  # a declared field takes a value of its type
    with pytest.raises(TypeError):
        c.tubelet_size = "4"


# ---- every config file through upgrade() and validation ---------------------------------------
def test_every_config_file_has_its_arguments_listed():
    assert sorted(CONFIG_ARGS) == config_files()


@pytest.mark.parametrize("name,arg", CASES)
def test_every_config_reads_back_through_upgrade_and_validates(name, arg):
    config = load(name, arg)
    assert config.is_locked  # a config file sets declared fields only
    saved = as_json(config)  # as a run writes it (config.json, a checkpoint's meta)
    upgraded = upgrade(saved, name)
    assert as_json(upgraded) == saved
    validate(upgraded, num_devices=math.gcd(256, upgraded.batch_size))


# ---- saved configs of older runs ----------------------------------------------------------------
def test_there_are_saved_config_fixtures():
    assert len(FIXTURES) >= 3


@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_older_saved_configs_upgrade_to_full_validated_configs(path):
    saved = json.load(open(path))
    config = upgrade(saved, path)
    assert leaves(config.to_dict()) == leaves(base_config().to_dict())  # every field, today's order
    for field in leaves(saved):  # what the run said is kept
        node = config
        for name in field.split("."):
            node = node[name]
        value = saved
        for name in field.split("."):
            value = value[name]
        assert json.loads(json.dumps(node)) == value, field
    validate(config, num_devices=math.gcd(256, config.batch_size))
    assert checkpoint.config_changes(saved, config.to_dict()) == []  # resuming it today is no change


def test_fields_an_older_run_lacks_get_what_that_run_did():
    saved = json.load(open(os.path.join(ROOT, "tests", "fixtures", "saved_configs", "fmnist_dmae_2026-11-22.json")))
    assert "masking" not in saved and "num_frames" not in saved and "eval" not in saved
    config = upgrade(saved)
    assert (config.masking.kind, config.num_frames, config.data.num_sample) == ("random", 1, 1)
    assert (config.eval.train_split, config.eval.test_split) == ("train", "test")  # Fashion-MNIST's splits
    assert config.visualize_every == 0  # before reconstruction grids were drawn by default
    assert config.is_locked


def test_a_saved_field_this_version_does_not_declare_is_refused_naming_it():
    saved = as_json(base_config())
    saved["data"]["frames_per_second"] = 30
    with pytest.raises(ConfigError, match=r"run.json: field\(s\) data.frames_per_second"):
        upgrade(saved, "run.json")
    saved = as_json(base_config())
    saved["num_frames"] = "16"
    with pytest.raises(ConfigError, match="num_frames='16' is a str"):
        upgrade(saved)


def test_a_renamed_field_is_read_under_its_new_name(monkeypatch):
    saved = as_json(base_config())
    saved["data"]["clips_per_video"] = saved["data"].pop("num_sample") + 3
    monkeypatch.setitem(saved_module.RENAMED, "data.clips_per_video", "data.num_sample")
    assert upgrade(saved).data.num_sample == 4
    saved["data"]["num_sample"] = 1
    with pytest.raises(ConfigError, match="both 'data.clips_per_video' and 'data.num_sample'"):
        upgrade(saved)


def test_upgrade_takes_a_config_dict_too_and_returns_a_copy():
    config = load("fmnist_dmae.py", "smoke")
    upgraded = upgrade(config)
    assert upgraded is not config and as_json(upgraded) == as_json(config)
    upgraded.seed = 7
    assert config.seed == 0
    with pytest.raises(ConfigError, match="mapping of fields"):
        upgrade([1, 2])
    assert isinstance(upgraded, ml_collections.ConfigDict)


# ---- no .get default on a config outside mdistill/config --------------------------------------
CONFIG_NAMES = {"config", "c", "cfg", "run"}  # names that hold a config in this code base
SECTIONS = {f.name.split(".")[0] for f in FIELDS if "." in f.name} | schema.section_keys()


def _rooted_in_config(node, aliases: set[str]) -> bool:
    """`config`, `self.config`, `config.data`, `trainer.config.teacher`, or a name bound to one."""
    if isinstance(node, ast.Name):
        return node.id in CONFIG_NAMES or node.id in aliases
    if isinstance(node, ast.Attribute):
        return node.attr in CONFIG_NAMES or _rooted_in_config(node.value, aliases)
    return False


def config_gets(source: str) -> list[int]:
    """Lines of `.get(...)` calls on a config or one of its sections."""
    tree = ast.parse(source)
    aliases = set()  # names assigned a config's section: d = config.data
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr in SECTIONS \
                and _rooted_in_config(node.value.value, set()):
            aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and _rooted_in_config(node.func.value, aliases)]


def test_the_get_finder_finds_config_gets():
    found = config_gets("def f(config, meta):\n"
                        "    a = config.get('num_frames', 1)\n"
                        "    d = config.data\n"
                        "    b = d.get('num_sample', 1)\n"
                        "    c = self.config.teacher.get('checkpoint', '')\n"
                        "    e = meta.get('config', {})\n"
                        "    f = results.get('runs')\n")
    assert found == [2, 4, 5]


def test_no_config_get_outside_the_config_package():
    found = []
    for top in ("mdistill", "benchmarks", "scripts"):
        for path in glob.glob(os.path.join(ROOT, top, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, ROOT)
            if rel.startswith(os.path.join("mdistill", "config") + os.sep):
                continue
            found += [f"{rel}:{line}" for line in config_gets(open(path).read())]
    assert found == [], "read config fields as attributes (declared in mdistill/config/schema.py)"
