"""Fine-tuning a video ViT (an AMD or VideoMAE student) as AMD's release does it: `variant=S/16`
or `B/16` (default), `dataset=k400` (Kinetics-400, default) or `ssv2` (Something-Something
V2); `smoke` fine-tunes `mu/4` from scratch on synthetic 4-frame clips in seconds.

Sources, in github.com/MCG-NJU/AMD: scripts/finetune/{dist,slurm}_train/vit{s,b}_{k400,ssv2}_ft.sh
(the script), run_class_finetuning.py (its defaults, where the script passes nothing) and
dataset/build.py, dataset/datasets.py (what each dataset reads):

| setting | S k400 | B k400 | S ssv2 | B ssv2 | from |
|---|---|---|---|---|---|
| epochs (warm-up 5) | 150 | 90 | 40 | 30 | script `--epochs`; warm-up: default |
| GPUs x videos | 32 x 16 | 32 x 16 | 16 x 16 | 16 x 16 | script (N_NODES x 8 / GPUS, `--batch_size 16`) |
| clips per step | 1024 | 1024 | 512 | 512 | x `--num_sample 2` (repeated sampling) |
| release lr (per 256 videos) | 1e-3 | 7e-4 | 1e-3 | 5e-4 | script `--lr` |
| classes | 400 | 400 | 174 | 174 | script `--nb_classes` |
| test views | 5 x 3 | 5 x 3 | 2 x 3 | 2 x 3 | script `--test_num_segment` x `--test_num_crop` |

All four: 16 frames (`--num_frames`), tubelets of 2 and 224 px crops (`--input_size`,
`--short_side_size 224`), AdamW (0.9, 0.999) (`--opt_betas`), eps 1e-8, weight decay 0.05, no
gradient clipping; defaults: layer decay 0.75, drop path 0.1, min lr 1e-6 and warm-up lr
1e-8 (both scaled by batch / 256 as the lr), mean pooling + fc_norm, mixup 0.8 / cutmix 1.0
(probability 1, switch 0.5), label smoothing 0.1, random erasing 0.25 (one box through the
clip). Kinetics: 16 frames at sampling rate 4 (slurm script `--sampling_rate 4`, the
default) over a random window (VideoClsDataset: `data.temporal=finetune`), flip; the test
takes 5 windows. SSv2 (SSRawFrameClsDataset): one frame from each of 16 equal segments
(`data.temporal=segments`, no sampling rate), no flip (`random_horizontal_flip=False if
data_set == 'SSV2'`: left and right are labels there), the test takes the segments' starts
and middles.

How the numbers map here. mdistill's batch counts clips and its lr is blr x clips / 256;
the release scales by videos (`total_batch_size` leaves num_sample out) and plans epochs by
videos (as mdistill, records_per_step). So blr here is the release's lr / 2 and the peak lr
the release's (e.g. B k400: 7e-4 x 512 / 256 = 1.4e-3). min_lr is absolute here:
1e-6 x videos / 256.

Deviations:
- No RandAugment: the release applies rand-m7-n4-mstd0.5-inc1 (`--aa` default) to every
  frame of a clip alike; mdistill's RandAugment is per image and refused on clips. The
  fine-tuning is less regularised than the release's; expect it to fit the training set
  faster and to score somewhat below the paper's numbers, most over Kinetics' 90-150 epochs.
- The training crop is VideoMAE's pre-training multi-scale crop (mdistill.data.video;
  scales 1-0.66 of the short side), not the release's random resized crop of 8-100% of the
  area and aspect 3/4-4/3 after a short-side jitter: a milder crop, less regularisation again.
- Warm-up starts from 0, not 1e-8 x videos / 256; the head is initialised as MAE's (std 2e-5),
  not VideoMAE's (`--init_scale 0.001` on a truncated normal of 0.02).
- SSv2 is read from video files (VideoMAE's ssv2.py reads the .webm files; AMD's release
  reads extracted frames): the same frame indices.
- The GPU count of ViT-S on Kinetics differs between the release's scripts (dist_train: 4
  nodes x 8, slurm_train: 16); the 32 of dist_train is VideoMAE's too (scripts/kinetics ViT-S):
  with 16 GPUs, --config.batch_size=512 (the lr follows, as in the release).
- The test and train splits are folders (`data.source=video_folder`, <path>/{train,val}/<class>/):
  a VideoMAE list file (video_list) is one list for every split.

  python -m mdistill.evaluate.finetune --config=configs/finetune_video.py:variant=B/16,dataset=k400 \
      --config.pretrained=runs/amd_video_vitb --config.data.path=k400 --workdir=runs/amd_video_vitb/ft_k400
  python -m mdistill.evaluate.finetune --config=configs/finetune_video.py:smoke --workdir=/tmp/ft_video_smoke
"""

from mdistill.config import apply_smoke, base_config, parse_arg
from mdistill.evaluate.finetune import finetune_config

NUM_SAMPLE = 2  # clips cropped from each video read (--num_sample 2 in every script)
VIDEOS_PER_GPU = 16  # --batch_size 16 in every script
RELEASE = {  # (variant, dataset) -> (epochs, lr per 256 videos, GPUs)
    ("S/16", "k400"): (150, 1e-3, 32),
    ("B/16", "k400"): (90, 7e-4, 32),
    ("S/16", "ssv2"): (40, 1e-3, 16),
    ("B/16", "ssv2"): (30, 5e-4, 16),
}
DATASETS = {  # name -> (classes, training frame sampling, flip, test segments)
    "k400": (400, "finetune", True, 5),
    "ssv2": (174, "segments", False, 2),
}


def get_config(arg=None):
    args = parse_arg(arg, variant="B/16", dataset="k400")
    variant, dataset = args["variant"], args["dataset"]
    if (variant, dataset) not in RELEASE:
        raise ValueError(f"config argument variant={variant!r}, dataset={dataset!r}: expected variant in "
                         f"{sorted({v for v, _ in RELEASE})} and dataset in {sorted(DATASETS)}")
    epochs, release_lr, gpus = RELEASE[(variant, dataset)]
    classes, temporal, flip, segments = DATASETS[dataset]
    videos = gpus * VIDEOS_PER_GPU
    c = finetune_config(base_config())
    c.student.variant = variant
    c.num_frames, c.tubelet_size, c.image_size = 16, 2, 224
    c.num_classes = classes  # a dataset with another class count is refused (mdistill.resolve)
    c.batch_size = videos * NUM_SAMPLE  # clips
    c.num_epochs, c.warmup_epochs = float(epochs), 5.0
    # the release's lr x videos / 256 as blr x clips / 256; its min lr scaled alike
    c.optim.update(blr=release_lr / NUM_SAMPLE, min_lr=1e-6 * videos / 256, b1=0.9, b2=0.999, weight_decay=0.05)
    c.finetune.update(layer_decay=0.75, drop_path=0.1, flip=flip, randaug_layers=0, reprob=0.25, mixup=0.8,
                      cutmix=1.0, mixup_switch_prob=0.5, smoothing=0.1)
    c.data.update(source="video_folder", path="", root="", sampling_rate=4, flip=False, size=0, temporal=temporal,
                  num_sample=NUM_SAMPLE, test_num_segment=segments, test_num_crop=3, augment="none")
    # test videos per batch, each of segments x 3 views (a multiple of the device count, as every batch)
    c.eval.update(pool="avg", train_split="train", test_split="validation", batch_size=256)
    c.log_every, c.eval_every, c.checkpoint_every = 50, 1000, 1000
    if args["smoke"]:
        c = apply_smoke(c)  # 4 synthetic frames of 32 px, mu/4 from scratch
        c.update(num_classes=0, batch_size=32, log_every=10, eval_every=30, checkpoint_every=30)
        c.total_steps, c.warmup_steps = 30, 3
        c.optim.update(lr=3e-3, min_lr=0.0)
        # a few dozen steps from scratch: no regularisation, or nothing is learnt; no flip
        # either: a grating's direction of drift is half its class
        c.finetune.update(layer_decay=1.0, drop_path=0.0, reprob=0.0, mixup=0.0, cutmix=0.0, flip=False)
        c.data.update(synthetic_size=256, test_num_segment=1, test_num_crop=1)
        c.eval.update(batch_size=64)
    return c
