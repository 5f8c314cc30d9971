"""Attention at the DMAE step's shapes: mdistill's formulation against the plain ones.

Times forward and forward + backward of `mdistill.models.vit.multi_head_attention` (on CPU:
heads first, softmax normalised after the product with v) against the same computation
with the probabilities normalised first (`jax.nn.softmax`, then the product) and against
`jax.nn.dot_product_attention`. The three run interleaved, call by call, so that a noisy
host slows them alike; each figure is the median over --rounds. One JSON line per shape
and formulation.

  python -m benchmarks.attention --batch=8 --rounds=40
"""

from __future__ import annotations

import json
import statistics
import time

import einops
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import flops
from mdistill.models.vit import multi_head_attention

# (what, tokens, width, heads) in the DMAE ViT-L/16 -> ViT-B/16 step at 224 px, mask 0.75:
# the teacher and the student encoder see 49 visible patches + cls, the decoder all 197.
SHAPES = (("teacher L/16 encoder", 50, 1024, 16), ("student B/16 encoder", 50, 768, 12),
          ("decoder 512 x 16 heads", 197, 512, 16))


def softmax_first(qkv: jax.Array, num_heads: int) -> jax.Array:
    """The textbook order: probabilities = softmax(q k^T / sqrt(d)), then probabilities @ v."""
    q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=num_heads)
    probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k) * np.float32(q.shape[-1] ** -0.5), axis=-1)
    return einops.rearrange(jnp.einsum("bhqk,bhkd->bhqd", probs, v), "b h t d -> b t (h d)")


def jax_dot_product_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
    q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b t h d", three=3, h=num_heads)
    return einops.rearrange(jax.nn.dot_product_attention(q, k, v), "b t h d -> b t (h d)")


FORMULATIONS = {"mdistill": multi_head_attention, "softmax_first": softmax_first,
                "jax_dot_product_attention": jax_dot_product_attention}


def attention_flops(batch: int, tokens: int, width: int, backward: bool) -> float:
    """benchmarks.flops' count of the two products; their backward pass is twice the forward."""
    return batch * flops.attention_flops(tokens, width) * (3.0 if backward else 1.0)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def bench_shape(what: str, tokens: int, width: int, heads: int, batch: int, rounds: int) -> list[dict]:
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    qkv = jax.random.normal(keys[0], (batch, tokens, 3 * width))
    cotangent = jax.random.normal(keys[1], (batch, tokens, width))
    forward, backward = {}, {}
    for name, fn in FORMULATIONS.items():
        forward[name] = jax.jit(lambda x, fn=fn: fn(x, heads))
        backward[name] = jax.jit(jax.grad(lambda x, fn=fn: jnp.vdot(fn(x, heads), cotangent)))
    reference = backward["softmax_first"](qkv)
    times = {(name, part): [] for name in FORMULATIONS for part in ("forward", "forward_backward")}
    for name in FORMULATIONS:  # compile and warm up
        timed(forward[name], qkv), timed(backward[name], qkv)
    for _ in range(rounds):
        for name in FORMULATIONS:
            times[name, "forward"].append(timed(forward[name], qkv))
            times[name, "forward_backward"].append(timed(backward[name], qkv))
    records = []
    for name in FORMULATIONS:
        grad = backward[name](qkv)
        rel_err = float(jnp.abs(grad - reference).max() / jnp.abs(reference).max())
        for part, with_backward in (("forward", False), ("forward_backward", True)):
            seconds = statistics.median(times[name, part])
            records.append(dict(
                bench="attention", shape=what, batch=batch, tokens=tokens, width=width, heads=heads,
                formulation=name, part=part, ms_median=round(seconds * 1e3, 3),
                gflop_per_s=round(attention_flops(batch, tokens, width, with_backward) / seconds / 1e9, 3),
                grad_max_rel_diff_vs_softmax_first=rel_err, backend=jax.default_backend()))
    return records


def define_flags() -> None:
    flags.DEFINE_integer("batch", 8, "images per call", lower_bound=1)
    flags.DEFINE_integer("rounds", 40, "interleaved calls per formulation (the median is reported)", lower_bound=1)
    flags.DEFINE_string("shapes", "all", "'all' or comma-separated indices into SHAPES")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS
    chosen = SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]
    for what, tokens, width, heads in chosen:
        for record in bench_shape(what, tokens, width, heads, args.batch, args.rounds):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    from mdistill import hugepages
    hugepages.ensure()
    define_flags()
    app.run(main)
