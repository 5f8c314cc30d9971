"""Defaults shared by every experiment config, and the ':smoke' shrink.

Config files in configs/ start from base_config() and change what their experiment needs.
Block indices are 0-based outputs of blocks ("block 8" is the output of the ninth block);
papers that count from 1 name block i+1.
"""

from __future__ import annotations

import ml_collections

from mdistill.data.fashion_mnist import DEFAULT_DIR as FMNIST_DIR

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "mae"  # one of mdistill.objectives.OBJECTIVES
    c.seed = 0
    c.dtype = "float32"  # compute dtype of the student; parameters stay float32
    # Rematerialise the student's encoder and decoder blocks in the backward pass (less
    # activation memory, more compute): none | full | dots (keep the matmul outputs).
    c.remat = "none"
    c.image_size = 224
    # Clips instead of images: num_frames > 1 makes every ViT a VideoMAE video ViT (tubelets
    # of tubelet_size frames x p x p, no cls token, a 1-D sin-cos table; mdistill.inputs) and
    # every mask a tube mask (mdistill.masking).
    c.num_frames = 1
    c.tubelet_size = 2
    c.mask_ratio = 0.75
    c.norm_pix_loss = True

    c.student = ml_collections.ConfigDict(dict(
        variant="B/16", decoder_width=512, decoder_depth=8, decoder_heads=16,
        # start from these weights instead of a random init (continued pre-training, or an
        # official MAE encoder + decoder): the paths teacher.checkpoint takes, checked against
        # the student's variant and decoder; a checkpoint without a decoder sets the encoder only.
        # A video student (num_frames > 1) starts from a video checkpoint, an image one from an
        # image one. Method heads (DMAE's and AMD's projections, AMD's generators; an mdistill
        # run's or the official releases') load where they fit; the others are listed.
        init="",
        # tensors of student.init to leave out: key prefixes, comma-separated (PyTorch names
        # for a file, e.g. 'decoder_,mask_token,projection_heads.'; '/'-joined parameter paths
        # for an mdistill checkpoint, e.g. 'decoder/,heads/,generators/')
        init_ignore=""))
    c.teacher = ml_collections.ConfigDict(dict(
        variant="L/16",
        checkpoint="",       # mdistill workdir / checkpoint dir; empty = random (smoke only)
        dtype="float32",     # compute and storage dtype of the frozen teacher
        # A distillation checkpoint records its teacher's digest; resuming with other teacher
        # weights is refused unless this says the change is meant.
        allow_change=False))
    # Each method's own section (config.distill for DMAE, config.amd for AMD, ...), from
    # its objective (mdistill/objectives): every config holds every method's defaults.
    for objective in _objectives().values():
        if objective.config_key and objective.config_key not in c:
            c[objective.config_key] = objective.defaults()
    # Which patches the student (and the teacher) see: a per-sample order of the patches of
    # this kind (mdistill.masking.ORDERS), cut at the mask ratios: random (MAE) | block
    # (BEiT; SimMIM's squares with block_square > 0) | colored_noise (ColorMAE). The other
    # fields are the structured kinds' options, described in mdistill/masking.py.
    c.masking = ml_collections.ConfigDict(dict(
        kind="random",
        block_min_patches=16, block_max_patches=75,  # area of BEiT's rectangles, in patches
        block_aspect=0.3,                            # aspect ratios in [block_aspect, 1 / block_aspect]
        block_square=0,                              # > 0: SimMIM's square side, in patches
        noise_color="green",                         # red | blue | green | purple
        noise_sigma=1.0))                            # the noise filters' scale, in patches

    c.batch_size = 4096      # global, over all devices and accumulation steps
    # Device mesh: the batch is split over both axes, parameters, optimizer state and the
    # teacher over 'fsdp'. -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.num_epochs = 800.0
    c.warmup_epochs = 40.0
    c.total_steps = -1       # >= 0 overrides num_epochs
    c.warmup_steps = -1      # >= 0 overrides warmup_epochs
    c.optim = ml_collections.ConfigDict(dict(
        blr=1.5e-4,          # lr = blr * batch_size / 256
        lr=-1.0,             # > 0 sets the peak lr directly
        min_lr=0.0, b1=0.9, b2=0.95, weight_decay=0.05,
        grad_clip=0.0,       # global-norm clipping; 0 disables
        accum_steps=1,       # micro-batches per step (gradient accumulation)
        layout="tree",       # AdamW's moments per parameter (tree) | raveled into one vector, one kernel (flat)
        mu_dtype="float32"))  # AdamW's first moment: float32 | bfloat16 (big_vision's; half the memory)

    # Input pipeline (mdistill/data). Images stay uint8 on the host; mean/std normalise them
    # on device. Sources: tfds (name/split in data_dir, prepared as ArrayRecord) | folder
    # (<path>/<split>/<class>/<image>, ImageNet layout) | prepared (shards in path written by
    # mdistill.data.prepare) | fashion_mnist (IDX files in path) | synthetic.
    c.data = ml_collections.ConfigDict(dict(
        source="tfds",       # synthetic | fashion_mnist | tfds | folder | prepared
        name="imagenet2012", split="train", data_dir="",
        path=FMNIST_DIR,     # Fashion-MNIST IDX folder, or the image folder's root (source 'folder')
        channels=3,          # 1: grayscale (colour becomes luminance) | 3: RGB (gray is repeated)
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        synthetic_size=1024,
        augment="mae",       # mae: random resized crop + flip | flip: centre crop + flip | none: centre crop
        crop_scale=(0.2, 1.0),  # area range of the random resized crop (MAE; torchvision's default is 0.08)
        workers=-1,          # decoding processes per host; -1: one per CPU core (at most 32); 0: in-process
        threads=2,           # threads per process reading and decoding
        prefetch=2,          # batches assembled on device ahead of the step
        decoder="grain",     # grain: decode on host CPUs | dali: NVIDIA DALI, on the GPU where there is one
        max_bad_fraction=0.001))  # undecodable records tolerated (skipped), as a fraction of the dataset

    # Evaluation on frozen features (mdistill/evaluate): the k-NN monitor during
    # pre-training and the standalone evaluators read these.
    c.eval = ml_collections.ConfigDict(dict(
        knn_every=0,         # run the k-NN monitor every this many steps; 0 = off
        knn_k=20,            # neighbours
        knn_temperature=0.07,  # votes weighted by exp(cosine / T), as in DINO
        knn_train_examples=10000,  # labelled memory bank; -1 = the whole split
        knn_test_examples=2000,    # queries; -1 = the whole split
        train_split="train",
        test_split="validation",   # ImageNet's; Fashion-MNIST's is 'test'
        pool="avg",          # avg: mean of patch tokens after the final norm | cls
        batch_size=256))     # feature-extraction batch, global

    c.log_every = 50
    c.checkpoint_every = 1000
    c.visualize_every = 1000  # steps between reconstruction grids in <workdir>/visualizations; also
    #                           drawn at the last step (0: never). Smoke configs: at the end only
    c.keep_checkpoints = 3   # the latest K are kept ...
    c.best_metric = ""       # ... plus the best by this logged metric ('loss', 'max:knn_top1')
    return c


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


def _objectives() -> dict:
    from mdistill.objectives import OBJECTIVES  # imported here: configs load this file before JAX is needed

    return OBJECTIVES


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Same method, tiny models, synthetic 32px data, a few dozen steps: seconds on a CPU."""
    c.image_size = 32
    c.student.update(variant="mu/4", decoder_width=64, decoder_depth=1, decoder_heads=4)
    c.teacher.update(variant="xs/4", checkpoint="", dtype="float32")
    for objective in _objectives().values():
        if objective.config_key in c:
            objective.smoke(c)
    c.data.update(source="synthetic", channels=3, synthetic_size=512,
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment="none", workers=0)
    if "size" in c.data:  # a published dataset size: synthetic data has its own
        c.data.size = 0
    if "num_sample" in c.data:  # repeated sampling reads video files; synthetic clips are arrays
        c.data.num_sample = 1
    if c.get("num_frames", 1) > 1:  # clips of 4 frames: 2 token steps of 2-frame tubelets
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
