"""The `trm-ray` command line, installed as the module `trm_ray.cli`. Thin: parse, load config, call trm_ray."""
