"""Official PyTorch checkpoints in, PyTorch state dicts out.

Import: the official MAE releases (mae_pretrain_vit_*.pth: encoder; mae_visualize_vit_*.pth:
encoder + decoder; state dict under 'model') and timm's MAE ViTs (vit_*_patch16_224.mae, as
.pth/.bin or .safetensors) become mdistill parameters {'encoder', 'decoder'?}.
Export: an mdistill encoder becomes the state dict of timm's vit_*_patch16_224 / the official
fine-tuning models_vit.VisionTransformer, which share parameter names. A pre-trained run
exports the tensors of the pre-training release (no head, no fc_norm) unless asked for a zero
head (--num_classes) or fc_norm (--global_pool); a fine-tuned run (mdistill.evaluate.finetune)
exports its trained classifier: its head of its classes, fc_norm if it pooled globally.

    python -m mdistill.weights.convert --input mae_pretrain_vit_large.pth --output runs/mae_vitl
    python -m mdistill.weights.convert --export --input runs/dmae_vitb --output student.pth [--global_pool]
    python -m mdistill.weights.convert --export --input runs/dmae_vitb --output model.safetensors

An export ending in .safetensors is written with the safetensors package's numpy API, a
flat state dict as timm's hub files (no PyTorch needed); any other name is a torch.save'd
{'model': state_dict} as the official releases. An existing file is replaced only with
--overwrite; the export is written beside it and renamed into place, so a failure (a full
disk) never leaves a truncated file or harms the one there.

The PyTorch names are mdistill.models.names', the files mdistill.weights.state_dict's;
reading and checking weights is mdistill.weights.loader's. Position embeddings are not
parameters in mdistill (fixed 2-D sin-cos at the run's grid), so an imported pos_embed is
checked against that table instead of copied, and an exported one is the table at the
export's image size.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags

from mdistill.models.names import flax_to_torch, to_torch_value
from mdistill.weights.state_dict import Architecture, flatten as _flatten, interpolate_posemb, sincos_table


def convert_to_orbax(src: str, out: str, variant: str | None = None, ignore=(), decoder_heads=None) -> Architecture:
    """Write a .pth/.safetensors checkpoint as an Orbax checkpoint (step 0) in mdistill's
    layout {'mae': {'encoder', 'decoder'?}}: it loads as config.teacher.checkpoint and with
    checkpoint.load_params / load_pretrained."""
    import orbax.checkpoint as ocp

    from mdistill.weights import checkpoint, loader

    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint file {src!r} does not exist (import reads a .pth/.bin/.safetensors file)")
    loaded = loader.load(src, variant, ignore=ignore, decoder_heads=decoder_heads)
    params, arch = loaded.params, loaded.arch
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"output {out!r} already exists and is not an empty directory: remove it or choose "
                         "another --output (a conversion never writes over files)")
    mngr = checkpoint.manager(os.path.abspath(out))
    meta = {"step": 0, "converted_from": os.path.abspath(src), "architecture": arch.to_json()}
    # no optimizer state to save: a converted checkpoint is weights only
    mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave({"mae": params}),
                                         meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()
    return arch


# ---- export ---------------------------------------------------------------------------
POSEMB_MODES = ("interpolate", "sincos")


def export_state_dict(encoder: dict, image_size: int, global_pool: bool = False, num_classes: int = 0,
                      trained_image_size: int | None = None, posemb: str = "interpolate",
                      classifier: dict | None = None) -> dict[str, np.ndarray]:
    """The state dict of timm's VisionTransformer (global_pool 'token' or 'avg') and of the
    official models_vit.VisionTransformer (global_pool False/True) for this encoder.

    pos_embed is the sin-cos table of the trained grid (trained_image_size, default
    image_size). For another image_size it is, with posemb='interpolate', that table
    resized bicubically as the official fine-tuning does (exporting at the trained size and
    letting main_finetune.py interpolate gives the same), or with posemb='sincos' the
    sin-cos table of the new grid.
    With global pooling the final norm becomes fc_norm, freshly initialised (ones, zeros) as
    the official fine-tuning starts it, since it normalises the pooled feature, not tokens.
    The classifier head.* is zeros ([num_classes, width]); num_classes=0 (the default) writes
    none, the layout of the MAE pre-training release. `classifier`: a fine-tuned run's trained
    {'fc_norm'?, 'head'} params, written instead of fresh ones.
    """
    if posemb not in POSEMB_MODES:
        raise ValueError(f"posemb {posemb!r}: expected one of {POSEMB_MODES}")
    sd = {flax_to_torch("encoder", path): np.array(to_torch_value(np.asarray(v, np.float32)), order="C")
          for path, v in _flatten(encoder).items()}
    width, p = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    trained_image_size = trained_image_size or image_size
    for size in {image_size, trained_image_size}:
        if size % p:
            raise ValueError(f"image size {size} is not a multiple of the patch size {p}")
    grid, trained = image_size // p, trained_image_size // p
    if posemb == "sincos" or grid == trained:
        sd["pos_embed"] = sincos_table(width, grid)
    else:
        sd["pos_embed"] = interpolate_posemb(sincos_table(width, trained), grid)
    return _with_classifier(sd, width, global_pool, num_classes, classifier)


def _with_classifier(sd: dict, width: int, global_pool: bool, num_classes: int, classifier: dict | None = None
                     ) -> dict:
    """The fine-tuning models' classifier: with global pooling fc_norm replaces the final norm,
    which normalised tokens, not the pooled feature (a globally pooled fine-tuned encoder has
    none); head.* of num_classes rows (0: none). Both fresh (ones, zeros; zeros) as the
    official fine-tuning starts them, or the trained ones of `classifier`."""
    classifier = classifier or {}
    if global_pool:
        sd.pop("norm.weight", None), sd.pop("norm.bias", None)
        trained = classifier.get("fc_norm")
        sd["fc_norm.weight"] = _f32(trained["scale"]) if trained else np.ones(width, np.float32)
        sd["fc_norm.bias"] = _f32(trained["bias"]) if trained else np.zeros(width, np.float32)
    if "head" in classifier:
        head = classifier["head"]
        sd["head.weight"], sd["head.bias"] = np.ascontiguousarray(_f32(head["kernel"]).T), _f32(head["bias"])
    elif num_classes:
        sd["head.weight"] = np.zeros((num_classes, width), np.float32)
        sd["head.bias"] = np.zeros(num_classes, np.float32)
    return sd


def _f32(x) -> np.ndarray:
    return np.array(x, np.float32, order="C")  # a writable copy (device_get's arrays are read-only)


def classifier_settings(source: str, classifier: dict, global_pool: bool | None, num_classes: int | None
                        ) -> tuple[bool, int]:
    """(global_pool, num_classes) of an export. A fine-tuned run's come from its checkpoint (the
    head's rows; fc_norm means it pooled globally, eval.pool='avg'): a flag may repeat them
    and is refused if it disagrees. Otherwise the flags', by default neither: a pre-trained
    run exports as the pre-training release, without head or fc_norm."""
    if not classifier:
        return bool(global_pool), int(num_classes or 0)
    rows, pooled = int(np.shape(classifier["head"]["bias"])[0]), "fc_norm" in classifier
    if num_classes is not None and num_classes != rows:
        raise ValueError(f"--num_classes {num_classes}: {source} is a fine-tuned run whose trained head has {rows} "
                         "classes, which the export writes; leave --num_classes out")
    if global_pool is not None and global_pool != pooled:
        raise ValueError(f"--{'' if global_pool else 'no'}global_pool: {source} was fine-tuned on "
                         f"{'the global average of the patch tokens + fc_norm' if pooled else 'the cls token'} "
                         f"(eval.pool={'avg' if pooled else 'cls'}), which the export keeps; leave the flag out")
    return pooled, rows


def export_video_state_dict(encoder: dict, global_pool: bool = False, num_classes: int = 0,
                            classifier: dict | None = None) -> dict[str, np.ndarray]:
    """The state dict of VideoMAE's fine-tuning model (modeling_finetune.VisionTransformer,
    as run_class_finetuning.py --finetune loads it) for a video encoder: patch_embed.proj a
    Conv3d, attn.q_bias / attn.v_bias, no pos_embed (its fixed 1-D table is rebuilt for any
    frame count and size). With global_pool (VideoMAE's default use_mean_pooling) the final
    norm becomes fc_norm; head.* is zeros of num_classes rows (0: none); both the trained
    ones of a fine-tuned run's `classifier` where given."""
    sd = {flax_to_torch("encoder", path): np.array(to_torch_value(np.asarray(v, np.float32)), order="C")
          for path, v in _flatten(encoder).items()}
    width = sd["patch_embed.proj.weight"].shape[0]
    return _with_classifier(sd, width, global_pool, num_classes, classifier)


def export_to_torch(src: str, out: str, image_size: int | None = None, global_pool: bool | None = None,
                    num_classes: int | None = None, posemb: str = "interpolate", overwrite: bool = False) -> dict:
    """Write the student encoder of an mdistill checkpoint, pos_embed for `image_size`
    (default: the run's; see export_state_dict): a .safetensors file holds the state dict
    itself (timm's hub layout; no PyTorch needed), any other name {'model': state_dict} (.pth).
    A fine-tuned run's trained classifier comes with it (see classifier_settings);
    global_pool / num_classes None: the checkpoint's (a pre-trained run: no fc_norm, no head).

    An existing `out` is refused unless `overwrite`; the place is checked writable before
    anything is read; the file is written beside `out` and renamed into place, so a failure
    (a full disk) leaves no partial file and an existing one untouched. Non-finite weights
    are refused, naming the tensor."""
    check_export_target(out, overwrite)
    import jax

    if out.endswith(".safetensors"):
        from safetensors.numpy import save_file
    else:
        import torch

    from mdistill.weights import checkpoint, loader

    loaded = loader.load(src, placement=jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0]), decoder=False)
    encoder, trained = loaded.encoder, _meta_image_size(loaded.meta)
    classifier = jax.device_get(loaded.classifier)
    global_pool, num_classes = classifier_settings(src, classifier, global_pool, num_classes)
    image_size = image_size or trained
    if not image_size:
        raise ValueError(f"{src}: no image size in the checkpoint's meta; pass --image_size")
    if loaded.arch.spec.layout.tubelet:
        sd = export_video_state_dict(jax.device_get(encoder), global_pool, num_classes, classifier)
    else:
        sd = export_state_dict(jax.device_get(encoder), image_size, global_pool, num_classes, trained, posemb,
                               classifier)
    bad = [k for k, v in sd.items() if not np.all(np.isfinite(v))]
    if bad:
        raise FloatingPointError(f"{src}: non-finite values in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; "
                                 f"nothing written to {out}")
    if out.endswith(".safetensors"):
        arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}
        write = lambda tmp: save_file(arrays, tmp, metadata={"format": "pt"})  # noqa: E731
    else:
        state = {"model": {k: torch.from_numpy(v) for k, v in sd.items()}}
        write = lambda tmp: torch.save(state, tmp)  # noqa: E731
    check_export_target(out, overwrite)  # again: another process may have written it meanwhile
    try:
        checkpoint.write_atomically(out, writer=write)
    except Exception as e:  # safetensors raises its own SafetensorError, torch a RuntimeError
        kept = "the existing file is untouched" if os.path.exists(out) else "no file was left"
        raise OSError(f"could not write {out} ({type(e).__name__}: {e}); {kept}") from e
    return sd


def check_export_target(out: str, overwrite: bool) -> None:
    """Before any work: `out` names a file that does not exist yet (or `overwrite`), in a
    folder that exists or can be made and takes files."""
    if os.path.isdir(out):  # checked first: torch.save would fail on it only after the reading
        raise ValueError(f"--output {out!r} is a folder: name the file to write, e.g. "
                         f"{os.path.join(out, 'student.pth')}")
    if os.path.lexists(out) and not overwrite:
        raise ValueError(f"--output {out!r} already exists: pass --overwrite to replace it, or choose another "
                         "--output (an export never writes over a file unless asked)")
    folder = os.path.dirname(os.path.abspath(out))
    probe = os.path.join(folder, f".{os.path.basename(out)}.write-test-{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"--output {out!r}: cannot write in {folder!r} ({type(e).__name__}: {e})") from e


def _meta_image_size(meta: dict) -> int | None:
    if "architecture" in meta:
        return meta["architecture"]["image_size"]
    if "config" in meta:
        from mdistill.config import upgrade

        return upgrade(meta["config"], "the checkpoint's config").image_size
    return None


# The command line, in absl flags as every mdistill entry point; held apart from absl's
# global FLAGS so that importing this module defines nothing there.
FLAGS = flags.FlagValues()
flags.DEFINE_string("input", None, "import: .pth/.bin/.safetensors; export: mdistill checkpoint", flag_values=FLAGS)
flags.DEFINE_string("output", None, "import: Orbax directory; export: .pth or .safetensors file",
                    flag_values=FLAGS)
flags.DEFINE_string("variant", None, "import: fail unless the checkpoint is this ViT, e.g. L/16 (sets heads)",
                    flag_values=FLAGS)
flags.DEFINE_integer("decoder_heads", None, "import: decoder heads (default width / 32)", flag_values=FLAGS)
flags.DEFINE_multi_string("ignore", [], "import: drop tensors whose names start so (repeatable)", flag_values=FLAGS)
flags.DEFINE_bool("export", False, "mdistill student -> PyTorch state dict", flag_values=FLAGS)
flags.DEFINE_integer("image_size", None, "export: image size of pos_embed (default: the run's)", flag_values=FLAGS)
flags.DEFINE_enum("posemb", "interpolate", POSEMB_MODES,
                  "export at another --image_size than the run's: resize the trained table bicubically as the "
                  "official fine-tuning does (interpolate), or recompute sin-cos (sincos)", flag_values=FLAGS)
flags.DEFINE_bool("global_pool", None, "export: fc_norm for average pooling (default: a fine-tuned run's own "
                 "pooling; none for a pre-trained run)", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "export: replace an existing --output file (refused otherwise)",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "export: zero head rows (default: a fine-tuned run's trained head; no "
                     "head for a pre-trained run)", flag_values=FLAGS)


def parse(argv: list[str]):
    """The flags of `argv` (without the program name), every other flag at its default."""
    FLAGS.unparse_flags()
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(f"python -m mdistill.weights.convert: {__doc__.split(chr(10) * 2)[0]}\n\n{FLAGS.get_help()}")
        sys.exit(0)
    try:
        FLAGS(["mdistill.weights.convert", *argv])
        for name in ("input", "output"):
            if FLAGS[name].value is None:
                raise flags.Error(f"--{name} is required")
    except flags.Error as e:
        sys.exit(f"error: {e}")
    return FLAGS


def main(argv=None) -> None:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    from mdistill.weights.checkpoint import CheckpointError

    try:
        if args.export:
            sd = export_to_torch(args.input, args.output, args.image_size, args.global_pool, args.num_classes,
                                 args.posemb, args.overwrite)
            table = (f"pos_embed {tuple(sd['pos_embed'].shape)}" if "pos_embed" in sd
                     else "no pos_embed (VideoMAE's fixed 1-D table)")
            head = f"head of {sd['head.weight'].shape[0]} classes" if "head.weight" in sd else "no head"
            norm = "fc_norm" if "fc_norm.weight" in sd else "norm"
            print(f"wrote {args.output}: {len(sd)} tensors, {table}, {norm}, {head}")
        else:
            arch = convert_to_orbax(args.input, args.output, args.variant, tuple(args.ignore), args.decoder_heads)
            print(f"wrote {args.output}: {arch.describe()}, {arch.spec.num_heads} heads, {arch.image_size}px")
    except (ValueError, OSError, ImportError, CheckpointError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
