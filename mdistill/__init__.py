"""mdistill: masked-autoencoder knowledge distillation in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
    # load_pretrained pulls in JAX: import it on first use, not with the package
    if name == "load_pretrained":
        from mdistill.weights.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'mdistill' has no attribute {name!r}")
