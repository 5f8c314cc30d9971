"""Every config field, declared once: its dotted name, its default (whose type is the field's
type), what it means and whether it may change at a resume (mdistill/config/field.py).
base_config() builds the config of every run from this table and each method's own section
(config.distill, config.amd, ...), whose fields its objective declares alike
(Objective.fields, mdistill/objectives), so every config holds every field of every method.

Block indices are 0-based outputs of blocks ("block 8" is the output of the ninth block);
papers that count from 1 name block i+1.
"""

from __future__ import annotations

import ml_collections

from mdistill.config.field import RESUMABLE, Field
from mdistill.data.fashion_mnist import DEFAULT_DIR as FMNIST_DIR

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


FIELDS: tuple[Field, ...] = tuple(Field(*f) for f in (
    # ---- the run ----
    ("method", "mae", "the objective: one of mdistill.objectives.OBJECTIVES"),
    ("seed", 0, "seed of the init, the masks and the data order, in [0, 2**31)"),
    ("dtype", "float32", "compute dtype of the student (float32 | bfloat16); parameters stay float32"),
    ("remat", "none", "rematerialise the student's blocks in the backward pass: none | full | dots (keep matmuls)"),
    ("image_size", 224, "input side in pixels, a multiple of the student's patch size"),
    ("num_frames", 1, "frames per sample: 1 images; > 1 clips, every ViT a VideoMAE video ViT, every mask a tube"),
    ("tubelet_size", 2, "frames per tubelet of a video ViT (num_frames > 1); divides num_frames"),
    ("mask_ratio", 0.75, "fraction of the patches the student does not see"),
    ("norm_pix_loss", True, "reconstruct each patch's pixels normalised by their own mean and variance (MAE)"),

    # ---- the student ----
    ("student.variant", "B/16", "the student ViT: <size>/<patch>, a mdistill.models.vit.SIZES entry"),
    ("student.decoder_width", 512, "MAE decoder width, divisible by 4 and decoder_heads"),
    ("student.decoder_depth", 8, "MAE decoder blocks"),
    ("student.decoder_heads", 16, "MAE decoder attention heads"),
    ("student.init", "", "start from these weights (a teacher.checkpoint path form) instead of a random init",
     RESUMABLE),
    ("student.init_ignore", "", "comma-separated key prefixes of student.init's tensors to leave out", RESUMABLE),

    # ---- the teacher (methods that distil) ----
    ("teacher.variant", "L/16", "the teacher ViT; follows teacher.checkpoint's architecture"),
    ("teacher.checkpoint", "", "mdistill workdir, checkpoint dir or converted release; empty: random (smoke only)",
     RESUMABLE),
    ("teacher.dtype", "float32", "compute and storage dtype of the frozen teacher"),
    ("teacher.allow_change", False, "resume a distillation with other teacher weights than it was distilled from",
     RESUMABLE),

    # ---- masks (mdistill/masking.py) ----
    ("masking.kind", "random", "patch order the masks cut: random (MAE) | block (BEiT, SimMIM) | colored_noise"),
    ("masking.block_min_patches", 16, "block: smallest area of a BEiT rectangle, in patches"),
    ("masking.block_max_patches", 75, "block: largest area of a BEiT rectangle, in patches"),
    ("masking.block_aspect", 0.3, "block: aspect ratios drawn in [block_aspect, 1 / block_aspect]"),
    ("masking.block_square", 0, "block: > 0 SimMIM's squares of this side, in patches; 0 BEiT's rectangles"),
    ("masking.noise_color", "green", "colored_noise: the noise's filter, red | blue | green | purple"),
    ("masking.noise_sigma", 1.0, "colored_noise: the filters' scale, in patches"),

    # ---- the schedule and the devices ----
    ("batch_size", 4096, "global batch over all devices and accumulation steps (clips for video)"),
    # how the devices are laid out, not what they compute: RESUMABLE
    ("mesh.data", -1, "devices on the mesh's 'data' axis (the batch); -1 the remaining ones", RESUMABLE),
    ("mesh.fsdp", 1, "devices on the 'fsdp' axis: parameters, optimizer state and teacher split; -1 the rest",
     RESUMABLE),
    ("num_epochs", 800.0, "training length in passes over the data (when total_steps < 0)", RESUMABLE),
    ("warmup_epochs", 40.0, "linear warm-up length in epochs (when warmup_steps < 0)"),
    ("total_steps", -1, ">= 0: training length in steps, overriding num_epochs", RESUMABLE),
    ("warmup_steps", -1, ">= 0: warm-up length in steps, overriding warmup_epochs"),
    ("optim.blr", 1.5e-4, "base learning rate: peak lr = blr * batch_size / 256"),
    ("optim.lr", -1.0, "> 0 sets the peak learning rate directly; -1 derives it from blr"),
    ("optim.min_lr", 0.0, "the cosine schedule's final learning rate"),
    ("optim.b1", 0.9, "AdamW's first-moment decay"),
    ("optim.b2", 0.95, "AdamW's second-moment decay"),
    ("optim.weight_decay", 0.05, "AdamW's decoupled weight decay (not on biases, norms, tokens)"),
    ("optim.grad_clip", 0.0, "global-norm gradient clipping; 0 disables"),
    ("optim.accum_steps", 1, "micro-batches per step (gradient accumulation)"),
    ("optim.layout", "tree", "AdamW's moments per parameter (tree) | raveled into one vector, one kernel (flat)"),
    ("optim.mu_dtype", "float32", "AdamW's first moment: float32 | bfloat16 (big_vision's; half the memory)"),

    # ---- the input pipeline (mdistill/data) ----
    ("data.source", "tfds", "synthetic | fashion_mnist | tfds | folder | prepared | video_folder | video_list"),
    ("data.name", "imagenet2012", "tfds: the dataset's name"),
    ("data.split", "train", "the training split"),
    ("data.data_dir", "", "tfds: where the prepared ArrayRecord dataset lies; empty: ~/tensorflow_datasets", RESUMABLE),
    ("data.video_key", "video", "tfds with num_frames > 1: the dataset's Video feature clips are sampled from"),
    ("data.path", FMNIST_DIR, "Fashion-MNIST's IDX folder, an image or video folder's root, or a video list file",
     RESUMABLE),
    ("data.root", "", "video_list: folder the list's relative paths start from; empty: the list's own"),
    ("data.channels", 3, "1: grayscale (colour becomes luminance) | 3: RGB (gray is repeated)"),
    ("data.mean", IMAGENET_MEAN, "per-channel mean that normalises the uint8 inputs on device"),
    ("data.std", IMAGENET_STD, "per-channel standard deviation that normalises the inputs on device"),
    ("data.synthetic_size", 1024, "synthetic: number of examples"),
    ("data.size", 0, "> 0: the published training-set size the epochs are planned with; 0: the data's count"),
    ("data.augment", "mae", "images: mae (random resized crop + flip) | flip (centre crop + flip) | none"),
    ("data.crop_scale", (0.2, 1.0), "area range of the random resized crop"),
    ("data.sampling_rate", 4, "video: every this many frames a clip's frames are taken"),
    ("data.flip", False, "video: flip training clips at random"),
    ("data.num_sample", 1, "video: clips cropped from each video read (repeated sampling); batch counts clips"),
    ("data.temporal", "pretrain", "video: training frame sampling, pretrain (VideoMAE) | finetune | segments"),
    ("data.test_num_segment", 1, "video fine-tuning: temporal views of each test video"),
    ("data.test_num_crop", 1, "video fine-tuning: spatial crops of each test view"),
    # how the input pipeline runs, not what it yields: RESUMABLE
    ("data.workers", -1, "decoding processes per host; -1 one per CPU core (at most 32); 0 in-process", RESUMABLE),
    ("data.threads", 2, "threads per process reading and decoding", RESUMABLE),
    ("data.prefetch", 2, "batches assembled on device ahead of the step", RESUMABLE),
    ("data.decoder", "grain", "grain: decode on the host's CPUs | dali: NVIDIA DALI, on the GPU where there is one",
     RESUMABLE),
    ("data.max_bad_fraction", 0.001, "undecodable records skipped, at most this fraction of the dataset", RESUMABLE),

    # ---- evaluation on frozen features (mdistill/evaluate) ----
    ("eval.knn_every", 0, "run the k-NN monitor every this many steps during pre-training; 0 off", RESUMABLE),
    ("eval.knn_k", 20, "k-NN: neighbours", RESUMABLE),
    ("eval.knn_temperature", 0.07, "k-NN: votes weighted by exp(cosine / T), as in DINO", RESUMABLE),
    ("eval.knn_train_examples", 10000, "k-NN: the labelled memory bank's size; -1 the whole split", RESUMABLE),
    ("eval.knn_test_examples", 2000, "k-NN: queries; -1 the whole split", RESUMABLE),
    ("eval.train_split", "train", "the labelled split evaluations train on", RESUMABLE),
    ("eval.test_split", "validation", "the split evaluations report on (Fashion-MNIST's: test)", RESUMABLE),
    ("eval.pool", "avg", "feature: avg (mean of the patch tokens) | cls (the cls token)", RESUMABLE),
    ("eval.batch_size", 256, "feature-extraction batch, global", RESUMABLE),
    ("eval.knn_pool", "avg", "linear probe with knn: pooling of the k-NN's features", RESUMABLE),

    # ---- logging and checkpoints ----
    ("log_every", 50, "steps between logged lines", RESUMABLE),
    ("checkpoint_every", 1000, "steps between checkpoints", RESUMABLE),
    ("visualize_every", 1000, "steps between reconstruction grids in <workdir>/visualizations, and the last; 0 never",
     RESUMABLE),
    ("keep_checkpoints", 3, "the latest checkpoints kept", RESUMABLE),
    ("best_metric", "", "also keep the best checkpoint by this logged metric: '', 'loss', 'max:knn_top1'", RESUMABLE),

    # ---- the linear probe and fine-tuning (mdistill/evaluate) ----
    ("pretrained", "", "the evaluated encoder: mdistill workdir, checkpoint or converted release; empty random"),
    ("num_classes", 0, "classes of the classifier; 0 the data's count"),
    ("train_examples", -1, "labelled training examples used; -1 the whole split"),
    ("test_examples", -1, "test examples used; -1 the whole split"),
    ("eval_every", 1000, "fine-tuning: steps between test evaluations, and at the end"),
    ("knn", False, "linear probe: also k-NN on the same features (eval.knn_k, eval.knn_pool)"),
    ("baselines", False, "linear probe: also raw pixels and a random encoder, evaluated alike"),
    ("finetune.layer_decay", 0.65, "lr of block i (0-based) scaled by decay^(depth - i); head and fc_norm by 1"),
    ("finetune.drop_path", 0.1, "drop-path rate at the last block, linear from 0 at the first"),
    ("finetune.flip", False, "random horizontal flip on device (data.augment='mae' flips on the host)"),
    ("finetune.randaug_layers", 2, "RandAugment operations per image (timm's rand-m9-mstd0.5-inc1); 0 off"),
    ("finetune.randaug_magnitude", 9.0, "RandAugment's magnitude"),
    ("finetune.randaug_std", 0.5, "RandAugment's magnitude noise"),
    ("finetune.reprob", 0.25, "random-erasing probability per image"),
    ("finetune.mixup", 0.8, "mixup's Beta alpha; 0 disables"),
    ("finetune.cutmix", 1.0, "cutmix's Beta alpha; 0 disables"),
    ("finetune.mixup_switch_prob", 0.5, "probability of cutmix instead of mixup when both are on"),
    ("finetune.smoothing", 0.1, "label smoothing"),
))

BY_NAME = {f.name: f for f in FIELDS}


def method_fields() -> tuple[Field, ...]:
    """The fields of every method section, named config.<config_key>.<field>; a section shared
    by several methods is the first registered's, as in base_config()."""
    out, keys = [], {f.name.split(".")[0] for f in FIELDS}
    for objective in objectives().values():
        if objective.config_key and objective.config_key not in keys:
            keys.add(objective.config_key)
            out += [f._replace(name=f"{objective.config_key}.{f.name}") for f in objective.fields]
    return tuple(out)


def all_fields() -> tuple[Field, ...]:
    """Every field of base_config(): the shared ones, then the method sections'."""
    return FIELDS + method_fields()


def meaning(field: str) -> str:
    """The one-line meaning of a dotted field, a method section's included ('' if undeclared)."""
    found = BY_NAME.get(field) or next((f for f in method_fields() if f.name == field), None)
    return found.meaning if found else ""


def resumable() -> frozenset[str]:
    """The fields that may differ between a run and its resumption (declared RESUMABLE)."""
    return frozenset(f.name for f in all_fields() if f.resumable)


def base_config() -> ml_collections.ConfigDict:
    """Every declared field at its default, each method's section from its objective; locked:
    setting or reading a field that is not declared raises, naming it."""
    c = ml_collections.ConfigDict()
    for f in FIELDS:
        *parents, leaf = f.name.split(".")
        node = c
        for name in parents:
            if name not in node:
                node[name] = ml_collections.ConfigDict()
            node = node[name]
        node[leaf] = f.default
    for objective in objectives().values():
        if objective.config_key and objective.config_key not in c:
            c[objective.config_key] = objective.defaults()
    c.lock()
    return c


def section_keys() -> set[str]:
    """The method sections (config.distill, config.amd, ...): declared by their objectives."""
    return {o.config_key for o in objectives().values() if o.config_key}


def objectives() -> dict:
    from mdistill.objectives import OBJECTIVES  # imported here: configs load this file before JAX is needed

    return OBJECTIVES
