"""The masked step's token gathers at the DMAE step's shapes, by three formulations: the
visible-token gather of the encoders (mdistill.models.vit.gather_tokens: 196 patch tokens ->
49 visible) and the decoder's restore (mdistill.models.mae: 49 + 147 mask tokens -> 196 in
patch order), forward and forward + backward (whose backward is a scatter-add for indexing).

  take_along_axis  jnp.take_along_axis, what mdistill runs (a gather; backward scatter-add)
  one_hot_matmul   einsum with a one-hot [B, K, L] matrix (FLIP's gather_by_einsum; the
                   TPU-friendly form), precision HIGHEST so that it is exact
  sorted_indexing  x[batch, ids] through vmap'd indexing, the same gather spelled otherwise

All three give identical values (checked). The formulations run interleaved call by call;
each figure is the median over --rounds. One JSON line per (shape, formulation, pass); the
measurement that picks a formulation per backend (CPU here; the GPU script runs it there).

  python -m benchmarks.gather --batch=8 --rounds=30
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

# (what, tokens in, tokens out, width) in the DMAE ViT-L/16 -> ViT-B/16 step, 224 px, mask 0.75
SHAPES = (("teacher visible gather", 196, 49, 1024), ("student visible gather", 196, 49, 768),
          ("decoder restore", 196, 196, 512))


def take_along_axis(x, ids):
    return jnp.take_along_axis(x, ids[:, :, None], axis=1)


def one_hot_matmul(x, ids):
    one_hot = jax.nn.one_hot(ids, x.shape[1], dtype=x.dtype)
    return jnp.einsum("bkl,bld->bkd", one_hot, x, precision=jax.lax.Precision.HIGHEST)


def sorted_indexing(x, ids):
    return jax.vmap(lambda row, i: row[i])(x, ids)


FORMS = {"take_along_axis": take_along_axis, "one_hot_matmul": one_hot_matmul, "sorted_indexing": sorted_indexing}


def main(argv):
    del argv
    args = flags.FLAGS
    rng = np.random.default_rng(0)
    dtype = jnp.dtype(args.dtype)
    for what, length, keep, width in SHAPES:
        x = jnp.asarray(rng.normal(size=(args.batch, length, width)), dtype)
        ids = jnp.asarray(np.stack([rng.permutation(length)[:keep] for _ in range(args.batch)]), jnp.int32)
        w = jnp.asarray(rng.normal(size=(args.batch, keep, width)), dtype)
        calls, reference = {}, None
        for name, form in FORMS.items():
            forward = jax.jit(form)
            backward = jax.jit(jax.grad(lambda x, ids, form=form: jnp.sum(form(x, ids) * w)))
            out = np.asarray(forward(x, ids), np.float32)
            if reference is None:
                reference = out
            assert np.array_equal(out, reference), f"{name} differs from take_along_axis at {what}"
            jax.block_until_ready(backward(x, ids))
            calls[(name, "forward")] = lambda f=forward: f(x, ids)
            calls[(name, "forward_and_backward")] = lambda f=backward: f(x, ids)
        times = {k: [] for k in calls}
        keys = list(calls)
        for r in range(args.rounds):
            for k in (keys if r % 2 == 0 else keys[::-1]):
                t0 = time.perf_counter()
                jax.block_until_ready(calls[k]())
                times[k].append(time.perf_counter() - t0)
        for (name, part), ts in times.items():
            base = statistics.median(times[("take_along_axis", part)])
            print(json.dumps({"bench": "gather", "shape": what, "batch": args.batch, "tokens_in": length,
                              "tokens_out": keep, "width": width, "dtype": args.dtype, "form": name, "pass": part,
                              "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
                              "us_median": round(statistics.median(ts) * 1e6, 1),
                              "relative_to_take_along_axis": round(statistics.median(ts) / base, 3)}), flush=True)


if __name__ == "__main__":
    flags.DEFINE_integer("batch", 8, "images")
    flags.DEFINE_integer("rounds", 30, "interleaved calls of each formulation")
    flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16"), "the tokens' dtype")
    app.run(main)
