"""Training: the core step (step.py), the per-worker loop over torch.distributed (loop.py)
and its Ray Train wrapper (trainer.py).

    trm-ray train experiments/quickstart.yaml                    # the CLI
    from trm_ray.train.loop import train, LocalSession           # one process, no Ray
    from trm_ray.train.trainer import check_inputs, fit          # TorchTrainer
"""
