"""trm-ray: Tiny Recursive Model (TRM) experiments as a Ray workload.

Notebook API (no Ray needed):

    import trm_ray
    model = trm_ray.load_checkpoint("step_50000")          # reference or trm-ray checkpoint
    out = trm_ray.predict(model, {"inputs": x, "puzzle_identifiers": ids})
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import trm_ray` must stay cheap (the CLI imports it for --version).
    if name in ("load_checkpoint", "save_checkpoint"):
        from trm_ray import checkpoint

        return getattr(checkpoint, name)
    if name == "predict":
        from trm_ray.inference import predict

        return predict
    raise AttributeError(f"module 'trm_ray' has no attribute {name!r}")
