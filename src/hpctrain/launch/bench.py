"""`hpctrain bench allreduce JOB`: with -n, --hosts or --hostfile it starts the job's workers as `launch`
does; run as one of them (under mpirun, srun, horovodrun or launch's TF_CONFIG) it times the backend's
allreduce (hpctrain.distribute.allreduce_bench), message sizes and the job's own gradient set. Rank 0
prints the table and writes the JSON."""
import json
from typing import NamedTuple

from hpctrain import models
from hpctrain import spec as spec_mod
from hpctrain.atomic import write_text
from hpctrain.distribute import allreduce_bench, backends, network
from hpctrain.distribute import cluster as cluster_mod
from hpctrain.errors import UserError
from hpctrain.launch import local, sweep


class Workers(NamedTuple):
    """Workers to start (`launch`'s options); all None: this process is one of the job's workers."""
    n: int | None = None
    launcher: str | None = None
    hosts: str | None = None
    hostfile: str | None = None

    def to_start(self):
        return self.n is not None or bool(self.hosts or self.hostfile)


def allreduce(job_path, overrides=(), backend=None, workers=None, sizes=("4", "256M", 2), repeats=3, output=None):
    """Returns the exit code. `sizes`: (smallest, largest, factor) as -b, -e, -f give them."""
    workers = workers or Workers()
    lo, hi, factor = sizes
    message_sizes = allreduce_bench.sizes(allreduce_bench.parse_bytes(lo), allreduce_bench.parse_bytes(hi), factor)
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, not {repeats}")
    overrides = [*overrides, *([f"distribute.backend={backend}"] if backend else [])]
    job = spec_mod.load(job_path, overrides)
    if not backends.BACKENDS[job.distribute.backend].scales():
        raise UserError(f"backend {job.distribute.backend!r} has one worker and no collective to time; choose "
                        "--backend")
    if workers.to_start():
        if cluster_mod.detect().launcher != "single":
            raise UserError("-n, --hosts and --hostfile start workers; inside a job (srun, mpirun) its own tasks are "
                            "the workers")
        how = local.plan(backends.BACKENDS[job.distribute.backend], workers.n, workers.launcher, workers.hosts,
                         workers.hostfile, network.chosen(job.distribute.interface))
        args = ["bench", "allreduce", str(job_path), "-b", str(lo), "-e", str(hi), "-f", str(factor),
                "--repeats", str(repeats), *(["-o", str(output)] if output else [])]
        for item in [*overrides, *how.overrides]:
            args += ["--set", item]
        return local.run(how.processes, sweep.hpctrain_command(args), how.launcher, where=how.where)
    worker = backends.create(job.distribute)
    result = allreduce_bench.run(worker, message_sizes, repeats, gradient_shapes(job))
    if worker.is_chief:
        print(allreduce_bench.table(result), flush=True)
        if output:
            write_text(output, json.dumps(result, indent=2))
            print(f"written: {output}")
    return 0


def gradient_shapes(job):
    """The shapes of the gradients of the job's model, built for its dataset as training builds it."""
    from hpctrain.data import pipeline

    info = pipeline.dataset_info(job.data.path)
    shape = models.get(job.model.name).input_shape(info["image_shape"], job.data.tile)
    model = models.build(job.model, shape, info["num_classes"], info["dtype"])
    return [tuple(v.shape) for v in model.trainable_variables]
