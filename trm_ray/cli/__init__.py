"""The `trm-ray` command line, installed as the module `trm_ray.cli`. Thin: parse, load config, call trm_ray."""


def one_line(message: str) -> str:
    """An error message folded onto one line (the CLI's errors are one line each)."""
    return " ".join(message.split())
