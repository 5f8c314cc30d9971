"""Flag parsing shared by the commands that read an ml_collections config file
(mdistill.main, the evaluators): a config file that cannot be loaded, and an unknown
--config.<field>, reach the user as one `error:` line instead of a traceback.

    app.run(main, flags_parser=mdistill.cli.parse_flags)

Light on purpose (absl and ml_collections only): a command imports it before it knows
whether it will run at all."""

from __future__ import annotations

import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections.config_flags import config_flags as _impl


# ml_collections' parser of a config-file flag, and its stand-in for a config it could not load
_FileParser = getattr(_impl, "ConfigFileFlagParser", None) or getattr(_impl, "_ConfigFileParser")
_ErrorConfig = getattr(_impl, "_ErrorConfig", ())


class ConfigFileError(Exception):
    """A config file that cannot be loaded. Not a ValueError: absl would wrap it."""


def _describe(error: BaseException, file: str) -> str:
    """What went wrong inside a config file, with the line of that file where it did."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return f"line {error.lineno}: {type(error).__name__}: {error.msg}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == file]
    where = f"line {frames[-1].lineno}: " if frames else ""
    return f"{where}{type(error).__name__}: {error}"


def _checked(parse, name: str):
    """A config-file flag's parse(path[:arg]), raising ConfigFileError naming the file and the
    problem: a file that cannot be read, a syntax error, a get_config(arg) that raises (an
    argument it does not know). ml_collections would put a traceback in the message (or
    raise only when the config is first used, for a missing file)."""
    def parse_checked(value: str):
        file, colon, arg = value.partition(":")
        given = f"--{name}={value}"
        try:
            with open(file, "rb"):
                pass
        except OSError as e:
            raise ConfigFileError(f"{given}: cannot read the config file {file!r}: {e.strerror or e}") from None
        call = f"get_config({arg!r})" if colon else "get_config()"
        try:
            config = parse(value)
        except Exception as e:  # noqa: BLE001 -- anything get_config or the import raises
            # ml_collections re-raises TypeError/ValueError with the traceback as the message
            cause = e.__context__ if str(e).startswith("Error whilst parsing config file") and e.__context__ else e
        else:
            if not isinstance(config, _ErrorConfig):
                return config
            cause = object.__getattribute__(config, "_error")  # an OSError, which it raises only on first use
        logging.info("loading %s failed", given, exc_info=cause)
        call = "" if isinstance(cause, SyntaxError) else f" ({call})"
        raise ConfigFileError(f"{given}: the config file {file!r} failed to load{call}: "
                              f"{_describe(cause, file)}") from None
    return parse_checked


def _guard_config_files(flag_values) -> None:
    for name, flag in flag_values._flags().items():  # noqa: SLF001 -- absl has no public iteration by flag
        parser = flag.parser
        if isinstance(parser, _FileParser) and not getattr(parser, "_mdistill_checked", False):
            parser.parse = _checked(parser.parse, name)
            parser._mdistill_checked = True


def define_distributed_flags():
    """--coordinator_address, --num_processes and --process_id, for several processes where
    no cluster is detected (mdistill.distributed: SLURM, Open MPI and Cloud TPU are); returns
    a function giving their values, maybe_initialize's arguments. Pre-training and the
    evaluators that run on its mesh (fine-tuning, the linear probe) all take them."""
    address = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-process "
                                  "runs outside Cloud TPU, SLURM and Open MPI (which are detected).")
    processes = flags.DEFINE_integer("num_processes", 0, "With --coordinator_address: number of processes.")
    index = flags.DEFINE_integer("process_id", -1, "With --coordinator_address: this process's index.")
    return lambda: (address.value, processes.value, index.value)


def parse_flags(argv):
    """absl's parsing, with a config file that cannot be loaded and an unknown
    --config.<field> as one line instead of a traceback."""
    _guard_config_files(flags.FLAGS)
    try:
        return app.parse_flags_with_usage(argv)
    except ConfigFileError as e:
        sys.exit(f"error: {e}")
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
