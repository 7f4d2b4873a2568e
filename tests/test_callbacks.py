"""The learning-rate rules: scaling with the replicas, and the warm-up ramp on the optimizer's step."""
import pytest

from hpctrain import optimizers
from hpctrain.errors import UserError
from hpctrain.optimizers import AUTO_WARMUP_EPOCHS
from hpctrain.spec import DistributeSpec, validate
from hpctrain.train import callbacks

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("rule,optimizer,replicas,expected", [
    ("linear", "adam", 8, 8e-3), ("sqrt", "sgd", 4, 2e-3), ("none", "momentum", 8, 1e-3), ("linear", "sgd", 1, 1e-3),
    ("auto", "adam", 4, 2e-3), ("auto", "sgd", 4, 4e-3), ("auto", "momentum", 4, 4e-3), ("auto", "adam", 1, 1e-3)])
def test_scaled_learning_rate(rule, optimizer, replicas, expected):
    assert optimizers.scaled_learning_rate(1e-3, replicas, rule, optimizer) == pytest.approx(expected)


def test_warm_up_in_epochs_or_steps_not_both(tmp_path):
    assert DistributeSpec().lr_warmup_steps(10) == round(AUTO_WARMUP_EPOCHS * 10)
    assert DistributeSpec(warmup_epochs=0.5).lr_warmup_steps(10) == 5
    assert DistributeSpec(warmup_steps=7).lr_warmup_steps(10) == 7
    assert DistributeSpec(warmup_epochs=0).lr_warmup_steps(10) == 0
    raw = {"name": "j", "data": {"path": "x.h5"}, "model": {"name": "lenet5"}, "train": {"batch_size": 1, "epochs": 1},
           "output": {"dir": str(tmp_path)}, "distribute": {"warmup_epochs": 1, "warmup_steps": 3}}
    message = "^spec: distribute.warmup_epochs and distribute.warmup_steps: set one of them$"
    with pytest.raises(UserError, match=message):
        validate(raw)


def test_warm_up_ramps_linearly_from_the_one_worker_rate_then_holds_or_decays():
    ramp = callbacks.LearningRateSchedule(base_lr=1e-3, scaled_lr=4e-3, warmup=10)
    assert [ramp.rate(s) for s in (0, 5, 10, 11, 1000)] == pytest.approx([1e-3, 2.5e-3, 4e-3, 4e-3, 4e-3])
    assert callbacks.LearningRateSchedule(1e-3, 4e-3, warmup=0).rate(0) == 4e-3  # no warm-up: scaled at once
    # cosine decay after the warm-up: half the scaled rate halfway through the rest, 0 at the last step
    cosine = callbacks.LearningRateSchedule(1e-3, 4e-3, warmup=10, decay="cosine", total=110)
    assert [cosine.rate(s) for s in (5, 10, 60, 110, 200)] == pytest.approx([2.5e-3, 4e-3, 2e-3, 0, 0], abs=1e-12)
