"""resources.gpus_per_trial takes effect only where GPUs exist: on a local Ray without GPUs a GPU-sized space's
trials ask for CPUs only, with one notice."""
from __future__ import annotations

import pytest

from gce_search.search.driver import trial_resources
from gce_search.spaces.loading import load_spec


@pytest.fixture()
def ray_without_gpus():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_a_gpu_request_is_dropped_with_one_notice_where_no_gpu_exists(ray_without_gpus, capsys):
    spec = load_spec("fashion_mnist")
    assert spec.resources.gpus_per_trial == 0.25
    assert trial_resources(spec) == {"CPU": 2.0}
    assert trial_resources(spec) == {"CPU": 2.0}
    out = capsys.readouterr().out
    assert out.count("gce-search: no GPU in this cluster: resources.gpus_per_trial 0.25 ignored") == 1, out
    assert "fashion_mnist_cpu" in out
    # a trial that needs a GPU keeps asking for it (and check_resources then refuses the run before it starts)
    cuda = load_spec("fashion_mnist", ["train.device=cuda"])
    assert trial_resources(cuda) == {"CPU": 2.0, "GPU": 0.25}


def test_without_ray_the_request_is_as_written():
    assert trial_resources(load_spec("fashion_mnist")) == {"CPU": 2.0, "GPU": 0.25}
