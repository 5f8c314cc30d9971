"""Partition rules on the named mesh: every large array is split over 'fsdp', per-device
memory falls as 1/fsdp. (tests/test_multihost.py checks that FSDP computes the same losses
as data parallelism.)"""

import jax
import numpy as np
import pytest

from configs import amd_vitb, dmae_vitb
from mdistill import sharding
from mdistill.train import Trainer


def paper_trainer(config_module, fsdp):
    config = config_module.get_config()
    config.mesh.fsdp = fsdp
    return Trainer(config, sharding.make_mesh(shape=config.mesh.to_dict()))


def unsharded_large_leaves(tree, shardings):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf.shape) for (path, leaf), s in zip(flat, jax.tree.leaves(shardings))
            if np.prod(leaf.shape) >= sharding.MIN_SHARDED_SIZE and s.is_fully_replicated]


@pytest.mark.parametrize("config_module", [dmae_vitb, amd_vitb], ids=["dmae_vitb", "amd_vitb"])
@pytest.mark.slow
def test_every_large_array_of_the_paper_models_is_split_over_fsdp(config_module):
    trainer = paper_trainer(config_module, fsdp=8)
    state, teacher = trainer.abstract_state(), trainer.abstract_teacher()
    assert unsharded_large_leaves(state, trainer.state_sharding) == []
    assert unsharded_large_leaves(teacher, trainer.teacher_sharding) == []
    # ...and what stays replicated is small: cls/mask tokens, norms, biases
    pairs = zip(jax.tree.leaves(state.params), jax.tree.leaves(trainer.state_sharding.params))
    small = sum(np.prod(x.shape) for x, s in pairs
                if s.is_fully_replicated)
    assert small < 0.01 * sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_per_device_state_and_teacher_memory_fall_as_one_over_fsdp():
    dp, fsdp = paper_trainer(dmae_vitb, 1), paper_trainer(dmae_vitb, 8)
    state_dp = sharding.bytes_per_device(dp.abstract_state(), dp.state_sharding)
    state_fsdp = sharding.bytes_per_device(fsdp.abstract_state(), fsdp.state_sharding)
    teacher_dp = sharding.bytes_per_device(dp.abstract_teacher(), dp.teacher_sharding)
    teacher_fsdp = sharding.bytes_per_device(fsdp.abstract_teacher(), fsdp.teacher_sharding)
    assert state_dp / state_fsdp > 7.8 and teacher_dp / teacher_fsdp > 7.8  # 8 minus the small replicated rest


@pytest.mark.parametrize("shape,error", [({"data": 3, "fsdp": -1}, "does not fit"),
                                         ({"data": -1, "fsdp": -1}, "does not fit"),
                                         ({"data": -1, "model": 2}, "expected")])
def test_bad_mesh_shapes_are_named(shape, error):
    with pytest.raises(ValueError, match=error):
        sharding.make_mesh(shape=shape)


def test_partition_spec_splits_the_largest_divisible_dimension():
    assert sharding.partition_spec("['encoder']['block_0']['mlp']['fc1']['kernel']", (768, 3072), 8) == \
        jax.sharding.PartitionSpec(None, "fsdp")
    assert sharding.partition_spec("['encoder']['cls_token']", (1, 1, 768 * 32), 8) == jax.sharding.PartitionSpec()
    assert sharding.partition_spec("['x']['bias']", (768,), 8) == jax.sharding.PartitionSpec()  # below threshold
    assert sharding.partition_spec("['x']['kernel']", (769, 771), 8) == jax.sharding.PartitionSpec()  # indivisible
