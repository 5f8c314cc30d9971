"""What the studies (benchmarks/fmnist, benchmarks/moving_fmnist) share. A study plans its
runs, each with the settings that identify it (plan); keeps every finished run in its
results.json, so that it continues where it stopped and a run whose settings changed runs
again (cache); runs mdistill's own commands from the repository root and records the code
revision and the encoders' digests (runner); compares recipes paired by seed (stats); and
regenerates its tables from results.json alone (report)."""

from benchmarks import ROOT  # noqa: F401  (the repository: the studies run their commands there)
