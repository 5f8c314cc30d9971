"""How fast is one training step? MAE, DMAE and AMD on named model configs.

For every (method, model) it compiles the real train step (mdistill.train.Trainer, the
config files in configs/, batch and dtypes overridden), runs it on one synthetic batch and
prints one JSON line with: step time (median of --steps timed steps after --warmup),
images/s, compile time, XLA's FLOPs per step and the analytic model's (benchmarks.flops),
achieved FLOP/s counting only the model's useful FLOPs, peak memory, and on GPU/TPU the
MFU against the device's peak. A large matrix product in the step's compute dtype is
timed before and after each step (same process, same moment), so every step is also
reported as a fraction of what this machine's matmul sustains right then. With MAE and
DMAE of the same model in one run, a 'dmae_overhead' line compares the DMAE step with
the MAE step plus the teacher's partial forward at the MAE step's FLOP/s.

Models (student <- teacher, image size):
  tiny  mu/4 <- xs/4 at 32 px (the ':smoke' configs)
  S     S/16 <- L/16 at 224 (DMAE: configs/dmae_vitb.py with a ViT-S student; AMD: configs/amd_vits.py)
  B     B/16 <- L/16 at 224 (configs/mae_vitb.py, dmae_vitb.py, amd_vitb.py)
  L     L/16 at 224, MAE only (configs/mae_vitl.py: the teachers' own pre-training)

  python -m benchmarks.step                                  # tiny, all methods
  python -m benchmarks.step --models=B --methods=mae,dmae --batch=8 --steps=5
  python -m benchmarks.step --models=B --dtype=bfloat16 --teacher_dtype=bfloat16 --batch=256

Steps use random weights (no checkpoint) and one random uint8 batch: the input pipeline is
not part of it (benchmarks/pipeline.py measures that).
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import ROOT
from benchmarks import flops as flops_model
from mdistill import sharding, train
from mdistill.config import validation
from mdistill.metrics import log
from mdistill.objectives import OBJECTIVES

# every method with a ViT-B/16 experiment config (Objective.reference_config)
METHODS = tuple(name for name, objective in OBJECTIVES.items() if objective.reference_config)
MODELS = ("tiny", "S", "B", "L")

# Dense peak FLOP/s by device kind (substring of jax's device_kind) for bf16; float32 steps
# on GPU run their matmuls in TF32 by default, half the bf16 rate on these parts.
PEAK_BF16 = {
    "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12,
    "L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def emit(out, **record):
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    return record


def load_config_file(name: str, arg=None):
    path = os.path.join(ROOT, "configs", name + ".py")
    spec = importlib.util.spec_from_file_location(f"_bench_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def build_config(method: str, model: str, args):
    """The experiment config of (method, model), with the benchmark's overrides; None when
    the pair is not defined."""
    files = {name: OBJECTIVES[name].reference_config for name in METHODS}
    if model == "tiny":
        c = load_config_file(files[method], "smoke")
    elif model == "B":
        c = load_config_file(files[method])
    elif model == "S":
        if method == "amd":
            c = load_config_file("amd_vits")
        else:
            c = load_config_file(files[method])
            c.student.variant = "S/16"
            c.distill.projection = (384, 1024)
    elif model == "L":
        if method != "mae":
            return None  # no published distillation into a ViT-L
        c = load_config_file("mae_vitl")
    else:
        raise ValueError(f"model {model!r}: expected one of {MODELS}")
    c.batch_size = args.batch or c.batch_size
    c.dtype = args.dtype
    c.teacher.dtype = args.teacher_dtype
    c.remat = args.remat
    c.optim.accum_steps = 1
    c.optim.layout, c.optim.mu_dtype = args.optim_layout, args.mu_dtype
    # the step does not depend on the data source; synthetic keeps dataset sizes out of it
    c.data.source = "synthetic"
    c.total_steps, c.warmup_steps = 10_000, 100
    return c


_MATMUL = {}


def matmul_rate(dtype, n: int, reps: int = 3) -> float:
    """FLOP/s of an n x n x n matrix product (best of reps after one warm-up)."""
    if (dtype, n) not in _MATMUL:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
        _MATMUL[dtype, n] = (jax.jit(lambda a, b: a @ b), a, b)
    f, a, b = _MATMUL[dtype, n]
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / min(times)


def peak_flops(device, dtype: str) -> float | None:
    kind = device.device_kind
    for name in sorted(PEAK_BF16, key=len, reverse=True):
        if name in kind:
            return PEAK_BF16[name] * (1.0 if dtype == "bfloat16" else 0.5)
    return None


def peak_memory(compiled, device) -> dict:
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # not every backend has them
        pass
    if stats and "peak_bytes_in_use" in stats:
        return {"peak_memory_bytes": int(stats["peak_bytes_in_use"]), "peak_memory_source": "device"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        m = compiled.memory_analysis()
        est = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                  - m.alias_size_in_bytes)
    except Exception:
        est = None
    return {"peak_memory_bytes": est, "peak_memory_source": "xla_estimate", "process_max_rss_bytes": rss}


def define_step_flags() -> None:
    """The flags that shape a step, shared with step_parts.py and step_ab.py."""
    flags.DEFINE_integer("batch", 8, "global batch (0: the config's)")
    flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16"),
                      "student compute dtype (parameters and optimizer state stay float32)")
    flags.DEFINE_enum("teacher_dtype", "float32", ("float32", "bfloat16"), "teacher compute dtype")
    flags.DEFINE_string("remat", "none", "none | full | dots")
    flags.DEFINE_enum("optim_layout", "tree", ("tree", "flat"), "AdamW's update: per parameter (tree) or raveled "
                      "into one vector (flat); config.optim.layout")
    flags.DEFINE_enum("mu_dtype", "float32", ("float32", "bfloat16"), "AdamW's first moment; config.optim.mu_dtype")


def define_one_step_flags() -> None:
    """The flags that pick one (method, model) step, for the scripts that study one step
    (step_parts.py, step_ab.py)."""
    flags.DEFINE_enum("method", "dmae", METHODS, "method")
    flags.DEFINE_enum("model", "B", MODELS, "model (see benchmarks/step.py)")
    define_step_flags()


def one_step_trainer(args) -> train.Trainer:
    """The validated trainer of the step define_one_step_flags picked; a usage error when
    the method is not defined for the model."""
    config = build_config(args.method, args.model, args)
    if config is None:
        raise app.UsageError(f"{args.method} is not defined for model {args.model}", exitcode=2)
    mesh = sharding.make_mesh()
    validation.validate(config, mesh.size)
    return train.Trainer(config, mesh)


def step_inputs(trainer):
    """(state, teacher, images) for one step: fresh random weights, one random uint8 batch."""
    state = trainer.init_state()
    teacher = None
    if trainer.objective.uses_teacher:
        init = jax.jit(trainer._teacher_init, out_shardings=trainer.teacher_sharding)
        teacher = init(jax.random.PRNGKey(1))
    shape = trainer.batch_shape().shape
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8),
                            trainer.batch_sharding)
    return state, teacher, images


def bench_one(method: str, model: str, args, mesh) -> dict | None:
    config = build_config(method, model, args)
    if config is None:
        return None
    validation.validate(config, mesh.size)
    trainer = train.Trainer(config, mesh)
    t0 = time.perf_counter()
    compiled = trainer.step_fn.lower(trainer.abstract_state(), trainer.abstract_teacher(),
                                     trainer.batch_shape()).compile()
    compile_s = time.perf_counter() - t0

    state, teacher, images = step_inputs(trainer)

    ref_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    for _ in range(args.warmup):
        state, metrics = compiled(state, teacher, images)
    jax.block_until_ready((state, metrics))
    # each timed step sits between two timings of the reference matmul, so that on a shared
    # machine every step is compared with what the matmul got at the same moment
    rates, times = [matmul_rate(ref_dtype, args.matmul_size)], []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, teacher, images)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
        rates.append(matmul_rate(ref_dtype, args.matmul_size))
    # the same steps dispatched back to back, synchronised once: what the training loop sees
    t = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, teacher, images)
    jax.block_until_ready((state, metrics))
    pipelined = (time.perf_counter() - t) / args.steps
    loss = float(metrics["loss"])

    step = statistics.median(times)
    xla = train.flops_of(compiled) * mesh.size
    terms = flops_model.step_flops(config)
    useful = terms["total"]
    matmul = statistics.median(rates)
    # per step: useful FLOP/s over the mean of the matmul timings on either side of it
    fractions = [useful / t / ((a + b) / 2) for t, a, b in zip(times, rates, rates[1:])]
    device = jax.devices()[0]
    record = {
        "bench": "step", "method": method, "model": model, "student": config.student.variant,
        "teacher": config.teacher.variant if trainer.objective.uses_teacher else None,
        "image_size": config.image_size, "batch": config.batch_size, "dtype": config.dtype,
        "teacher_dtype": config.teacher.dtype if trainer.objective.uses_teacher else None,
        "remat": config.remat, "optim_layout": config.optim.layout, "mu_dtype": config.optim.mu_dtype,
        "backend": jax.default_backend(), "device_kind": device.device_kind,
        "devices": mesh.size, "compile_s": round(compile_s, 2),
        "step_s_median": round(step, 4), "step_s_all": [round(x, 4) for x in times],
        "step_s_pipelined": round(pipelined, 4), "images_per_s": round(config.batch_size / step, 2),
        "xla_flops": xla, "model_flops": useful,
        "model_flops_terms": {k: v for k, v in terms.items() if k != "total"},
        "xla_over_model": round(xla / useful, 4) if useful else None,
        "useful_flops_per_s": useful / step, "xla_flops_per_s": xla / step,
        "matmul_size": args.matmul_size, "matmul_flops_per_s": matmul,
        "matmul_flops_per_s_all": rates,
        "fraction_of_matmul": round(statistics.median(fractions), 4),
        "fraction_of_matmul_all": [round(f, 4) for f in fractions],
        "best_step_s": round(min(times), 4), "best_matmul_flops_per_s": max(rates),
        "fraction_best_over_best": round(useful / min(times) / max(rates), 4),
        "loss": loss, "loadavg_1m": round(os.getloadavg()[0], 2),
        **peak_memory(compiled, device),
    }
    peak = peak_flops(device, config.dtype) if jax.default_backend() != "cpu" else None
    if peak:
        record["peak_flops_per_s"] = peak * mesh.size
        record["mfu"] = round(useful / step / (peak * mesh.size), 4)
    return record


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS
    args.matmul_size = args.matmul_size or (2048 if jax.default_backend() == "cpu" else 8192)
    methods, models = args.methods, args.models
    for m in methods:
        if m not in METHODS:
            raise app.UsageError(f"--methods: {m!r} is not one of {METHODS}", exitcode=2)
    for m in models:
        if m not in MODELS:
            raise app.UsageError(f"--models: {m!r} is not one of {MODELS}", exitcode=2)

    mesh = sharding.make_mesh()
    device = jax.devices()[0]
    emit(args.out, bench="env", backend=jax.default_backend(), device_kind=device.device_kind,
         devices=mesh.size, jax=jax.__version__, cpu_count=os.cpu_count(),
         loadavg=[round(x, 2) for x in os.getloadavg()], xla_flags=os.environ.get("XLA_FLAGS", ""),
         glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
         argv=sys.argv[1:])
    if jax.default_backend() == "cpu":
        log("CPU backend: no MFU (no device peak); fraction_of_matmul compares with the matmul reference")
    for model in models:
        results = {}
        for method in methods:
            record = bench_one(method, model, args, mesh)
            if record is None:
                emit(args.out, bench="step", method=method, model=model, skipped="not defined for this model")
                continue
            results[method] = emit(args.out, **record)
        if "mae" in results and "dmae" in results:
            mae, dmae = results["mae"], results["dmae"]
            teacher = dmae["model_flops_terms"]["teacher_forward"]
            predicted = mae["step_s_median"] + teacher / mae["useful_flops_per_s"]
            emit(args.out, bench="dmae_overhead", model=model, batch=dmae["batch"],
                 mae_step_s=mae["step_s_median"], dmae_step_s=dmae["step_s_median"],
                 teacher_forward_flops=teacher, predicted_dmae_step_s=round(predicted, 4),
                 ratio=round(dmae["step_s_median"] / predicted, 4))


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()  # as mdistill.main does (MDISTILL_HUGEPAGES=0: off)
    flags.DEFINE_list("methods", list(METHODS), f"comma-separated, of {METHODS}")
    flags.DEFINE_list("models", ["tiny"], f"comma-separated, of {MODELS}")
    define_step_flags()
    flags.DEFINE_integer("steps", 5, "timed steps (the median is reported)")
    flags.DEFINE_integer("warmup", 1, "untimed steps after compiling")
    flags.DEFINE_integer("matmul_size", 0, "side of the reference matrix product (0: 2048 on CPU, 8192 elsewhere)")
    flags.DEFINE_string("out", "", "also append the JSON lines to this file")
    app.run(main)
