"""Shared test settings. Ray tests start their own local Ray (one per module) and stop it."""

import os

# Ray Train's report() blocks for one controller poll: 2 s by default, 0.1 s in tests.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
# No W&B server in tests: never try the network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    """A real S3-protocol server (tests/s3_server.py) for the module, with one bucket `trm`.

    Its endpoint and credentials are exported the way users configure S3 (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, ...), before any Ray the module starts, so pyarrow, Ray and Ray's workers
    all find it; restored and the server stopped (by its own pid) after the module."""
    from s3_server import S3Server

    server = S3Server.start()
    saved = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    try:
        server.create_bucket("trm")
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray (2 CPUs) for the module; a module that needs more (an S3 server's variables
    set first, say) defines its own."""
    import ray

    from trm_ray.cluster import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cpus2():
    """A bare local Ray (2 CPUs) for the module's Ray Data builds, progress bars off."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
