"""train.precision: the policy each setting chooses on each kind of hardware (hpctrain.train.precision), and the
policy a run records."""
import json

import pytest

from hpctrain.train import precision

from conftest import run_hpctrain, write_job

AMPERE, PASCAL = (8, 0), (6, 1)


@pytest.mark.fast
@pytest.mark.parametrize("setting, gpus, flags, policy", [
    ("fp32", [AMPERE], {"amx_bf16"}, "float32"),
    ("fp32", [], {"amx_bf16"}, "float32"),
    ("mixed", [PASCAL], set(), "mixed_float16"),         # asked for: mixed even without tensor cores
    ("mixed", [], {"avx2"}, "mixed_bfloat16"),
    ("auto", [AMPERE, AMPERE], set(), "mixed_float16"),
    ("auto", [PASCAL], set(), "float32"),                 # no tensor cores
    ("auto", [AMPERE, PASCAL], set(), "float32"),         # one slow GPU holds every rank back
    ("auto", [], {"avx512f", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),
    ("auto", [], {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),
    ("auto", [], {"avx512f", "avx2"}, "float32"),         # bfloat16 would be emulated, slower than float32
])
def test_each_setting_chooses_by_hardware(setting, gpus, flags, policy):
    assert precision.choose(setting, gpus, frozenset(flags)) == policy


@pytest.mark.fast
def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f amx_bf16\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx512f", "amx_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["auto", "mixed"])
def test_a_run_records_the_policy_it_trained_with(tmp_path, mnist_h5, setting):
    expected = precision.choose(setting, [], precision.cpu_flags())  # this machine has no GPU
    job = write_job(tmp_path / "p.toml", name="p", data={"path": str(mnist_h5), "split": "holdout"},
                    model={"name": "lenet5"},
                    train={"batch_size": 32, "epochs": 1, "steps_per_epoch": 10, "precision": setting},
                    output={"dir": str(tmp_path / "run"), "tensorboard": False})
    run_hpctrain("train", job, check=True)
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    assert timing["precision"] == setting and timing["environment"]["precision_policy"] == expected
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < history[-1]["loss"] < 10


@pytest.mark.fast
def test_accumulation_under_float16_loss_scaling_equals_one_batch():
    """GPUs' mixed_float16 wraps the optimizer in a LossScaleOptimizer, whose loss scale the accumulating
    step applies to each micro-batch and takes off its gradients: 2 x 8 samples update like one batch of 16
    (LeNet does not underflow here, so this checks the scaling is consistent, not that it is needed)."""
    import numpy as np

    from hpctrain import compat, models
    from hpctrain.spec import ModelSpec
    from hpctrain.train.accumulate import accumulating

    keras = compat.keras()
    x = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1)).astype("uint8")
    y = np.arange(16) % 10
    weights = []
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        for k in (1, 2):
            keras.utils.set_random_seed(3)
            model = models.build(ModelSpec(name="lenet5"), (28, 28, 1), 10)
            if k > 1:
                model = accumulating(model, k, lambda grads: grads)
            model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy())
            assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
            model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
            weights.append(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(3)
    initial = models.build(ModelSpec(name="lenet5"), (28, 28, 1), 10).get_weights()
    for w0, a, b in zip(initial, *weights, strict=True):  # the updates agree, not just the weights
        step = np.abs(a - w0).max()
        assert step > 1e-4
        np.testing.assert_allclose(b - w0, a - w0, atol=0.05 * step)
