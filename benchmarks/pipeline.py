"""Which bounds training: the input pipeline or the train step?

1. Input: images/s of the training pipeline (mdistill.data.Pipeline) on a folder of JPEGs
   with the ImageNet pre-training transforms (random resized crop 0.2-1.0 to 224, bicubic,
   flip), per CPU core (one decoding process, and the bare decode+transform in a loop) and
   with several worker processes.
   The same for the evaluators' input: fine-tuning (RandomResizedCrop 0.08-1.0, flip, with
   labels) and feature extraction for k-NN / the linear probe (resize + centre crop, in
   order, with labels).
2. Step: images/s of the compiled train step of configs/dmae_vitb.py (ViT-L/16 teacher ->
   ViT-B/16 student, 224 px) on this machine's default JAX device, at a small batch.

Input formats (--formats, each timed on the same images): jpeg, the folder's files as
they are; prepared, the folder written once by mdistill.data.prepare (short side
--short_side, JPEG quality --quality) under --workdir and read as config.data.source=
'prepared' reads it; dali (only where NVIDIA DALI is installed), the folder's files decoded,
cropped and resized by DALI (config.data.decoder='dali'): on the GPU where JAX has one (the
batches then go to it as in training), else on DALI's CPU operators. Each format gets one
line {"bench": "format", "format": ...} with the images_per_cpu_second of the pre-training,
fine-tuning and feature-extraction transforms (for dali: the process's CPU time, all of
DALI's threads, with one DALI thread; on a GPU that is the host's share of the work).

Every figure is printed as one JSON line ({"bench": ..., ...}); the last line is a summary.

  python -m benchmarks.pipeline                        # writes a synthetic JPEG folder first
  python -m benchmarks.pipeline --folder=/data/imagenet --split=train --skip_step
  python -m benchmarks.pipeline --skip_step --formats=jpeg,prepared

Without --folder it writes --num_images JPEGs of ImageNet-like sizes (short side 300-500,
some up to 1500, quality 90) under --workdir.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks import ROOT


FORMATS = ("jpeg", "prepared", "dali")  # dali: where nvidia-dali is installed


def emit(**record):
    print(json.dumps(record), flush=True)
    return record


def write_jpeg_folder(root: str, n: int, classes: int = 10, seed: int = 0) -> str:
    """n JPEGs in <root>/train/<class>/: smooth colour fields with edges and mild noise, so
    they compress and decode roughly like photographs (ImageNet averages ~110 KB, ~400x350)."""
    from PIL import Image

    marker = os.path.join(root, f".complete-{n}")
    if os.path.exists(marker):
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        short = int(rng.integers(300, 501)) if rng.random() < 0.9 else int(rng.integers(800, 1501))
        long = int(short * rng.uniform(1.0, 1.5))
        h, w = (short, long) if rng.random() < 0.7 else (long, short)
        low = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32)
        yy, xx = np.mgrid[:h, :w]
        img += 40 * np.sign(np.sin((xx * rng.uniform(0.01, 0.1) + yy * rng.uniform(0.01, 0.1))))[..., None]
        img += rng.normal(0, 12, img.shape)
        d = os.path.join(root, "train", f"class{i % classes:03d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"img{i:06d}.JPEG"), quality=90)
    open(marker, "w").close()
    return root


def folder_stats(source) -> dict:
    sizes = [os.path.getsize(source.path(i)) for i in range(len(source))]
    return {"images": len(source), "mean_file_kb": round(float(np.mean(sizes)) / 1024, 1)}


def prepared_copy(root: str, split: str, workdir: str, short_side: int, quality: int, image_size: int):
    """The folder written once as prepared shards (mdistill.data.prepare), reused when present."""
    from mdistill.data.image_folder import ImageFolderSource
    from mdistill.data.prepare import prepare_split
    from mdistill.data.prepared import PreparedSource

    folder = ImageFolderSource(root, split, image_size, 3)
    out = os.path.join(workdir, f"prepared-{folder.fingerprint().split(':')[-1]}-s{short_side}-q{quality}")
    if not os.path.exists(os.path.join(out, f"{split}.json")):
        t0 = time.perf_counter()
        prepare_split(folder, out, split, channels=3, short_side=short_side, encoding="jpeg", quality=quality,
                      workers=min(os.cpu_count() or 1, 32), log=lambda _: None)
        emit(bench="prepare", out=out, images=len(folder), seconds=round(time.perf_counter() - t0, 1))
    source = PreparedSource(out, split, image_size, 3)
    emit(bench="prepared", out=out, short_side=short_side, quality=quality, images=len(source),
         mean_record_kb=round(source.meta["stored_bytes"] / max(len(source), 1) / 1024, 1))
    return source


def bench_decode_loop(source, transform, seconds: float, bench: str = "decode_transform_loop", **extra) -> dict:
    """One core, no grain: read + decode (draft) + transform, one image after another."""
    from mdistill.data.transforms import load_image

    rng = np.random.default_rng(0)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    decode = 0.0
    while time.perf_counter() - t0 < seconds:
        d0 = time.process_time()
        img = load_image(source.raw(n % len(source)), transform.channels, transform.min_side())
        decode += time.process_time() - d0
        transform(img, rng)
        n += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU time, not wall time, is what a core gives when the machine is shared with other jobs
    return emit(bench=bench, **extra, processes=1, images=n, seconds=round(dt, 2),
                cpu_seconds=round(cpu, 2), images_per_sec=round(n / dt, 1),
                images_per_cpu_second=round(n / cpu, 1), decode_share_of_cpu=round(decode / cpu, 2))


def bench_pipeline(source, transform, batch: int, workers: int, threads: int, batches: int,
                   bench: str = "pipeline", extra: dict | None = None, **options) -> dict:
    """The training pipeline (grain) producing host batches; the first batches (worker
    start-up) are not timed. `options` (labels, shuffle) go to data.Pipeline."""
    from mdistill.data import Pipeline

    p = Pipeline(source, transform, batch, workers=workers, threads=threads, prefetch=4, max_bad_fraction=1.0,
                 **options)
    with p:
        t_start = time.perf_counter()
        next(p)
        startup = time.perf_counter() - t_start
        warm = max(1, workers)
        for _ in range(warm - 1):
            next(p)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(p)
        dt = time.perf_counter() - t0
    return emit(bench=bench, **(extra or {}), workers=workers, threads=threads, batch=batch, batches=batches,
                seconds=round(dt, 2), startup_seconds=round(startup, 1),
                images_per_sec=round(batches * batch / dt, 1))


def bench_dali(source, transform, batch: int, threads: int, batches: int, bench: str, **options) -> dict:
    """The pipeline with decoder='dali' (mdistill.data.dali): host batches from DALI's CPU
    operators, or, where JAX's default device is a GPU, batches decoded there and delivered
    as global jax.Arrays as in training. The first batches (DALI's start-up) are not timed."""
    import jax

    from mdistill import sharding
    from mdistill.data import Pipeline

    gpu = jax.default_backend() == "gpu"
    target = sharding.batch_sharding(sharding.make_mesh()) if gpu else None
    p = Pipeline(source, transform, batch, target, threads=threads, prefetch=2, max_bad_fraction=1.0,
                 decoder="dali", **options)
    with p:
        t_start = time.perf_counter()
        jax.block_until_ready(next(p))
        startup = time.perf_counter() - t_start
        jax.block_until_ready(next(p))
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            out = next(p)
        jax.block_until_ready(out)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return emit(bench=bench, format="dali", device="gpu" if gpu else "cpu", threads=threads, batch=batch,
                batches=batches, seconds=round(dt, 2), cpu_seconds=round(cpu, 2), startup_seconds=round(startup, 1),
                images_per_sec=round(batches * batch / dt, 1), images_per_cpu_second=round(batches * batch / cpu, 1))


def bench_step(config_file: str, batch: int, steps: int) -> dict:
    """The train step of a config at a small batch, on the default device; random uint8
    images, randomly initialised teacher (a checkpoint changes no shapes, so no timings)."""
    import importlib.util

    import jax

    from mdistill import sharding
    from mdistill.train import Trainer

    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, config_file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = batch
    config.optim.accum_steps = 1
    mesh = sharding.make_mesh()
    trainer = Trainer(config, mesh)
    state, teacher = trainer.init_state(), trainer.load_teacher()
    images = jax.device_put(np.random.default_rng(0).integers(
        0, 256, trainer.batch_shape().shape, dtype=np.uint8), trainer.batch_sharding)
    cost = trainer.step_fn.lower(state, teacher, images).cost_analysis()  # XLA's estimate, no compile
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    t0 = time.perf_counter()
    state, metrics = trainer.step_fn(state, teacher, images)  # compiles, then runs once
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.step_fn(state, teacher, images)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - t0) / steps
    return emit(bench="train_step", config=config_file, method=config.method, student=config.student.variant,
                teacher=config.teacher.variant, image_size=config.image_size, batch=batch, steps=steps,
                device=str(jax.devices()[0].device_kind), devices=jax.device_count(),
                compile_and_first_step_seconds=round(compile_s, 1), seconds_per_step=round(dt, 3),
                images_per_sec=round(batch / dt, 2), gflop_per_image=round(flops / batch / 1e9, 1),
                achieved_gflops=round(flops / dt / 1e9, 1))


def define_flags() -> None:
    flags.DEFINE_string("folder", "", "root of an image folder (<folder>/<split>/<class>/*); "
                        "default: write a synthetic JPEG folder under --workdir")
    flags.DEFINE_string("split", "train", "the folder's split")
    flags.DEFINE_string("workdir", "/tmp/mdistill-bench", "where the synthetic JPEG folder goes")
    flags.DEFINE_integer("num_images", 512, "synthetic JPEGs to write")
    flags.DEFINE_integer("image_size", 224, "crop size")
    flags.DEFINE_integer("batch", 64, "host batch of the pipeline runs")
    flags.DEFINE_integer("batches", 8, "timed batches per pipeline run")
    flags.DEFINE_list("workers", ["0", "1", "2"], "worker processes to try (0: in the main process)")
    flags.DEFINE_integer("threads", 1, "threads per process")
    flags.DEFINE_float("loop_seconds", 15.0, "length of the single-process decode loop")
    flags.DEFINE_string("config", "configs/dmae_vitb.py", "config file of the timed train step")
    flags.DEFINE_integer("step_batch", 8, "global batch of the timed train step")
    flags.DEFINE_integer("step_steps", 2, "timed train steps")
    flags.DEFINE_bool("skip_step", False, "no train-step figures")
    flags.DEFINE_bool("skip_eval", False, "no fine-tuning / feature-extraction figures")
    flags.DEFINE_list("formats", ["jpeg"], "input formats: jpeg (the folder's files) | prepared (written once from "
                      "them by mdistill.data.prepare) | dali (the folder's files through NVIDIA DALI, where installed)")
    flags.DEFINE_integer("short_side", 256, "prepared format: stored short side")
    flags.DEFINE_integer("quality", 90, "prepared format: JPEG quality")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS

    from mdistill.data.image_folder import ImageFolderSource
    from mdistill.data.transforms import Transform

    unknown = sorted(set(args.formats) - set(FORMATS))
    if unknown:
        raise app.UsageError(f"--formats: unknown {unknown}, expected some of {list(FORMATS)}", exitcode=2)
    if "dali" in args.formats:
        from mdistill.data import dali

        if not dali.available():
            raise app.UsageError("--formats=dali: NVIDIA DALI is not installed (pip install '.[dali]')", exitcode=2)
    root = args.folder or write_jpeg_folder(os.path.join(args.workdir, "jpegs"), args.num_images)
    folder = ImageFolderSource(root, args.split, args.image_size, 3)
    emit(bench="folder", root=root, cpu_cores=os.cpu_count(), load_average=round(os.getloadavg()[0], 2),
         **folder_stats(folder))
    sources = {f: folder if f in ("jpeg", "dali") else prepared_copy(root, args.split, args.workdir, args.short_side,
                                                           args.quality, args.image_size) for f in args.formats}
    transforms = [("pretrain", Transform(args.image_size, 3, "mae"), {})]  # MAE: RRC (0.2, 1) bicubic + flip
    if not args.skip_eval:  # the evaluators' input: fine-tuning and feature extraction
        transforms += [("finetune", Transform(args.image_size, 3, "mae", (0.08, 1.0)), dict(labels=True)),
                       ("features", Transform(args.image_size, 3, "none"), dict(labels=True, shuffle=False))]
    per_core = {f: {} for f in sources}
    best = {f: {} for f in sources}
    for name, t, options in transforms:
        for f, source in sources.items():  # formats side by side, one transform at a time
            bench = "decode_transform_loop" if name == "pretrain" else f"{name}_decode_transform_loop"
            if f == "dali":  # one DALI thread: its CPU time per image
                per_core[f][name] = bench_dali(source, t, args.batch, 1, args.batches, bench,
                                               **options)["images_per_cpu_second"]
                continue
            per_core[f][name] = bench_decode_loop(source, t, args.loop_seconds, bench,
                                                  format=f)["images_per_cpu_second"]
        for f, source in sources.items():
            bench = "pipeline" if name == "pretrain" else f"{name}_pipeline"
            if f == "dali":  # DALI's threads in place of grain's worker processes
                runs = [bench_dali(source, t, args.batch, max(int(w), 1) * args.threads, args.batches, bench,
                                   **options) for w in args.workers]
            else:
                runs = [bench_pipeline(source, t, args.batch, int(w), args.threads, args.batches, bench,
                                       extra={"format": f}, **options) for w in args.workers]
            best[f][name] = max(r["images_per_sec"] for r in runs)
    for f in sources:
        emit(bench="format", format=f, **{f"{name}_images_per_cpu_second": v for name, v in per_core[f].items()},
             **{f"{name}_images_per_sec_best": v for name, v in best[f].items()},
             **({"pretrain_speedup_over_jpeg": round(per_core[f]["pretrain"] / per_core["jpeg"]["pretrain"], 2)}
                if "jpeg" in sources and f != "jpeg" else {}))
    first = args.formats[0]
    summary = {"bench": "summary", "format": first, "input_images_per_sec_per_core": per_core[first]["pretrain"],
               "input_images_per_sec_best": best[first]["pretrain"]}
    for name in per_core[first]:
        if name != "pretrain":
            summary[f"{name}_images_per_sec_per_core"] = per_core[first][name]
            summary[f"{name}_images_per_sec_best"] = best[first][name]
    per_core = per_core[first]["pretrain"]
    if not args.skip_step:
        step = bench_step(args.config, args.step_batch, args.step_steps)
        summary.update(step_images_per_sec=step["images_per_sec"], step_device=step["device"],
                       cores_to_feed_the_step=round(step["images_per_sec"] / per_core, 4),
                       gflop_per_image=step["gflop_per_image"],
                       # an accelerator sustaining F TFLOP/s on this step needs F * this many cores
                       cores_per_sustained_tflops=round(1e3 / step["gflop_per_image"] / per_core, 3))
    emit(**summary)


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()  # as mdistill.main does (MDISTILL_HUGEPAGES=0: off)
    define_flags()
    app.run(main)
