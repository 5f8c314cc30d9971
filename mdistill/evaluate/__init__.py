"""Downstream evaluation of a pre-trained encoder, following the MAE protocols:
knn.py (k-NN on frozen features, also a pre-training monitor), linprobe.py (linear probe)
and finetune.py (end-to-end fine-tuning). common.py holds what they share."""
