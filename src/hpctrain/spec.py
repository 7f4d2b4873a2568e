"""Job specs: defaults, then a TOML file, then `--set section.key=value` overrides, validated on load.

A spec is the whole description of a training run; the same file runs on 1 CPU or N GPUs on M nodes,
only `distribute.backend` (or `--backend`) changes.
"""
import copy
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpctrain.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentSpec(_Section):
    """Random transforms applied identically to image and mask (segmentation only)."""
    enabled: bool = False
    rotation: float = Field(20.0, ge=0, le=180)   # degrees
    shift: float = Field(0.05, ge=0, lt=1)        # fraction of width/height
    shear: float = Field(0.05, ge=0, lt=90)       # degrees
    zoom: float = Field(0.05, ge=0, lt=1)
    horizontal_flip: bool = True
    vertical_flip: bool = True
    elastic: bool = False


class DataSpec(_Section):
    path: Path
    split: str = "all"                 # a split of the HDF5 file, e.g. "fold0" or "holdout"
    tile: int | None = Field(None, ge=8)  # random training crop; evaluation uses whole images
    augment: AugmentSpec = AugmentSpec()
    stage_dir: Path | None = None      # node-local copy, e.g. $TMPDIR on a compute node
    in_memory: bool | None = None      # None: automatic (small files are held in memory)


class ModelSpec(_Section):
    name: Literal["unet", "mnist_cnn", "lenet5"]
    depth: int = Field(5, ge=2, le=7)            # U-Net levels
    filters: int = Field(64, ge=1)               # U-Net base filters
    output: Literal["sigmoid", "softmax"] = "sigmoid"
    dropout: float = Field(0.5, ge=0, lt=1)


class TrainSpec(_Section):
    optimizer: Literal["adam", "sgd", "momentum"] = "adam"
    learning_rate: float = Field(1e-4, gt=0)     # for one worker; see distribute.lr_scaling
    batch_size: int = Field(ge=1)                # per worker
    epochs: int = Field(ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over this worker's shard
    validation: bool = True
    precision: Literal["fp32", "mixed"] = "fp32"
    xla: bool = False
    seed: int = 42
    deterministic: bool = False
    warmup_steps: int = Field(5, ge=0)           # steps left out of throughput figures
    target_metric: str | None = None             # e.g. "val_dice": time to reach target_value is timed
    target_value: float | None = None


class DistributeSpec(_Section):
    backend: Literal["none", "horovod", "mirrored", "multiworker"] = "none"
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"  # learning rate x workers (or sqrt), or as is
    warmup_epochs: float = Field(0.0, ge=0)      # ramp from the 1-worker rate (Goyal et al. 2017)
    devices: int = Field(1, ge=1)                # mirrored: replicas in the one process (logical CPUs here)
    sync_every: int = Field(10, ge=1)            # steps between the ranks' agreement on a stop signal


class OutputSpec(_Section):
    dir: Path
    checkpoint_every: int = Field(1, ge=1)       # epochs
    tensorboard: bool = True


class JobSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    distribute: DistributeSpec = DistributeSpec()
    output: OutputSpec

    @model_validator(mode="after")
    def _consistent(self):
        if (self.train.target_metric is None) != (self.train.target_value is None):
            raise ValueError("train.target_metric and train.target_value go together")
        if self.model.name == "unet" and self.data.tile is not None and self.data.tile % 2 ** (self.model.depth - 1):
            raise ValueError(f"data.tile must be a multiple of {2 ** (self.model.depth - 1)} for a "
                             f"U-Net of depth {self.model.depth}")
        return self


def _parse_value(text):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


def apply_overrides(raw, overrides):
    """`overrides` like ["train.epochs=3", "distribute.backend=horovod"] applied to a spec dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected section.key=value")
        *parents, leaf = key.strip().split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part} is not a section")
        node[leaf] = _parse_value(value.strip())
    return raw


def _describe(error, source):
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "spec"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {where}"
    if first["type"] == "missing":
        return f"{source}: missing key {where}"
    if first["type"] == "value_error":  # a rule across keys: its message names them
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {where}: {first['msg']}{shown}"


def validate(raw, source="spec"):
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise UserError(_describe(e, source)) from None


def load(path, overrides=()):
    """The validated JobSpec of a TOML file with overrides applied."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"job spec {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read job spec {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    return validate(apply_overrides(raw, overrides), str(path))


def to_toml(spec):
    """The resolved spec as TOML (saved into every run folder)."""
    return _toml(spec.model_dump(mode="json", exclude_none=True))


def _toml(data, prefix=""):
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars]
    for k, v in tables:
        name = f"{prefix}{k}"
        lines += ["", f"[{name}]", *_toml(v, name + ".").splitlines()]
    return "\n".join(line for line in lines).strip() + "\n"


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
