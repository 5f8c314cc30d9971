"""Console logging and metric files: <workdir>/metrics.jsonl (one JSON object per logged
step) and TensorBoard event files. Only process 0 prints and writes. A URL workdir (gs://...)
gets both through its object store: metrics.jsonl is rewritten whole at each write (objects
cannot be appended to), TensorBoard's events go through tensorboardX's own gs:// writer."""

from __future__ import annotations

import json

import jax

from mdistill import workdir as paths


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def read_metrics(workdir: str) -> list[dict]:
    """<workdir>/metrics.jsonl as one record per step, in step order ([] without the file).
    A resumed run may log a step twice, and the k-NN monitor logs on its own line: the
    lines of one step are merged, later values winning."""
    by_step = {}
    path = paths.join(workdir, "metrics.jsonl")
    if paths.exists(path):
        for line in paths.read_bytes(path).decode().splitlines():
            if line.strip():
                record = json.loads(line)
                by_step.setdefault(record["step"], {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


class MetricsWriter:
    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.workdir = workdir
        paths.makedirs(workdir)
        self._jsonl = _Appender(paths.join(workdir, "metrics.jsonl"))
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(paths.join(workdir, "tensorboard"))

    @property
    def tensorboard(self):
        """The TensorBoard writer, for images (None on processes other than 0)."""
        return self._tb if self.enabled else None

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **{k: v for k, v in metrics.items() if k != "step"}}) + "\n")
        self._jsonl.flush()
        for k, v in metrics.items():
            if k != "step":
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Close both files, even when one fails (a full disk); the first failure is raised."""
        if not self.enabled:
            return
        errors = []
        for close in (self._jsonl.close, self._tb.close):
            try:
                close()
            except OSError as e:
                errors.append(e)
        if errors:
            raise OSError(f"could not finish writing the metrics in {self.workdir}: {errors[0]}") from errors[0]


class _Appender:
    """A text file opened for appending; at a URL, an object rewritten whole at each flush
    with what it held when opened plus the lines written since."""

    def __init__(self, path: str):
        if not paths.is_url(path):
            self._file = open(path, "a")
            return
        self._file, self.path = None, path
        self._text = paths.read_bytes(path).decode() if paths.exists(path) else ""
        if self._text and not self._text.endswith("\n"):
            self._text += "\n"

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
        else:
            self._text += text

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        else:
            paths.write_bytes(self.path, self._text.encode())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self.flush()
