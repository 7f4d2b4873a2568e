"""`hpctrain train --dry-run`: the resolved spec and the model's size, without data or training."""
from hpctrain import models
from hpctrain import spec as spec_mod


def describe(job):
    channels, classes, dtype = 1, None, "uint8"
    if job.data.path.is_file():
        from hpctrain.data.pipeline import dataset_info

        info = dataset_info(job.data.path)
        channels, classes, dtype = info["channels"], info["num_classes"], info["dtype"]
    side = job.data.tile or models.get(job.model.name).example_side
    model = models.build(job.model, (side, side, channels), classes, dtype)
    return (f"{spec_mod.to_toml(job)}\n# model {model.name}: {model.count_params():,} parameters "
            f"(input {side}x{side}x{channels})")
