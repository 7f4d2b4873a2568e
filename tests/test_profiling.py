"""The profiling switches: train.profile writes a TensorFlow profiler trace of the steps it names into the
run's tensorboard/, distribute.timeline writes Horovod's timeline into the run folder; their bad input."""
import json

import pytest

from conftest import assert_user_error, run_hpctrain, write_job

pytestmark = pytest.mark.slow


def job(tmp_path, mnist_h5, train=(), distribute=()):
    return write_job(tmp_path / "lenet.toml", name="lenet", data={"path": str(mnist_h5), "split": "holdout"},
                     model={"name": "lenet5"},
                     train={"batch_size": 16, "epochs": 2, "steps_per_epoch": 6, "validation": False, **dict(train)},
                     distribute=dict(distribute), output={"dir": str(tmp_path / "run"), "tensorboard": False})


def test_profile_writes_a_trace_of_the_named_steps(tmp_path, mnist_h5):
    run_hpctrain("train", job(tmp_path, mnist_h5, {"profile": "8:9"}), check=True)  # in the second epoch
    traces = list((tmp_path / "run" / "tensorboard").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert traces[0].relative_to(tmp_path / "run" / "tensorboard").parts[:2] == ("plugins", "profile")


def test_timeline_records_horovods_exchanges(tmp_path, mnist_h5):
    spec = job(tmp_path, mnist_h5, distribute={"timeline": True})
    run_hpctrain("launch", spec, "--backend", "horovod", "-n", 2, check=True)
    text = (tmp_path / "run" / "timeline.json").read_text()
    events = json.loads(text.rstrip().rstrip(",") + ("]" if not text.rstrip().endswith("]") else ""))
    names = {e.get("name") for e in events}
    assert "NEGOTIATE_ALLREDUCE" in names and "ALLREDUCE" in names, sorted(n for n in names if n)[:20]


def test_bad_profiling_settings_are_one_line_errors(tmp_path, mnist_h5):
    for train, distribute, fragment in (({"profile": "5:3"}, {}, "START <= END"),
                                        ({"profile": "0:3"}, {}, "train.profile"),
                                        ({"profile": "3"}, {}, "train.profile"),
                                        ({"profile": "3:13"}, {}, "ends after the run's last step (12"),
                                        ({}, {"backend": "mirrored", "timeline": True}, "writes no timeline")):
        assert_user_error(run_hpctrain("train", job(tmp_path, mnist_h5, train, distribute)), fragment)
        assert not (tmp_path / "run").exists()
