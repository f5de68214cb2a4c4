"""Training: the core step (step.py), the per-worker loop over torch.distributed (loop.py),
what runs it (session.py), rank 0's progress display (progress.py) and the Ray Train wrapper
(trainer.py). The run folder's format is trm_ray/run_folder.py; checkpoints, trm_ray/checkpoint.py.

    trm-ray train experiments/quickstart.yaml                    # the CLI
    from trm_ray.train.loop import train                         # one process, no Ray
    from trm_ray.train.session import LocalSession
    from trm_ray.train.trainer import check_inputs, fit          # TorchTrainer
"""
