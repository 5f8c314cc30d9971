"""Measurements and studies of mdistill, kept out of the installed package. Run them from the
repository root as modules, e.g. `python -m benchmarks.step` or `python -m benchmarks.fmnist.study
report`:

  step, step_parts, step_ab   a training step timed (whole, by part, under XLA options compared)
  attention                   attention's formulations timed
  official_dmae               the official DMAE release's step, from a checkout of it
  pipeline                    the input pipeline's throughput
  flops                       the analytic FLOP model of a step
  study/                      what the studies share: plan, cache (results.json), runner, statistics, report
  fmnist/, moving_fmnist/     the two studies, each with its results.json and generated results.md
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
