"""What config files share beyond the defaults (mdistill.config.schema): their argument
(parse_arg), the ':smoke' shrink and the Fashion-MNIST settings.

Config files in configs/ start from base_config() and change what their experiment needs."""

from __future__ import annotations

import ml_collections

from mdistill.config.schema import objectives


def parse_arg(arg: str | None, **defaults) -> dict:
    """A config file's argument (`--config=FILE:ARG`) as a dict: comma-separated
    `key=value` settings over `defaults`, and `smoke` (True when present), e.g.
    'variant=S/16,smoke'. An unknown key fails naming the known ones."""
    out = dict(defaults, smoke=False)
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep and key == "smoke":
            out["smoke"] = True
        elif sep and key in defaults:
            out[key] = value
        else:
            raise ValueError(f"config argument {part!r}: expected 'smoke' or key=value with key one of "
                             f"{sorted(defaults)}")
    return out


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Same method, tiny models, synthetic 32px data, a few dozen steps: seconds on a CPU."""
    c.image_size = 32
    c.student.update(variant="mu/4", decoder_width=64, decoder_depth=1, decoder_heads=4)
    c.teacher.update(variant="xs/4", checkpoint="", dtype="float32")
    for objective in objectives().values():
        if objective.config_key in c:
            objective.smoke(c)
    c.data.update(source="synthetic", channels=3, synthetic_size=512,
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment="none", workers=0)
    c.data.size = 0  # a published dataset size: synthetic data has its own
    c.data.num_sample = 1  # repeated sampling reads video files; synthetic clips are arrays
    if c.num_frames > 1:  # clips of 4 frames: 2 token steps of 2-frame tubelets
        c.num_frames, c.tubelet_size = 4, 2
        c.student.decoder_heads = 1  # VideoMAE's 64-wide decoder heads
    # BEiT's block areas (16..75 of 196 patches) scaled to the 8x8 grid: blocks fit it
    c.masking.update(block_min_patches=4, block_max_patches=24)
    c.batch_size = 16
    c.total_steps, c.warmup_steps = 40, 5
    c.optim.update(lr=1e-3, accum_steps=1)
    c.dtype = "float32"
    c.log_every, c.checkpoint_every = 10, 40
    c.visualize_every = c.total_steps  # one picture, at the end (a fraction of a second)
    c.eval.update(knn_train_examples=256, knn_test_examples=64, batch_size=64)
    return c


def fashion_mnist(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fashion-MNIST from its IDX files: 28x28 grayscale, 4x4 patches (49 per image), small
    decoder, batch 256, settings that train on 2 CPU cores in minutes."""
    c.image_size = 28
    # 47 MB in memory, already 28x28: read in-process, no augmentation (as demo.sh was tuned)
    c.data.update(source="fashion_mnist", split="train", channels=1, mean=(0.286,), std=(0.353,),
                  augment="none", workers=0)
    c.eval.update(train_split="train", test_split="test")
    c.student.update(decoder_width=64, decoder_depth=2, decoder_heads=4)
    c.batch_size = 256
    c.optim.update(lr=1.5e-3, weight_decay=0.05)
    c.log_every, c.checkpoint_every = 50, 500
    c.visualize_every = 250
    return c
