"""The optimizer (mdistill.optim): the flattened AdamW update against optax's adamw, the
bfloat16 first moment, old checkpoints' configs, bad settings."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mdistill import optim
from mdistill.config import apply_smoke, base_config
from mdistill.weights.checkpoint import config_changes


def optim_config(**overrides):
    c = base_config().optim
    c.update(lr=1e-2, weight_decay=0.05, **overrides)
    return c


def params_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    params = {"block": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=(5,))},
              "norm": {"scale": rng.normal(size=(5,))}, "head": {"kernel": rng.normal(size=(5, 3))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(4)]
    return params, grads


def run(config, steps_grads, params):
    tx = optim.build_optimizer(config, optim.schedule(config, 256, 10, 2))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jax.tree.map(jnp.add, params, updates), state

    for g in steps_grads:
        params, state = step(params, state, g)
    return params, state


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_flat_update_gives_adamw_parameters(grad_clip):
    params, grads = params_and_grads()
    tree, _ = run(optim_config(grad_clip=grad_clip), grads, params)
    flat, state = run(optim_config(grad_clip=grad_clip, layout="flat"), grads, params)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(flat)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    moments = [x for x in jax.tree.leaves(state) if x.ndim == 1 and x.size == 30 + 5 + 5 + 15]
    assert len(moments) == 2  # mu and nu, one vector each over all 55 parameters
    # weight decay only on kernels: a zero-gradient bias is left alone, a kernel shrinks
    zero = [jax.tree.map(jnp.zeros_like, params)] * 3  # the first step's lr is 0 (warm-up)
    moved, _ = run(optim_config(layout="flat"), zero, params)
    np.testing.assert_array_equal(moved["block"]["bias"], params["block"]["bias"])
    assert float(jnp.abs(moved["block"]["kernel"]).sum()) < float(jnp.abs(params["block"]["kernel"]).sum())


def test_bfloat16_first_moment():
    params, grads = params_and_grads(1)
    for layout in optim.LAYOUTS:
        new, state = run(optim_config(layout=layout, mu_dtype="bfloat16"), grads, params)
        dtypes = {x.dtype for x in jax.tree.leaves(state) if x.ndim}
        assert dtypes == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}  # mu bf16, nu f32
        ref, _ = run(optim_config(layout=layout), grads, params)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(new)):
            np.testing.assert_allclose(a, b, atol=1e-3)  # bfloat16's rounding of mu, scaled by lr


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"config.optim.layout='fused'.*\('tree', 'flat'\)"):
        optim.build_optimizer(optim_config(layout="fused"), 1e-3)
    with pytest.raises(ValueError, match="config.optim.mu_dtype='float16'"):
        optim.build_optimizer(optim_config(mu_dtype="float16"), 1e-3)


def test_checkpoints_from_before_the_fields_resume():
    current = apply_smoke(base_config()).to_dict()
    saved = ml_collections.ConfigDict(current).to_dict()
    del saved["optim"]["layout"], saved["optim"]["mu_dtype"]
    assert config_changes(saved, current) == []
    changed = dict(current, optim=dict(current["optim"], layout="flat"))
    assert [line.split(":")[0].strip() for line in config_changes(saved, changed)] == ["optim.layout"]


@pytest.mark.slow  # training runs
@pytest.mark.parametrize("mu_dtype", ["float32", "bfloat16"])
def test_a_flat_run_resumes_exactly_and_shards_over_fsdp(tmp_path, mu_dtype):
    import shutil

    from mdistill import sharding
    from mdistill.weights import checkpoint
    from mdistill.train import Trainer, train

    c = apply_smoke(base_config())
    c.total_steps, c.checkpoint_every = 20, 10
    c.optim.update(layout="flat", mu_dtype=mu_dtype)
    train(c, str(tmp_path / "clean"))
    train(c, str(tmp_path / "resumed"))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "20")  # as if killed after step 10
    train(c, str(tmp_path / "resumed"))
    clean, meta = checkpoint.load_params(str(tmp_path / "clean"), None)
    resumed, _ = checkpoint.load_params(str(tmp_path / "resumed"), None)
    assert meta["step"] == 20
    for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    # with fsdp, the moments' vector is split over the fsdp axis when its length divides
    c.mesh.update(data=4, fsdp=2)
    trainer = Trainer(c, sharding.make_mesh(shape=c.mesh.to_dict()))
    moments = [s for s, x in zip(jax.tree.leaves(trainer.state_sharding.opt_state),
                                 jax.tree.leaves(trainer.abstract_state().opt_state)) if x.ndim == 1 and x.size > 1000]
    assert len(moments) == 2 and all(s.spec == jax.sharding.PartitionSpec("fsdp") for s in moments)
