"""Command line: python -m mdistill.main --config=configs/dmae_vitb.py --workdir=DIR

--config.<field>=<value> overrides any field; --dry_run builds the run abstractly (no data,
no training), prints the memory one device needs beside what it has (and how to fit when it
does not) and a JSON summary as its last line."""

from __future__ import annotations

import json
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mdistill.cli import define_distributed_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build and compile abstractly, print a summary, exit.")
_DEVICE_MEMORY = flags.DEFINE_float("device_memory_gib", None, "With --dry_run: the memory (GiB) of the device to plan "
                                    "for, instead of what JAX reports for this one (nothing on a CPU).")
_DISTRIBUTED = define_distributed_flags()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save chatter out of the console
    from mdistill import distributed, resolve, sharding, train
    from mdistill.config import validation
    from mdistill.weights.checkpoint import CheckpointError
    from mdistill.data import DataError

    try:
        distributed.maybe_initialize(*_DISTRIBUTED())
    except RuntimeError as e:  # a cluster whose processes or devices do not add up
        sys.exit(f"error: {e}")
    config = _CONFIG.value
    try:
        # what the teacher's checkpoint says (its variant) fills the config before it is checked
        resolve.teacher(config, resolve.explicit_fields(config_flags.get_override_values(flags.FLAGS["config"])))
        validation.validate(config)
    except (ValueError, CheckpointError) as e:  # ConfigError is a ValueError
        sys.exit(f"error: {e}")
    mesh = sharding.make_mesh(shape=config.mesh.to_dict())
    if _DRY_RUN.value:
        memory = None if _DEVICE_MEMORY.value is None else int(_DEVICE_MEMORY.value * train.GIB)
        try:
            summary = train.summarize(config, mesh, device_memory=memory)
        except CheckpointError as e:  # a teacher checkpoint that cannot be read
            sys.exit(f"error: {e}")
        for line in dry_run_report(config, mesh, summary, planned=memory is not None):
            print(line)
        print(json.dumps(summary), flush=True)  # the last line, for scripts
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required for training")
    log_to_workdir(_WORKDIR.value)
    try:
        from mdistill.evaluate import knn

        # evaluations the loop runs on the live student (labels are read now, before any step)
        monitors = knn.monitors(config, mesh)
        train.train(config, _WORKDIR.value, mesh, monitors)
    except (validation.ConfigError, CheckpointError, DataError, FloatingPointError, OSError) as e:
        sys.exit(f"error: {e}")


def log_to_workdir(workdir: str) -> None:
    """Libraries' log records (Orbax's tracebacks from its saving threads, among them) go to
    <workdir>/mdistill.*.log.* instead of the console, where mdistill's own lines and a
    failure's one `error:` line stay readable. A workdir that cannot take them: the console.
    A URL workdir (gs://...) cannot take a log file that grows: they go to a local folder,
    $TMPDIR/mdistill-logs/<the URL's path>, named on the console."""
    from mdistill import workdir as paths

    folder = workdir
    if paths.is_url(workdir):
        import tempfile

        folder = os.path.join(tempfile.gettempdir(), "mdistill-logs", re.sub(r"[^A-Za-z0-9._-]+", "_", workdir))
    try:
        os.makedirs(folder, exist_ok=True)
        logging.get_absl_handler().use_absl_log_file("mdistill", folder)
    except OSError:
        return
    if folder != workdir:
        from mdistill.metrics import log

        log(f"library logs of this {workdir} run: {folder}/mdistill.*.log.*")


def dry_run_report(config, mesh, summary: dict, planned: bool = False) -> list[str]:
    """The dry run's lines for people: one device's memory against what it has (`planned`: the
    --device_memory_gib given), how to fit when it does not, and a teacher-less distillation."""
    gib = lambda b: f"{b / 2 ** 30:.2f} GiB"  # noqa: E731
    lines = []
    have = summary["device_memory_gib"]
    where = (f"of {have:.2f} GiB" + (" (--device_memory_gib)" if planned
                                     else f" that JAX may allocate on the {mesh.devices.flat[0].platform} device")
             if have is not None else
             f"of unknown device memory (JAX reports none on {mesh.devices.flat[0].platform}; "
             "--device_memory_gib=N checks against N GiB)")
    if summary["memory_gib_per_device"] is None:
        lines.append(f"memory per device: unknown (XLA has no memory analysis on this backend), {where}")
    else:
        micro = config.batch_size // (mesh.size * config.optim.accum_steps)
        lines.append(f"memory per device: {summary['memory_gib_per_device']:.2f} GiB "
                     f"(arguments {gib(summary['argument_bytes_per_device'])}: state, teacher, batch; temporaries "
                     f"{gib(summary['temp_bytes_per_device'])} for a micro-batch of {micro} images per device) {where}")
    if summary.get("fits_device_memory") is False:
        fixes = []
        if summary["accum_steps_to_fit"]:
            a = summary["accum_steps_to_fit"]
            fixes.append(f"--config.optim.accum_steps={a} ({config.batch_size // (mesh.size * a)} images per "
                         "device per micro-step)")
        if summary["fsdp_to_fit"]:
            fixes.append(f"--config.mesh.fsdp={summary['fsdp_to_fit']} --config.mesh.data=-1")
        lines.append("WARNING: the step does not fit in one device's memory; " +
                     (f"estimated to fit with {' or '.join(fixes)} (check with another --dry_run)" if fixes else
                      f"no accum_steps or fsdp over these {mesh.size} device(s) is estimated to fit: more devices "
                      "(with --config.mesh.fsdp), a smaller batch or a smaller model"))
    if summary["teacher"] is not None and not summary["teacher_checkpoint"]:
        lines.append(f"WARNING: config.teacher.checkpoint is empty: {config.method} would distil from a randomly "
                     "initialised teacher (set --config.teacher.checkpoint=RUN_DIR_OR_FILE)")
    return lines


def parse_flags(argv):
    """absl's parsing, with a config file that cannot be loaded (missing, a syntax error, an
    argument get_config refuses) and an unknown --config.<field> as one `error:` line instead
    of a traceback (mdistill.cli.parse_flags, which the evaluators' commands share)."""
    from mdistill import cli

    return cli.parse_flags(argv)


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
