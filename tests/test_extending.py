"""A new backend or model is one class or one entry in one place: the toy ones of tests/workers/extend.py
train through the hpctrain command's normal `train` path and are evaluated, with no file of hpctrain
changed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpctrain import spec

pytestmark = pytest.mark.slow
WORKER = Path(__file__).parent / "workers" / "extend.py"


def hpctrain_with_toys(*args):
    proc = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def timing_of(tmp_path):
    return json.loads((tmp_path / "run" / "timing.json").read_text())


def test_a_toy_backend_and_a_toy_model_train_through_the_normal_path(tmp_path, mnist_h5):
    job = spec.write(tmp_path / "job.toml", name="toy", data={"path": str(mnist_h5), "split": "holdout"},
                     model={"name": "tiny", "tiny": {"units": 16}},
                     train={"learning_rate": 1e-3, "batch_size": 64, "epochs": 2, "steps_per_epoch": 20},
                     distribute={"backend": "counting"}, output={"dir": str(tmp_path / "run"), "tensorboard": False})
    out = hpctrain_with_toys("train", job)
    asked = json.loads(out.splitlines()[-1].removeprefix("asked "))
    # training and validation data, then the step-time breakdown's run batches and its one batch
    assert asked == {"wrap_optimizer": 1, "distribute": 4, "callbacks": 1}
    assert timing_of(tmp_path)["breakdown"]["per_rank"][0]["compute"] > 0

    run = tmp_path / "run"
    timing = json.loads((run / "timing.json").read_text())
    assert (timing["backend"], timing["model"], len(timing["step_times"])) == ("counting", "tiny", 40)
    assert timing["environment"]["backend_versions"] == {"counting": "1.0"}
    assert "[model.tiny]\nunits = 16" in (run / "spec.toml").read_text()

    hpctrain_with_toys("evaluate", run, "--json", tmp_path / "scores.json")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["model"] == "tiny" and scores["n_images"] == 2000
    assert scores["accuracy"] > 0.5  # 40 steps of a 16-unit layer: far above the 0.1 of guessing
    assert sum(map(sum, scores["confusion_matrix"])) == 2000
