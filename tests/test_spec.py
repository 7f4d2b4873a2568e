"""Job specs: defaults, then the file, then --set overrides; model tables; backends by registry; the writer."""
import pytest

from hpctrain import spec
from hpctrain.errors import UserError

pytestmark = pytest.mark.fast


def job(tmp_path, **changes):
    sections = dict(name="t", data={"path": "d.h5"}, model={"name": "unet", "unet": {"depth": 3}},
                    train={"batch_size": 2, "epochs": 1}, output={"dir": str(tmp_path / "run")})
    sections.update(changes)
    return spec.write(tmp_path / "job.toml", **sections)


def test_defaults_then_file_then_overrides(tmp_path):
    path = job(tmp_path)
    s = spec.load(path)
    assert (s.train.learning_rate, s.model.settings.depth, s.model.settings.filters) == (1e-4, 3, 64)  # default, file
    s = spec.load(path, ["train.learning_rate=0.5", "model.unet.filters=8", "distribute.backend=horovod",
                         "data.augment.enabled=true", "output.dir=somewhere"])
    assert (s.train.learning_rate, s.model.settings.filters, s.distribute.backend) == (0.5, 8, "horovod")
    assert s.data.augment.enabled and str(s.output.dir) == "somewhere"  # a bare word is a string


def test_the_resolved_spec_round_trips_through_its_toml(tmp_path):
    s = spec.load(job(tmp_path), ["train.epochs=3", "data.tile=64"])
    again = tmp_path / "again.toml"
    again.write_text(spec.to_toml(s))
    assert spec.load(again) == s
    assert "[model.unet]" in again.read_text()


@pytest.mark.parametrize("override,message", [
    ("model.depth=4", "model.depth: settings of model unet belong in its table [model.unet] (move depth there)"),
    ("model.unet.depth=9", "model.unet.depth: Input should be less than or equal to 7 (got 9)"),
    ("model.unet.colour=1", "unknown key model.unet.colour"),
    ("model.name='resnet'", "model.name: unknown model 'resnet' (known: mnist_cnn, lenet5, unet)"),
    ("distribute.backend='nccl'",
     "distribute.backend: Input should be 'none', 'horovod', 'mirrored' or 'multiworker' (got 'nccl')"),
    ("data.tile=98", "data.tile must be a multiple of 4 for model unet"),
    ("train.target_metric='val_dice'", "train.target_metric and train.target_value go together"),
    ("train.epoch=3", "unknown key train.epoch"),
    ("train", "--set 'train': expected section.key=value"),
])
def test_mistakes_are_one_line_errors_naming_the_key(tmp_path, override, message):
    path = job(tmp_path)
    with pytest.raises(UserError) as e:
        spec.load(path, [override])
    assert str(e.value).removeprefix(f"{path}: ") == message


def test_strong_scaling_splits_the_batch_and_keeps_the_learning_rate(tmp_path):
    weak = spec.load(job(tmp_path, train={"batch_size": 4, "epochs": 1, "accumulate_steps": 2}))
    assert weak.on_workers(8) == (weak, 16)  # the global batch grows x 8 workers x 2 micro-batches
    strong = spec.load(job(tmp_path, train={"batch_size": 4, "epochs": 1, "accumulate_steps": 2}),
                       ['distribute.scaling="strong"'])
    split, growth = strong.on_workers(4)
    assert (split.train.batch_size, split.train.accumulate_steps, growth) == (1, 2, 2)
    assert strong.on_workers(1) == (strong, 2)
    with pytest.raises(UserError, match=r'^distribute.scaling = "strong": train.batch_size 4 does not split over '
                                        r"3 workers$"):
        strong.on_workers(3)


def test_a_table_of_another_model_is_kept_aside(tmp_path):
    s = spec.load(job(tmp_path), ["model.name='mnist_cnn'"])  # [model.unet] stays, unused
    assert s.model.name == "mnist_cnn" and s.model.settings.dropout == 0.5
    assert "[model.unet]" not in spec.to_toml(s)


def test_old_flat_model_sections_are_refused_with_what_to_change(tmp_path):
    path = job(tmp_path, model={"name": "unet", "depth": 4, "filters": 16})
    with pytest.raises(UserError, match=r"belong in its table \[model.unet\] \(move depth, filters there\)"):
        spec.load(path)
