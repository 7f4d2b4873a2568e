"""Gradient compression (distribute.compression): fp16 on the wire under Horovod changes the updates by
no more than fp16's rounding, is recorded for the scaling model, and is refused where a backend has none."""
import json

import numpy as np
import pytest

from test_distributed import final_weights

from conftest import assert_user_error, run_hpctrain, write_job

pytestmark = pytest.mark.slow


def job(tmp_path, mnist_h5, name, **distribute):
    return write_job(tmp_path / f"{name}.toml", name=name, data={"path": str(mnist_h5), "split": "holdout"},
                     model={"name": "lenet5"},
                     train={"batch_size": 16, "epochs": 1, "steps_per_epoch": 8, "deterministic": True, "seed": 3,
                            "validation": False, "breakdown_steps": 0},
                     distribute={"lr_scaling": "none", **distribute},
                     output={"dir": str(tmp_path / name), "tensorboard": False})


def test_fp16_compression_changes_the_weights_by_rounding_only(tmp_path, mnist_h5):
    for name, compression in (("plain", "none"), ("fp16", "fp16")):
        run_hpctrain("launch", job(tmp_path, mnist_h5, name, compression=compression), "--backend", "horovod",
                     "-n", 2, check=True)
    exchange = json.loads((tmp_path / "fp16" / "timing.json").read_text())["environment"]["exchange"]
    assert exchange["compression"] == "fp16" and exchange["bytes_per_value"] == 2
    plain, fp16 = final_weights(tmp_path / "plain"), final_weights(tmp_path / "fp16")
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(plain, fp16))
    assert 0 < diff < 1e-2, diff


def test_a_backend_without_compression_refuses_it(tmp_path, mnist_h5):
    spec = job(tmp_path, mnist_h5, "mw", backend="multiworker", compression="fp16")
    assert_user_error(run_hpctrain("train", spec), "distribute.compression 'fp16': backend 'multiworker' offers 'none'")
