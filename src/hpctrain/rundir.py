"""The run folder of a training run: every file name in one place (as submitit's JobPaths).

    spec.toml  model.json  checkpoints/{last,best}/  metrics.csv  metrics.jsonl  timing.json  curves.png
    tensorboard/  evaluation.json  tsne.png  .ranks/

The chief writes it; `hpctrain evaluate`, `predict`, `plot` and `report` read it.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from hpctrain.errors import UserError


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    spec = property(lambda self: self.path / "spec.toml")             # the resolved job spec
    model = property(lambda self: self.path / "model.json")           # what inference needs to rebuild the model
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.checkpoints / "last")           # newest checkpoint
    best = property(lambda self: self.checkpoints / "best")           # best monitored metric
    metrics_csv = property(lambda self: self.path / "metrics.csv")    # one row per epoch
    metrics_jsonl = property(lambda self: self.path / "metrics.jsonl")
    timing = property(lambda self: self.path / "timing.json")         # hpctrain.train.timing.Timing
    curves = property(lambda self: self.path / "curves.png")
    tensorboard = property(lambda self: self.path / "tensorboard")    # train.profile: its trace in plugins/profile/
    timeline = property(lambda self: self.path / "timeline.json")     # distribute.timeline (Horovod's, chrome://tracing)
    evaluation = property(lambda self: self.path / "evaluation.json")
    tsne = property(lambda self: self.path / "tsne.png")
    ranks = property(lambda self: self.path / ".ranks")               # heartbeats (hpctrain.train.watchdog)
    stalled = property(lambda self: self.ranks / "stalled.txt")       # the line of the rank that ended a stall

    def heartbeat(self, rank):
        return self.ranks / f"{rank}.json"

    def is_run(self):
        return self.spec.is_file()

    def history(self):
        """The rows of metrics.jsonl (one per epoch), or [] before the first epoch ends."""
        path = self.metrics_jsonl
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def model_info(self):
        try:
            return json.loads(self.model.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{self.path}: cannot read {self.model.name}: {e}") from None

    @classmethod
    def containing(cls, path):
        """The run folder that `path` is, or lies inside of (a checkpoint prefix); None if there is none."""
        path = Path(path)
        for folder in (path, *path.parents):
            if (folder / "spec.toml").is_file():
                return cls(folder)
        return None
