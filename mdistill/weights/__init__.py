"""Weights: everything that reads or writes parameters.

    loader.py      the one way from a path (workdir, step, converted release, .pth, .safetensors)
                   to checked, placed encoder parameters: load, load_encoder, architecture
    init.py        a run's starting weights: the student's config.student.init, the teacher
    checkpoint.py  Orbax checkpoints: manager, save / restore, integrity, the workdir lock
    state_dict.py  PyTorch state dict files and what their tensors say (architecture, layout)
    convert.py     python -m mdistill.weights.convert: releases in, timm / fine-tuning state dicts out
    pretrained.py  mdistill.load_pretrained(path): encode / reconstruct with a pretrained MAE

The tensor names of the PyTorch releases are the models' own: mdistill.models.names.
"""
