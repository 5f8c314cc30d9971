"""Console logging and metric files: <workdir>/metrics.jsonl (one JSON object per logged
step) and TensorBoard event files. Only process 0 prints and writes."""

from __future__ import annotations

import json
import os

import jax


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def read_metrics(workdir: str) -> list[dict]:
    """<workdir>/metrics.jsonl as one record per step, in step order ([] without the file).
    A resumed run may log a step twice, and the k-NN monitor logs on its own line: the
    lines of one step are merged, later values winning."""
    by_step = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
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
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
