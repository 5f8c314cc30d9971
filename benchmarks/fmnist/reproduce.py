"""Small-scale reproduction of the papers' central claim on Fashion-MNIST: a student
distilled from an MAE teacher (DMAE, AMD) against the same student pre-trained as a plain
MAE, with the same architecture ('mu/4') and the same number of steps.

  python benchmarks/fmnist/reproduce.py --out=runs/fmnist_repro [--steps=500] [--seeds=0,1,2] \
      [--evals=linprobe,finetune] [--finetune_seeds=0]

Stages (each a subprocess running mdistill's own commands; a finished stage is skipped on
rerun, so an interrupted reproduction continues):
  1. the MAE teacher of configs/fmnist_mae_teacher.py ('xs/4'), once;
  2. for every seed: students as plain MAE (configs/fmnist_dmae.py with method=mae), DMAE
     (configs/fmnist_dmae.py) and AMD (configs/fmnist_amd.py);
  3. for every student: linear probe (configs/linprobe_fmnist.py) and fine-tuning
     (configs/finetune_fmnist.py; --finetune_seeds limits it to some seeds, as it costs
     several times a probe), top-1 on the 10k test images.
Writes <out>/results.json, <out>/results.md (mean +- std over seeds), and the plots
<out>/loss_curves.png, <out>/accuracy.png, <out>/reconstructions.png, after every seed,
so an interrupted reproduction still leaves the table of the seeds it finished.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = {"mae": ("configs/fmnist_dmae.py", ["--config.method=mae"]),
           "dmae": ("configs/fmnist_dmae.py", []),
           "amd": ("configs/fmnist_amd.py", [])}


def run(cmd: list[str], log_path: str) -> float:
    """Run a command from the repository root, tee its output to log_path; seconds taken."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if line.startswith(("step ", "linprobe", "finetune", "error", "|")):
                print("   ", line.rstrip(), flush=True)
        if proc.wait():
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
    return time.time() - t0


def config_of(path: str):
    """The ml_collections config of a config file, e.g. configs/fmnist_dmae.py."""
    spec = importlib.util.spec_from_file_location("config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def done(path: str) -> bool:
    return os.path.exists(path)


def pretrain(out: str, name: str, config: str, extra: list[str], steps: int, data: list[str]) -> dict:
    workdir = os.path.join(out, name)
    marker = os.path.join(workdir, "pretrain.json")
    if not done(marker):
        seconds = run([sys.executable, "-m", "mdistill.main", f"--config={config}", f"--workdir={workdir}",
                       f"--config.total_steps={steps}", f"--config.warmup_steps={max(steps // 10, 1)}",
                       f"--config.log_every={max(steps // 20, 1)}", f"--config.checkpoint_every={steps}",
                       *data, *extra], os.path.join(out, f"{name}.log"))
        records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        # step time from the logged throughput, leaving out the first window (it holds the compile)
        ips = [r["images_per_sec"] for r in records[1:]] or [records[-1]["images_per_sec"]]
        batch = config_of(config).batch_size
        with open(marker, "w") as f:
            json.dump({"wall_seconds": round(seconds, 1), "step_ms": round(1000 * batch / float(np.median(ips)), 1),
                       "final_loss": records[-1]["loss"], "final_rec_loss": records[-1]["rec_loss"]}, f)
    return json.load(open(marker))


def evaluate(out: str, name: str, kind: str, variant: str, seed: int, data: list[str]) -> float:
    workdir = os.path.join(out, name, kind)
    result = os.path.join(workdir, f"{kind}.json")
    if not done(result):
        run([sys.executable, "-m", f"mdistill.evaluate.{kind}", f"--config=configs/{kind}_fmnist.py",
             f"--config.pretrained={os.path.join(out, name)}", f"--config.student.variant={variant}",
             f"--config.seed={seed}", f"--workdir={workdir}", *data], os.path.join(out, f"{name}.log"))
    return json.load(open(result))["top1"]


def mean_std(values, runs: int | None = None, digits: int = 2) -> str:
    """mean ± std (ddof 1); '(n=K)' when only K of the model's `runs` have a value."""
    values = np.asarray(values, float)
    if not len(values):
        return "-"
    cell = f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.{digits}f}"
    return cell + (f" (n={len(values)})" if runs is not None and len(values) != runs else "")


EVAL_NAMES = {"linprobe": "linear probe", "finetune": "fine-tune"}


def table(results: dict, methods: list[str], evals: list[str]) -> str:
    rows = ["| model | runs | " + "".join(f"{EVAL_NAMES[k]} top-1 (%) | " for k in evals)
            + "pre-train wall (s) | step (ms) | final rec. loss |",
            "|---|---|" + "---|" * (len(evals) + 3)]
    for m in ["teacher"] + methods:
        runs = results[m]
        rows.append(f"| {m if m == 'teacher' else m.upper() + ' student'} | {len(runs)} | "
                    + "".join(f"{mean_std([r[k] for r in runs if k in r], len(runs))} | " for k in evals)
                    + f"{mean_std([r['wall_seconds'] for r in runs], digits=0)} | "
                    f"{mean_std([r['step_ms'] for r in runs], digits=0)} | "
                    f"{mean_std([r['final_rec_loss'] for r in runs], digits=4)} |")
    return "\n".join(rows)


def plots(out: str, results: dict, methods: list[str], seeds: list[int], evals: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        for i, s in enumerate(seeds):
            records = [json.loads(line) for line in open(os.path.join(out, f"{m}_s{s}", "metrics.jsonl"))]
            steps = [r["step"] for r in records]
            ax[0].plot(steps, [r["rec_loss"] for r in records], color=f"C{methods.index(m)}",
                       alpha=0.8, label=m.upper() if i == 0 else None)
            ax[1].plot(steps, [r["loss"] for r in records], color=f"C{methods.index(m)}",
                       alpha=0.8, label=m.upper() if i == 0 else None)
    ax[0].set(title="reconstruction loss (hidden patches)", xlabel="step")
    ax[1].set(title="total loss (AMD adds two feature losses)", xlabel="step", yscale="log")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["teacher"] + methods
    for j, kind in enumerate(evals):
        values = [[r[kind] for r in results[n] if kind in r] or [np.nan] for n in names]
        ax.bar(np.arange(len(names)) + 0.38 * j, [np.mean(v) for v in values], 0.38,
               yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values], capsize=4,
               label=EVAL_NAMES[kind])
    ax.set_xticks(np.arange(len(names)) + 0.19, [n if n == "teacher" else n.upper() for n in names])
    ax.set(ylabel="top-1 (%)", title="Fashion-MNIST test accuracy")
    lows = [min((r[k] for r in results[n] for k in evals if k in r), default=100.0) for n in names]
    highs = [max((r[k] for r in results[n] for k in evals if k in r), default=0.0) for n in names]
    ax.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(highs) + 3))
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=120)
    plt.close("all")


def reconstructions(out: str, methods: list[str], seed: int, data_path: str) -> None:
    """One figure: for each student (first seed), 6 test images through visualize's grid, titled."""
    import jax
    import matplotlib
    import ml_collections

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mdistill import checkpoint, visualize
    from mdistill.data.fashion_mnist import FashionMNISTSource
    from mdistill.objectives import build_objective

    images = FashionMNISTSource("test", data_path, 1).images(np.arange(6))
    columns = ["original", "masked", "recon.", "pasted"]
    grids = []
    for m in methods:
        params, meta = checkpoint.load_params(os.path.join(out, f"{m}_s{seed}"), None)
        objective = build_objective(ml_collections.ConfigDict(meta["config"]))
        grids.append(visualize.reconstruction_grid(objective, params, images, jax.random.PRNGKey(0), scale=3))
    n_columns = [g.shape[1] * len(images) // g.shape[0] for g in grids]  # AMD adds a column of both masks
    fig, axes = plt.subplots(1, len(methods), figsize=(0.95 * sum(n_columns) + 1, 6.8),
                             gridspec_kw={"width_ratios": n_columns}, squeeze=False)
    for ax, m, grid, n in zip(axes[0], methods, grids, n_columns):
        ax.imshow(grid)
        for c in range(1, n):
            ax.axvline(c * grid.shape[1] / n - 0.5, color="white", linewidth=1.5)
        ax.set_title(f"{m.upper()} student (seed {seed})")
        ax.set_xticks((np.arange(n) + 0.5) * grid.shape[1] / n, (columns + ["both masks"])[:n], fontsize=8)
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "reconstructions.png"), dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fmnist_repro")
    parser.add_argument("--steps", type=int, default=500, help="pre-training steps, teacher and every student")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="mae,dmae,amd")
    parser.add_argument("--evals", default="linprobe,finetune", help="of linprobe, finetune")
    parser.add_argument("--finetune_seeds", default=None,
                        help="fine-tune only the students of these seeds (default: every seed)")
    parser.add_argument("--data_path", default=os.environ.get("MDISTILL_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    evals = args.evals.split(",")
    if not evals or set(evals) - set(EVAL_NAMES):
        parser.error(f"--evals={args.evals!r}: expected a comma-separated subset of {sorted(EVAL_NAMES)}")
    finetune_seeds = seeds if args.finetune_seeds is None else [int(s) for s in args.finetune_seeds.split(",")]
    if set(finetune_seeds) - set(seeds):
        parser.error(f"--finetune_seeds={args.finetune_seeds!r}: expected seeds among --seeds={args.seeds!r}")
    data = [f"--config.data.path={args.data_path}"]

    def evals_of(seed: int) -> list[str]:
        return [k for k in evals if k != "finetune" or seed in finetune_seeds]
    t0 = time.time()

    results = {m: [] for m in ["teacher"] + methods}
    teacher = pretrain(out, "teacher", "configs/fmnist_mae_teacher.py", [], args.steps, data)
    teacher_dir = [f"--config.teacher.checkpoint={os.path.join(out, 'teacher')}"]
    teacher.update(seed=seeds[0], **{k: evaluate(out, "teacher", k, "xs/4", seeds[0], data) for k in evals_of(seeds[0])})
    results["teacher"].append(teacher)
    for i, s in enumerate(seeds):
        for m in methods:
            config, extra = METHODS[m]
            stats = pretrain(out, f"{m}_s{s}", config, [f"--config.seed={s}", *extra, *teacher_dir], args.steps, data)
            stats.update(seed=s, **{k: evaluate(out, f"{m}_s{s}", k, "mu/4", s, data) for k in evals_of(s)})
            results[m].append(stats)
        summary = table(results, methods, evals)  # after every seed: an interrupted run keeps its table
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"steps": args.steps, "seeds": seeds[:i + 1], "evals": evals, "finetune_seeds": finetune_seeds,
                       "results": results}, f, indent=2)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(summary + "\n")
        plots(out, results, methods, seeds[:i + 1], evals)
    reconstructions(out, methods, seeds[0], args.data_path)
    print(f"\n{summary}\n\n{len(seeds)} seed(s), {args.steps} steps each; {time.time() - t0:.0f}s in all; "
          f"results and plots in {out}")


if __name__ == "__main__":
    main()
