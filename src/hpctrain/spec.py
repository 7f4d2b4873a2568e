"""Job specs: defaults, then a TOML file, then `--set section.key=value` overrides, validated on load.

A spec is the whole description of a training run; the same file runs on 1 CPU or N GPUs on M nodes,
only `distribute.backend` (or `--backend`) changes.
"""
import copy
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hpctrain import models, optimizers
from hpctrain.data.augment import AugmentSpec
from hpctrain.distribute import backends
from hpctrain.errors import UserError, one_of


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(_Section):
    path: Path
    split: str = "all"                 # a split of the HDF5 file, e.g. "fold0" or "holdout"
    tile: int | None = Field(None, ge=8)  # random training crop; evaluation uses whole images
    augment: AugmentSpec = AugmentSpec()
    stage_dir: Path | None = None      # node-local copy, e.g. $TMPDIR on a compute node
    in_memory: bool | None = None      # None: automatic (small files are held in memory)


class ModelSpec(_Section):
    """[model]: a model of hpctrain.models by name; its own settings in the table [model.<name>]."""
    name: str
    settings: SkipValidation[models.Settings]

    @model_validator(mode="before")
    @classmethod
    def _own_table(cls, raw):
        if not isinstance(raw, dict) or "name" not in raw or isinstance(raw.get("settings"), models.Settings):
            return raw
        try:
            entry = models.get(raw["name"])
        except ValueError as e:
            raise PydanticCustomError("model_name", f"model.name: {e}") from None
        flat = [k for k, v in raw.items() if k != "name" and not (k in models.MODELS and isinstance(v, dict))]
        if flat:  # the layout before model tables, or a typo
            raise PydanticCustomError("model_table", f"model.{flat[0]}: settings of model {entry.name} belong in "
                                      f"its table [model.{entry.name}] (move {', '.join(flat)} there)")
        try:
            return {"name": entry.name, "settings": entry.settings.model_validate(raw.get(entry.name, {}))}
        except ValidationError as e:
            raise PydanticCustomError("model_settings", _problem(e, f"model.{entry.name}.")) from None

    @model_serializer
    def _as_tables(self):
        return {"name": self.name, self.name: self.settings.model_dump(mode="json")}


class TrainSpec(_Section):
    """[train]. A worker's batch per update is batch_size x accumulate_steps; learning_rate is that of one
    worker at batch_size, scaled to the global batch by distribute.lr_scaling."""
    optimizer: Literal[tuple(optimizers.OPTIMIZERS)] = "adam"
    learning_rate: float = Field(1e-4, gt=0)     # for one worker; see distribute.lr_scaling
    lr_decay: Literal[tuple(optimizers.DECAYS)] = "none"  # after the warm-up, down to 0 at the last step
    batch_size: int = Field(ge=1)                # per worker and micro-batch
    accumulate_steps: int = Field(1, ge=1)       # micro-batches per update (hpctrain.train.accumulate)
    epochs: int = Field(ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over this worker's shard
    validation: bool = True
    precision: Literal["auto", "fp32", "mixed"] = "auto"  # hpctrain.train.precision
    loss: str = "crossentropy"                   # one of the model's task's losses (hpctrain.tasks)
    xla: bool = False
    seed: int = 42
    deterministic: bool = False
    warmup_steps: int = Field(5, ge=0)           # steps left out of throughput figures
    target_metric: str | None = None             # e.g. "val_dice": time to reach target_value is timed
    target_value: float | None = None
    stop_at_target: bool = False                 # end training at the first epoch that reaches the target
    breakdown_steps: int = Field(10, ge=0)       # after the last step: where a step goes (train.breakdown); 0: off
    # "START:END": a TensorFlow profiler trace of those steps (1 = the run's first) in the run's tensorboard/
    profile: str | None = Field(None, pattern=r"^[1-9][0-9]*:[1-9][0-9]*$")

    @field_validator("profile")
    @classmethod
    def _ordered(cls, text):
        if text is not None and int(text.split(":")[0]) > int(text.split(":")[1]):
            raise ValueError(f"train.profile {text!r}: START:END with START <= END")
        return text

    @property
    def profile_steps(self):
        """(first, last) step of train.profile, or None."""
        return tuple(map(int, self.profile.split(":"))) if self.profile else None

    @property
    def update_batch(self):
        """Samples of one worker per update."""
        return self.batch_size * self.accumulate_steps


class DistributeSpec(_Section):
    backend: str = backends.Backend.name         # a backend of hpctrain.distribute.backends (default: none)
    # weak: each worker takes train.batch_size, the global batch grows with the workers; strong: the global
    # batch stays one worker's, train.batch_size split over the workers (the same updates, sooner)
    scaling: Literal["weak", "strong"] = "weak"
    # The 1-worker rate x N, x sqrt(N), or as is, N the global batch's growth (JobSpec.on_workers); auto: the
    # optimizer's rule (hpctrain.optimizers).
    lr_scaling: Literal[("auto", *optimizers.SCALING)] = "auto"
    warmup_epochs: float | None = Field(None, ge=0)  # ramp from the 1-worker rate to the scaled one (Goyal et al. 2017)
    warmup_steps: int | None = Field(None, ge=0)    # the same in steps (not both); neither: AUTO_WARMUP_EPOCHS
    devices: int = Field(1, ge=1)                # mirrored: replicas in the one process (logical CPUs here)
    sync_every: int = Field(10, ge=1)            # steps between the ranks' agreement on a stop signal
    # The network interface of every transport (hpctrain.distribute.network); None: $HPCTRAIN_INTERFACE, else
    # each library chooses.
    interface: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,15}$")
    stall_timeout: float = Field(300.0, gt=0)    # seconds without a training step: the job ends, naming the rank
    timeline: bool = False                       # the backend's own timeline of its exchanges in the run folder
    compression: str = "none"                    # of the gradients on the wire: one of the backend's compressions

    def lr_warmup_steps(self, steps_per_epoch):
        """Steps of the learning-rate ramp."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        epochs = optimizers.AUTO_WARMUP_EPOCHS if self.warmup_epochs is None else self.warmup_epochs
        return int(round(epochs * steps_per_epoch))

    @model_validator(mode="after")
    def _one_warmup(self):
        if self.warmup_epochs is not None and self.warmup_steps is not None:
            raise ValueError("distribute.warmup_epochs and distribute.warmup_steps: set one of them")
        return self

    @model_validator(mode="after")
    def _compression(self):
        known = backends.BACKENDS[self.backend].compressions
        if self.compression not in known:
            raise ValueError(f"distribute.compression {self.compression!r}: backend {self.backend!r} offers "
                             f"{', '.join(map(repr, known))}")
        return self

    @model_validator(mode="after")
    def _timeline(self):
        if self.timeline and not backends.BACKENDS[self.backend].writes_timeline:
            some = [name for name, b in backends.BACKENDS.items() if b.writes_timeline]
            raise ValueError(f"distribute.timeline: backend {self.backend!r} writes no timeline "
                             f"(backends that do: {', '.join(some)})")
        return self

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name):
        if name not in backends.BACKENDS:
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": one_of(map(repr, backends.BACKENDS))})
        return name


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

    def on_workers(self, replicas):
        """(the job as each of `replicas` workers runs it, the growth of the global batch over one worker's
        train.batch_size that lr_scaling follows)."""
        if self.distribute.scaling == "weak":
            return self, replicas * self.train.accumulate_steps
        if self.train.batch_size % replicas:
            raise UserError(f'distribute.scaling = "strong": train.batch_size {self.train.batch_size} does not split '
                            f"over {replicas} workers")
        train = self.train.model_copy(update={"batch_size": self.train.batch_size // replicas})
        return self.model_copy(update={"train": train}), self.train.accumulate_steps

    @model_validator(mode="after")
    def _consistent(self):
        if (self.train.target_metric is None) != (self.train.target_value is None):
            raise ValueError("train.target_metric and train.target_value go together")
        if self.train.stop_at_target and self.train.target_metric is None:
            raise ValueError("train.stop_at_target needs train.target_metric and train.target_value")
        task = models.get(self.model.name).task
        if self.train.loss not in task.losses:
            raise ValueError(f"train.loss {self.train.loss!r} is not a loss of {task.name} "
                             f"(known: {', '.join(task.losses)})")
        multiple = models.get(self.model.name).size_multiple(self.model.settings)
        if self.data.tile is not None and self.data.tile % multiple:
            raise ValueError(f"data.tile must be a multiple of {multiple} for model {self.model.name}")
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


def _problem(error, prefix=""):
    """The first problem of a ValidationError in one line, its keys prefixed."""
    first = error.errors()[0]
    where = prefix + ".".join(str(p) for p in first["loc"]) or "spec"
    if first["type"] == "extra_forbidden":
        return f"unknown key {where}"
    if first["type"] == "missing":
        return f"missing key {where}"
    if first["type"] in ("value_error", "model_name", "model_table", "model_settings"):  # messages that name their keys
        return first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{where}: {first['msg']}{shown}"


def _describe(error, source):
    return f"{source}: {_problem(error)}"


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
    return dumps(spec.model_dump(mode="json", exclude_none=True))


def write(path, **sections):
    """Writes a job spec file from {section: {key: value}} (tests, benchmarks); returns the path."""
    path = Path(path)
    path.write_text(dumps(sections))
    return path


def dumps(data, prefix=""):
    """TOML of a dict of scalars, lists and tables."""
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars]
    for k, v in tables:
        name = f"{prefix}{k}"
        lines += ["", f"[{name}]", *dumps(v, name + ".").splitlines()]
    return "\n".join(line for line in lines).strip() + "\n"


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
