"""Times the official DMAE release's training step (PyTorch) on this machine, for comparison
with benchmarks/step.py's DMAE step on the same models and batch.

The release's code is not part of this repository: point --repo at a checkout of
https://github.com/UCSC-VLAA/DMAE (measured at commit a0f4959). This script imports its
models_mae_distill.py, builds the student and teacher as its pretrain.sh does
(mae_vit_base_patch16_dec512d8b <- mae_vit_large_patch16_dec512d8b, student block 8 aligned
with teacher block 17, 'fc-1layer' projection 768 -> 1024, L1 feature loss, 'original_img'
pixel target, mask ratio 0.75), the optimizer as its main_distill.py does (AdamW, betas
0.9/0.95, weight decay 0.05 except biases and norms) and times the body of
engine_distill.train_one_epoch with accum_iter=1: the teacher's forward_encoder_customized
and forward_decoder under no_grad, the student's forward, the summed losses, backward, the
gradient norm its loss scaler computes, and the optimizer step. float32 on CPU (the
release's torch.cuda.amp.autocast does nothing there); on a GPU (--device=cuda) --amp turns
on the release's float16 autocast and gradient scaler. Random weights, one random batch.

  pip install timm==0.4.9   # a timm whose Block still takes qk_scale, as the release calls it
  python -m benchmarks.official_dmae --repo=/path/to/DMAE --batch=8 --steps=5
  python -m benchmarks.official_dmae --repo=/path/to/DMAE --device=cuda --amp --batch=256

One JSON line: step times, images/s, and the FLOPs of what the release computes per step
by benchmarks.flops' model (it runs all 24 teacher blocks and the teacher's decoder, whose
prediction the 'original_img' loss never uses) next to mdistill's for the same method.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags


def check_repo(repo: str) -> None:
    if not os.path.isfile(os.path.join(repo, "models_mae_distill.py")):
        sys.exit(f"--repo={repo!r}: no models_mae_distill.py there; expected a checkout of "
                 "https://github.com/UCSC-VLAA/DMAE")


def import_release(repo: str):
    # PyPI's torchvision for a CPU-only torch may not load; timm imports it only for its data
    # transforms, which this timing never calls: the tests' stand-in answers those imports
    from tests.real_timm import install_torchvision_stand_in

    stubbed = install_torchvision_stand_in()
    import numpy as np

    if not hasattr(np, "float"):  # the release's util/pos_embed.py uses np.float (gone since NumPy 1.24)
        np.float = float
    # the release is a folder of scripts, not a package: its modules import each other (util.pos_embed)
    # as top-level names, so its checkout goes on the import path, as its own scripts run
    sys.path.insert(0, repo)
    import models_mae_distill  # the release's module
    return models_mae_distill, stubbed


def release_flops(batch: int) -> tuple[float, float]:
    """(FLOPs of the release's step, FLOPs of mdistill's DMAE step), same models and batch."""
    from benchmarks import flops
    from benchmarks import step as step_bench
    from mdistill import masking
    from mdistill.models.vit import ViTSpec

    config = step_bench.load_config_file("dmae_vitb")
    config.batch_size = batch
    ours = flops.step_flops(config)
    student, teacher = ViTSpec.parse(config.student.variant), ViTSpec.parse(config.teacher.variant)
    num_patches = (config.image_size // student.patch_size) ** 2
    visible = masking.num_visible(num_patches, config.mask_ratio)
    channels = config.data.channels
    patch_dim = student.patch_size ** 2 * channels
    full_teacher = flops.encoder_flops(teacher, channels, visible)  # all its blocks
    teacher_decoder = flops.decoder_flops(teacher.width, 512, 8, num_patches, visible, patch_dim)
    release = ours["total"] - ours["teacher_forward"] + batch * (full_teacher + teacher_decoder)
    return release, ours["total"]


def define_flags() -> None:
    flags.DEFINE_string("repo", None, "checkout of UCSC-VLAA/DMAE", required=True)
    flags.DEFINE_integer("batch", 8, "images per step")
    flags.DEFINE_integer("steps", 5, "timed steps (the median is reported)")
    flags.DEFINE_integer("warmup", 2, "untimed steps first")
    flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: torch's default)")
    flags.DEFINE_string("out", "", "also append the JSON line to this file")
    flags.DEFINE_string("device", "cpu", "torch device: cpu, or cuda as the release trains")
    flags.DEFINE_bool("amp", False, "the release's mixed precision on cuda: torch.cuda.amp.autocast "
                      "(float16) around the forward passes and a GradScaler for the backward, as "
                      "engine_distill.py and util/misc.py's NativeScalerWithGradNormCount do")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS
    check_repo(args.repo)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models, stubbed = import_release(args.repo)
    import timm.optim.optim_factory as optim_factory

    torch.manual_seed(0)
    student = models.mae_vit_base_patch16_dec512d8b(
        norm_pix_loss=False, img_size=224, embedding_distillation_func="L1", aligned_blks_indices=[8],
        distillation_disentangled_target=None, student_reconstruction_target="original_img",
        aligned_feature_projection_mode="fc-1layer", aligned_feature_projection_dim=[768, 1024])
    teacher = models.mae_vit_large_patch16_dec512d8b(
        norm_pix_loss=False, img_size=224, embedding_distillation_func="L1", aligned_blks_indices=[17])
    if args.amp and args.device != "cuda":
        raise app.UsageError("--amp: the release's autocast is torch.cuda.amp; use it with --device=cuda",
                             exitcode=2)
    device = torch.device(args.device)
    student.to(device).train(True)
    teacher.to(device).eval()
    groups = optim_factory.add_weight_decay(student, 0.05)
    optimizer = torch.optim.AdamW(groups, lr=1.5e-4 * args.batch / 256, betas=(0.9, 0.95))
    # the release's loss scaler; with enabled=False its scale/unscale_/step are plain passes
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp)
    images = torch.randn(args.batch, 3, 224, 224, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=args.amp):
            with torch.no_grad():
                latents_teacher, mask, ids_restore, ids_keep = teacher.forward_encoder_customized(
                    images, 0.75)
                teacher_prediction = teacher.forward_decoder(latents_teacher[-1], ids_restore)
            loss, distill, _, _ = student(images, ids_keep, ids_restore, mask, teacher_prediction, None,
                                          latents_teacher)
            loss_value = loss.item()
            for value in distill.values():
                loss = loss + value
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads = [q.grad for q in student.parameters() if q.grad is not None]
        norm = torch.norm(torch.stack([torch.norm(g.detach(), 2.0) for g in grads]), 2.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()  # as the release's loop does after every step
        return loss_value, float(norm)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss, _ = step()
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    flops_release, flops_mdistill = release_flops(args.batch)
    record = dict(
        bench="official_dmae_step", torch=torch.__version__, device=str(device), amp=args.amp,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(), machine=platform.processor() or platform.machine(),
        glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""), torchvision_stubbed=stubbed,
        batch=args.batch, step_s_median=round(seconds, 4), step_s_all=[round(t, 4) for t in times],
        images_per_s=args.batch / seconds, loss=loss, release_flops=flops_release,
        release_flops_per_s=flops_release / seconds, mdistill_dmae_flops=flops_mdistill)
    line = json.dumps(record)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
