"""Data parallelism is exact: N workers with batch B equal 1 worker with batch N x B, on every backend,
and every backend trains the real models end to end with only the chief writing outputs."""
import json

import numpy as np
import pytest

from conftest import run_hpctrain, write_job

pytestmark = pytest.mark.slow

BACKENDS = [("horovod", "mpirun"), ("horovod", "horovodrun"), ("multiworker", "local"), ("mirrored", None)]


def lenet_job(tmp_path, mnist_h5, name, batch):
    return write_job(
        tmp_path / f"{name}.toml", name=name,
        data={"path": str(mnist_h5), "split": "holdout"},
        model={"name": "lenet5"},
        train={"optimizer": "adam", "learning_rate": 1e-3, "batch_size": batch, "epochs": 2, "steps_per_epoch": 3,
               "validation": False, "deterministic": True, "seed": 7},
        distribute={"lr_scaling": "none"},
        output={"dir": str(tmp_path / name), "tensorboard": False})


def final_weights(run_dir):
    from hpctrain.evaluate.run import load_model

    return load_model(run_dir)[1].get_weights()


@pytest.fixture(scope="module")
def single_worker_run(tmp_path_factory, mnist_h5):
    tmp_path = tmp_path_factory.mktemp("single")
    run_hpctrain("train", lenet_job(tmp_path, mnist_h5, "one", 32), check=True)
    return tmp_path / "one"


@pytest.mark.parametrize("backend,launcher", BACKENDS)
def test_two_workers_equal_one_worker_with_double_batch(tmp_path, mnist_h5, single_worker_run, backend, launcher):
    job = lenet_job(tmp_path, mnist_h5, "two", 16)
    args = ["launch", "-n", 2, job, "--backend", backend] + (["--launcher", launcher] if launcher else [])
    run_hpctrain(*args, check=True)
    timing = json.loads((tmp_path / "two" / "timing.json").read_text())
    assert timing["world_size"] == 2 and timing["global_batch"] == 32 and timing["backend"] == backend
    one, two = final_weights(single_worker_run), final_weights(tmp_path / "two")
    initial = final_weights_of_fresh_model()
    assert any(not np.allclose(a, b) for a, b in zip(one, initial)), "training did not change the weights"
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def final_weights_of_fresh_model():
    from hpctrain import compat, models
    from hpctrain.spec import ModelSpec

    compat.keras().utils.set_random_seed(7)
    return models.build(ModelSpec(name="lenet5"), (28, 28, 1), 10).get_weights()
