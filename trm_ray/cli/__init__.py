"""The `trm-ray` command line, installed as the module `trm_ray.cli`. Thin: parse, load config, call trm_ray."""

# --address of the commands that start or join Ray (trm_ray.cluster.cluster_address decides).
CLUSTER_ADDRESS_HELP = ("Ray cluster address (default: RAY_ADDRESS, else the cluster whose head runs on this "
                        "machine, else a new local Ray instance).")


def one_line(message: str) -> str:
    """An error message folded onto one line (the CLI's errors are one line each)."""
    return " ".join(message.split())


def checkpoint_of_run(checkpoint: str, action: str) -> tuple[str, str]:
    """A run folder (what `trm-ray train` prints as `run folder:`) stands for its best
    checkpoint, else its last one: (that checkpoint, "best" or "last"); anything else is returned
    as given, with "". `action` names what the command does, for the error of a run folder
    without a checkpoint ("evaluate it", "generate")."""
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.hub import is_hub_path
    from trm_ray.run_folder import run_started, summarize

    if is_hub_path(checkpoint):  # never a run folder; asking the Hub whether it is would fail offline
        return checkpoint, ""
    if not run_started(checkpoint.rstrip("/")):
        return checkpoint, ""
    run = summarize(checkpoint.rstrip("/"))
    chosen = run.best_checkpoint or run.last_checkpoint
    if chosen is None:
        raise CheckpointError(f"run folder {checkpoint!r} has no checkpoint yet: {action} after its first "
                              f"evaluation interval, or pass a checkpoint folder")
    return chosen, "best" if run.best_checkpoint else "last"
