"""Command line: python -m mdistill.main --config=configs/dmae_vitb.py --workdir=DIR

--config.<field>=<value> overrides any field; --dry_run builds the run abstractly (no data,
no training) and prints a JSON summary as its last line."""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build and compile abstractly, print a summary, exit.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save chatter out of the console
    from mdistill import sharding, train, validation
    from mdistill.checkpoint import CheckpointError

    config = _CONFIG.value
    try:
        validation.validate(config)
    except validation.ConfigError as e:
        sys.exit(f"error: {e}")
    mesh = sharding.make_mesh()
    if _DRY_RUN.value:
        print(json.dumps(train.summarize(config, mesh)), flush=True)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required for training")
    try:
        train.train(config, _WORKDIR.value, mesh)
    except (CheckpointError, FloatingPointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


def run():
    flags.mark_flag_as_required("config")
    app.run(main)


if __name__ == "__main__":
    run()
