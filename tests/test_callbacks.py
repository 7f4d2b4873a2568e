"""The learning-rate rules: scaling with the replicas, and the warm-up ramp on the optimizer's step."""
import pytest

from hpctrain.train import callbacks, loop

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("rule,replicas,expected", [("linear", 8, 8e-3), ("sqrt", 4, 2e-3), ("none", 8, 1e-3),
                                                    ("linear", 1, 1e-3)])
def test_scaled_learning_rate(rule, replicas, expected):
    assert loop.scaled_learning_rate(1e-3, replicas, rule) == pytest.approx(expected)


def test_warm_up_ramps_linearly_from_the_one_worker_rate_then_holds():
    ramp = callbacks.LearningRateRamp(base_lr=1e-3, scaled_lr=4e-3, warmup=10)
    assert [ramp.rate(s) for s in (0, 5, 10, 11, 1000)] == pytest.approx([1e-3, 2.5e-3, 4e-3, 4e-3, 4e-3])
    assert callbacks.LearningRateRamp(1e-3, 4e-3, warmup=0).rate(0) == 4e-3  # no warm-up: scaled at once
