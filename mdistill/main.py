"""Command line: python -m mdistill.main --config=configs/dmae_vitb.py --workdir=DIR

--config.<field>=<value> overrides any field; --dry_run builds the run abstractly (no data,
no training) and prints a JSON summary as its last line."""

from __future__ import annotations

import json
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build and compile abstractly, print a summary, exit.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-process "
                                   "runs outside Cloud TPU and SLURM (which are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "With --coordinator_address: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "With --coordinator_address: this process's index.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save chatter out of the console
    from mdistill import distributed, sharding, train, validation
    from mdistill.checkpoint import CheckpointError
    from mdistill.data import DataError

    distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _CONFIG.value
    try:
        validation.validate(config)
    except validation.ConfigError as e:
        sys.exit(f"error: {e}")
    mesh = sharding.make_mesh(shape=config.mesh.to_dict())
    if _DRY_RUN.value:
        try:
            print(json.dumps(train.summarize(config, mesh)), flush=True)
        except CheckpointError as e:  # a teacher checkpoint that cannot be read
            sys.exit(f"error: {e}")
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required for training")
    try:
        from mdistill.evaluate import knn

        # evaluations the loop runs on the live student (labels are read now, before any step)
        monitors = knn.monitors(config, mesh)
        train.train(config, _WORKDIR.value, mesh, monitors)
    except (validation.ConfigError, CheckpointError, DataError, FloatingPointError, OSError) as e:
        sys.exit(f"error: {e}")


def parse_flags(argv):
    """absl's parsing, with an unknown --config.<field> as one line instead of a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # what ml_collections raises for a field it lacks
        text = e
        while isinstance(text, BaseException):  # AttributeError(KeyError(message))
            text = text.args[0] if text.args else ""
        text = str(text)
        for arg in (a for a in argv[1:] if a.startswith("--config.")):
            path = arg.partition("=")[0].removeprefix("--config.")
            missing = next((name for name in path.split(".") if f"'{name}'" in text), None)
            if missing or f"lookup: {path}" in text:
                hint = re.search(r'Did you mean "([^"]+)"', text)
                sys.exit(f"error: {arg}: the config has no field {missing or path!r}"
                         + (f" (did you mean {hint[1]!r}?)" if hint else ""))
        raise


def run():
    from mdistill import hugepages, preemption

    # A SIGTERM from now on stops the run cleanly (mdistill.preemption). It waits, blocked,
    # while hugepages may re-execute the process: the mask survives execve, a handler does not.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    hugepages.ensure()  # re-executes once with huge-page malloc; before JAX is imported
    preemption.catch_early()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
