"""The step-time breakdown (hpctrain.train.breakdown): measured on the run's workers after its last step,
the model and optimizer left as training made them, every rank's figures in timing.json, and the report's
table of the parts."""
import json

import numpy as np
import pytest

from conftest import run_hpctrain, write_job


@pytest.mark.fast
def test_measuring_leaves_the_weights_and_the_optimizer_as_they_were():
    from hpctrain import compat
    from hpctrain.distribute.backends import Backend
    from hpctrain.distribute.cluster import Cluster
    from hpctrain.train import breakdown

    tf, keras = compat.tf(), compat.keras()
    model = keras.Sequential([keras.layers.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(64, 8)).astype("float32"), np.arange(64) % 2
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = [v.numpy().copy() for v in model.variables + model.optimizer.variables]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    mine = breakdown.measure(model, Backend(Cluster("single"), None), ds, ds.take(1).cache().repeat(), 3)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables + model.optimizer.variables))
    assert set(mine) == set(breakdown.KINDS) and all(t >= 0 for t in mine.values()) and mine["compute"] > 0
    summary = breakdown.summary([mine], run_step=mine["step"], steps=3)
    parts = summary["seconds"]
    assert sum(parts.values()) == pytest.approx(mine["step"]) and summary["step_against_run"] == 0


def job(tmp_path, mnist_h5, steps=4):
    return write_job(tmp_path / "cnn.toml", name="cnn", data={"path": str(mnist_h5), "split": "holdout"},
                     model={"name": "mnist_cnn"},
                     train={"batch_size": 32, "epochs": 1, "steps_per_epoch": 12, "breakdown_steps": steps},
                     output={"dir": str(tmp_path / "run"), "tensorboard": False})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["horovod", "multiworker"])
def test_every_rank_measures_its_share_on_two_workers(tmp_path, mnist_h5, backend):
    run_hpctrain("launch", job(tmp_path, mnist_h5), "--backend", backend, "-n", 2, check=True)
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    b = timing["breakdown"]
    assert b["calls"] == 4 and len(b["per_rank"]) == 2 and b["per_rank"][0] != b["per_rank"][1]
    for rank in b["per_rank"]:
        assert rank["step"] > 0 and rank["compute"] > 0 and rank["exchange"] > 0
        assert rank["input"] == pytest.approx(rank["step"] - rank["one_batch"])
    assert b["run_step"] == timing["throughput"]["step_time_median"]
    chief = b["per_rank"][0]  # the probe's own time covers at least its timed calls
    timed = b["calls"] * (chief["step"] + chief["one_batch"] + chief["compute"])
    assert timed < b["wall_seconds"] < timing["wall_time"]
    assert b["range"]["compute"][0] <= b["seconds"]["compute"] <= b["range"]["compute"][1]


@pytest.mark.slow
def test_the_report_shows_where_the_time_goes_and_off_means_none(tmp_path, mnist_h5):
    run_hpctrain("train", job(tmp_path, mnist_h5), check=True)
    off = tmp_path / "off"
    off.mkdir()
    run_hpctrain("train", job(off, mnist_h5, steps=0), check=True)
    assert json.loads((off / "run" / "timing.json").read_text())["breakdown"] is None
    proc = run_hpctrain("report", tmp_path / "run", "-o", tmp_path / "report", check=True)
    assert "Where a step's time goes" in proc.stdout and (tmp_path / "report" / "cnn-none-breakdown.png").exists()
