"""One interface to every distribution backend. The training loop talks only to a `Backend`:

    backend = create(spec.distribute)       # reads the launcher's environment, sets up devices
    index, count = backend.input_shard      # the data shard this process reads
    ds = backend.distribute(dataset, per_replica_batch)
    with backend.scope(): model = ...; optimizer = backend.wrap_optimizer(optimizer)
    model.fit(ds, callbacks=backend.callbacks() + ...)

`replicas` is the number of data-parallel workers (global batch = per-worker batch x replicas); a
process may feed several (`local_replicas`, MirroredStrategy). Only the chief writes outputs.

Each backend class also states its own facts, which the spec, `launch`, `submit`, the training loop and
timing read without naming a backend: whether N processes run it, how it is launched on one node and
laid out on Slurm, whether every worker must save, the versions it reports. A subclass with its own
`name` registers itself in BACKENDS.
"""
import contextlib
import os
import shutil
import sys
import tempfile
from typing import NamedTuple

from hpctrain import compat
from hpctrain.distribute import cluster as cluster_mod
from hpctrain.distribute import network
from hpctrain.errors import UserError, one_of
from hpctrain.registry import Registry

GRADIENT_BYTES = 4  # per gradient value: float32 (the variables are float32 under every precision policy)

BACKENDS = Registry("backend")


class SlurmLayout(NamedTuple):
    nodes: int
    tasks_per_node: int
    gpus_per_node: int  # 0: no GPUs requested


def _set_cpu_threads(local_rank, local_size, workers_in_process=1):
    """CPU workers: each gets an equal share of the node's cores for its TensorFlow thread pools. With
    HPCTRAIN_CORES_PER_WORKER=k a worker is also pinned to its own k cores (by local rank), so that
    1 and N workers compare like 1 and N GPUs."""
    cores = sorted(os.sched_getaffinity(0))
    per_worker = int(os.environ.get("HPCTRAIN_CORES_PER_WORKER", "0") or 0)
    if per_worker:
        share = per_worker * workers_in_process
        mine = cores[local_rank * share:(local_rank + 1) * share]
        if len(mine) < share:
            raise UserError(f"HPCTRAIN_CORES_PER_WORKER={per_worker}: local worker {local_rank} needs cores "
                            f"{local_rank * share}..{(local_rank + 1) * share - 1}, only {len(cores)} are available")
        _pin(mine)
        threads = share
    else:
        threads = max(1, len(cores) // max(local_size, 1))
    tf = compat.tf()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return threads


def _pin(cores):
    """Pins every thread of this process to `cores` (threads started later inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(tid), cores)


def _gpu_memory_growth(gpus):
    for gpu in gpus:
        compat.tf().config.experimental.set_memory_growth(gpu, True)


class Backend:
    """No distribution: one process, one replica."""
    name = "none"
    multi_process = False       # N processes run it together, one or more replicas each
    in_process_replicas = False  # one process drives N replicas (its GPUs, or logical CPUs here)
    every_worker_saves = False  # every worker takes part in saving (tf.distribute); the chief's copy is kept
    launchers = ("local",)      # how `hpctrain launch` starts it (hpctrain.launch.local); first = default
    slurm_templates = ()        # its templates in hpctrain/launch/templates; first = default; none: no sweeps

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            BACKENDS.add(cls)

    def __init__(self, cluster, spec):
        self.cluster, self.spec = cluster, spec

    # How it is started.
    @classmethod
    def scales(cls):
        return cls.multi_process or cls.in_process_replicas

    @classmethod
    def local_plan(cls, n, launcher=None):
        """(launcher, processes, spec overrides) that give `n` workers on this node."""
        if n < 1:
            raise UserError(f"number of workers must be at least 1, not {n}")
        if n > 1 and not cls.scales():
            others = [name for name, b in BACKENDS.items() if b.scales()]
            raise UserError(f"backend {cls.name!r} trains on one worker; choose --backend {one_of(others)}")
        launcher = launcher or cls.launchers[0]
        if launcher not in cls.launchers:
            raise UserError(f"backend {cls.name!r} is started with --launcher {one_of(cls.launchers)} on one node, "
                            f"not {launcher}")
        return launcher, n if cls.multi_process else 1, cls.worker_overrides(n)

    @classmethod
    def hosts_plan(cls, n, launcher=None):
        """(launcher, processes, spec overrides) that give `n` workers on hosts named by `launch --hosts`."""
        if not cls.multi_process:
            several = [name for name, b in BACKENDS.items() if b.multi_process]
            raise UserError(f"backend {cls.name!r} runs as one process on one node; on several hosts choose "
                            f"--backend {one_of(several)}")
        return cls.local_plan(n, launcher)

    @classmethod
    def worker_overrides(cls, n):
        """Spec overrides that give a run of `n` workers."""
        return []

    @classmethod
    def slurm_layout(cls, n, per_node, cpu=False):
        """Nodes, tasks and GPUs per node of an n-worker job on nodes of `per_node` workers (GPUs); with
        `cpu` no GPUs are requested and each worker is a CPU process. Default: one task per GPU."""
        nodes = -(-n // per_node)
        if n % nodes:
            raise UserError(f"{n} workers do not split evenly over {nodes} nodes of {per_node}")
        return SlurmLayout(nodes, n // nodes, 0 if cpu else n // nodes)

    def versions(self):
        """Versions of the backend's own libraries, for timing.json."""
        return {}

    def setup(self):
        tf = compat.tf()
        gpus = tf.config.list_physical_devices("GPU")
        _gpu_memory_growth(gpus)
        if not gpus:
            _set_cpu_threads(0, 1)

    # Who we are.
    rank = property(lambda self: self.cluster.rank)
    size = property(lambda self: self.cluster.size)
    local_rank = property(lambda self: self.cluster.local_rank)
    local_size = property(lambda self: self.cluster.local_size)
    is_chief = property(lambda self: self.cluster.rank == 0)
    replicas = property(lambda self: self.size * self.local_replicas)
    local_replicas = 1

    @property
    def input_shard(self):
        return self.rank, self.size

    # What training needs.
    def scope(self):
        return contextlib.nullcontext()

    def wrap_optimizer(self, optimizer):
        return optimizer

    def callbacks(self):
        return []

    def distribute(self, dataset, per_replica_batch):
        return dataset

    def run_replicas(self, fn, args):
        """Inside a tf.function: fn(*args) on every replica of this process (the args as distribute gives them)."""
        return fn(*args)

    def reduce_gradients(self, grads):
        """Inside a training step: this replica's gradients -> what the optimizer applies. Where
        apply_gradients itself reduces over the replicas (tf.distribute), nothing is done here."""
        return grads

    def allreduce(self, value, op="mean"):
        return float(value)

    def barrier(self):
        pass

    mpi_job = False  # its processes are one MPI job (mpi4py's COMM_WORLD holds them all)
    compressions = {"none": GRADIENT_BYTES}  # distribute.compression: bytes per gradient value on the wire
    writes_timeline = False  # distribute.timeline: a trace of its exchanges (start_timeline)

    def start_timeline(self, path):
        """Records the backend's timeline into `path` until stop_timeline."""

    def stop_timeline(self):
        pass

    def exchange(self):
        """The gradient exchange, for timing.json and the scaling model: its collective and the bytes it fuses
        into one message (None: all gradients in one; 0: one message per gradient)."""
        return {"collective": "none", "fusion_bytes": None, "bytes_per_value": self.bytes_per_value}

    bytes_per_value = property(lambda self: self.compressions[self.spec.compression])  # on the wire

    def collective(self):
        """total(tensors) -> their sums over all replicas (replica 0's copy), through the collective of the
        gradient exchange (`hpctrain bench allreduce` times it)."""
        return lambda tensors: tensors

    @contextlib.contextmanager
    def output_dir(self, path):
        """Where this process writes `path`'s files: the path itself on the chief; elsewhere a
        temporary folder removed afterwards (some backends need every worker to write)."""
        if self.is_chief:
            yield path
            return
        tmp = tempfile.mkdtemp(prefix=f"hpctrain-worker{self.rank}-")
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def abort(self, code=1):
        """Ends this process at once after a failure, so peers are not left waiting in a collective."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


BACKENDS.add(Backend)


class HorovodBackend(Backend):
    """Horovod: one process per GPU (or CPU worker), started by mpirun, horovodrun or srun."""
    name = "horovod"
    multi_process = True
    launchers = ("mpirun", "horovodrun")
    slurm_templates = ("horovod-srun", "horovod-mpirun")

    def setup(self):
        # Measured here (benchmarks/scaling_cpu.py, README): Open MPI's busy polling steals the core
        # TensorFlow needs (U-Net, 2 workers on 2 cores: 60.5 % efficiency with plain defaults, 93.4 % with
        # yield_when_idle). A 2 ms cycle beat 1, 5 and 10 ms in runs in turn: it fuses tensors without
        # delaying each step.
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        os.environ.setdefault("HOROVOD_CYCLE_TIME", "2")
        # Horovod's own stall check (tensors some ranks submitted and others not) warns at half of
        # distribute.stall_timeout and shuts down at twice it: a backstop behind hpctrain's watchdog.
        timeout = self.spec.stall_timeout
        os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(max(1, round(timeout / 2))))
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(max(2, round(2 * timeout))))
        if self.spec.timeline:  # started into the run folder once it exists (start_timeline)
            os.environ["HOROVOD_TIMELINE"] = "DYNAMIC"
        tf = compat.tf()
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:  # before hvd.init(): Horovod's and MPI's threads then share this worker's cores
            _set_cpu_threads(self.cluster.local_rank, self.cluster.local_size)
        self.hvd = compat.horovod_keras()
        self.hvd.init()
        if len(gpus) > 1:  # one GPU per process by local rank; with --gpus-per-task Slurm already narrowed it
            gpus = [gpus[self.hvd.local_rank() % len(gpus)]]
            tf.config.set_visible_devices(gpus, "GPU")
        _gpu_memory_growth(gpus)

    rank = property(lambda self: self.hvd.rank())
    size = property(lambda self: self.hvd.size())
    local_rank = property(lambda self: self.hvd.local_rank())
    local_size = property(lambda self: self.hvd.local_size())
    is_chief = property(lambda self: self.hvd.rank() == 0)

    def versions(self):
        import horovod

        return {"horovod": horovod.__version__}

    # fp16 halves the bytes; a gradient beyond fp16's range becomes inf, and the run stops at the NaN loss
    # that follows. Horovod 0.28's allreduce has no bfloat16, so bf16 is not offered.
    compressions = {"none": GRADIENT_BYTES, "fp16": 2}

    def _compression(self):
        import horovod.tensorflow as hvd_tf

        return {"none": hvd_tf.Compression.none, "fp16": hvd_tf.Compression.fp16}[self.spec.compression]

    def wrap_optimizer(self, optimizer):
        return self.hvd.DistributedOptimizer(optimizer, compression=self._compression())

    def callbacks(self):
        return [self.hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                self.hvd.callbacks.MetricAverageCallback()]

    def reduce_gradients(self, grads):
        import horovod.tensorflow as hvd_tf

        return hvd_tf.grouped_allreduce(grads, op=hvd_tf.Average, compression=self._compression())

    def allreduce(self, value, op="mean"):
        import horovod.tensorflow as hvd_tf

        ops = {"mean": hvd_tf.Average, "max": hvd_tf.Max, "sum": hvd_tf.Sum, "min": hvd_tf.Min}
        return float(hvd_tf.allreduce(compat.tf().constant(float(value)), op=ops[op]).numpy())

    def barrier(self):
        self.allreduce(0.0, "sum")

    mpi_job = property(lambda self: self.hvd.mpi_enabled())
    writes_timeline = True  # Horovod's timeline: each tensor's negotiation, fusion and allreduce, from rank 0

    def start_timeline(self, path):
        self.hvd.start_timeline(str(path))

    def stop_timeline(self):
        self.hvd.stop_timeline()

    FUSION_BYTES = 128 << 20  # HOROVOD_FUSION_THRESHOLD's default in Horovod 0.28 (operations.cc; its docs say 64 MB)

    def exchange(self):
        gpu = bool(compat.tf().config.list_physical_devices("GPU"))
        over = "NCCL" if gpu and self.hvd.nccl_built() else "MPI" if self.hvd.mpi_enabled() else "Gloo"
        fusion = int(os.environ.get("HOROVOD_FUSION_THRESHOLD", self.FUSION_BYTES))
        return {"collective": f"Horovod over {over}", "fusion_bytes": fusion,  # 0: none fused
                "compression": self.spec.compression, "bytes_per_value": self.bytes_per_value,
                "cycle_time_ms": float(os.environ["HOROVOD_CYCLE_TIME"])}

    def collective(self):
        import horovod.tensorflow as hvd_tf

        return compat.tf().function(
            lambda tensors: hvd_tf.grouped_allreduce(tensors, op=hvd_tf.Sum, compression=self._compression()))

    def abort(self, code=1):
        if self.hvd.mpi_enabled():
            sys.stderr.flush()
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(code)
        super().abort(code)


class _TFDistributeBackend(Backend):
    """tf.distribute strategies: the strategy splits each step over its replicas; saving is collective."""
    every_worker_saves = True

    def __init__(self, cluster, spec):
        super().__init__(cluster, spec)
        self._reducers = {}

    def scope(self):
        return self.strategy.scope()

    def distribute(self, dataset, per_replica_batch):
        # The dataset holds this process's batches of per_replica_batch x local_replicas; each step the
        # strategy hands one slice of per_replica_batch to each local replica.
        return self.strategy.distribute_datasets_from_function(lambda ctx: dataset.rebatch(per_replica_batch))

    def run_replicas(self, fn, args):
        return self.strategy.run(fn, args=tuple(args))

    def allreduce(self, value, op="mean"):
        if op not in self._reducers:
            self._reducers[op] = self._make_reduce(op)
        return float(self._reducers[op](compat.tf().constant(float(value))))

    def _make_reduce(self, op):
        tf = compat.tf()
        fn = {"mean": tf.reduce_mean, "max": tf.reduce_max, "min": tf.reduce_min, "sum": tf.reduce_sum}[op]

        @tf.function
        def reduce(x):  # one value per replica, gathered, then reduced: works for every op
            return fn(self.strategy.gather(self.strategy.run(lambda: tf.reshape(x, [1])), axis=0))

        return reduce

    def barrier(self):
        self.allreduce(0.0, "sum")

    collective_name: str  # the strategy and its all-reduce, as setup chose them

    def exchange(self):  # every gradient in one pack (CommunicationOptions' bytes_per_pack 0)
        return {"collective": self.collective_name, "fusion_bytes": None, "bytes_per_value": self.bytes_per_value}

    def collective(self):
        tf, strategy = compat.tf(), self.strategy

        @tf.function
        def total(tensors):  # each replica sums its own copy (tf.identity), as its gradients would be
            return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
                "sum", [tf.identity(t) for t in tensors]))

        return lambda tensors: strategy.experimental_local_results(total(tensors))[0]


class MirroredBackend(_TFDistributeBackend):
    """MirroredStrategy: one process drives all GPUs of its node, or N logical CPU devices without GPUs."""
    name = "mirrored"
    in_process_replicas = True
    slurm_templates = ("mirrored",)

    @classmethod
    def worker_overrides(cls, n):
        return [f"distribute.devices={n}"]  # logical CPU devices; with GPUs it drives all it sees

    @classmethod
    def slurm_layout(cls, n, per_node, cpu=False):
        if n > per_node:
            raise UserError(f"backend mirrored runs on one node: {n} workers do not fit its {per_node}")
        return SlurmLayout(1, 1, 0 if cpu else n)

    def setup(self):
        tf = compat.tf()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            _gpu_memory_growth(gpus)
            self.strategy = tf.distribute.MirroredStrategy()
            self.collective_name = "MirroredStrategy, TensorFlow's all-reduce choice (NCCL where it can)"
        else:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * self.spec.devices)
            _set_cpu_threads(0, 1, self.spec.devices)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            self.strategy = tf.distribute.MirroredStrategy(
                devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
            self.collective_name = "MirroredStrategy, ReductionToOneDevice"

    @property
    def local_replicas(self):
        return self.strategy.num_replicas_in_sync


class MultiWorkerBackend(_TFDistributeBackend):
    """MultiWorkerMirroredStrategy: one process per node (or per CPU worker here), TF_CONFIG or Slurm."""
    name = "multiworker"
    multi_process = True
    slurm_templates = ("multiworker",)

    @classmethod
    def slurm_layout(cls, n, per_node, cpu=False):
        layout = super().slurm_layout(n, per_node, cpu)
        if cpu:
            return layout
        return SlurmLayout(layout.nodes, 1, layout.gpus_per_node)  # one process per node drives its GPUs

    def setup(self):
        tf = compat.tf()
        gpus = tf.config.list_physical_devices("GPU")
        _gpu_memory_growth(gpus)
        if not gpus:
            _set_cpu_threads(self.cluster.local_rank, self.cluster.local_size)
        if self.cluster.launcher == "slurm":  # srun's tasks as TF_CONFIG (ports derived from the job id)
            os.environ["TF_CONFIG"] = cluster_mod.slurm_tf_config(self.cluster)
        elif self.cluster.launcher != "tf_config" and self.cluster.size > 1:
            raise UserError(f"backend 'multiworker' needs TF_CONFIG or srun, not {self.cluster.launcher} "
                            "(use --launcher local or srun)")
        implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                          else tf.distribute.experimental.CommunicationImplementation.RING)
        options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        self.collective_name = f"MultiWorkerMirroredStrategy, {implementation.name} collective"
        with compat.quiet_native_logs():  # gRPC server start-up lines
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)

    @property
    def local_replicas(self):
        return self.strategy.num_replicas_in_sync // self.cluster.size


def create(spec, env=None):
    """The backend named by a DistributeSpec, set up for this process."""
    cluster = cluster_mod.detect(env)
    network.apply(network.chosen(spec.interface))
    backend = BACKENDS[spec.backend](cluster, spec)
    if cluster.size > 1 and not backend.multi_process:
        several = [name for name, b in BACKENDS.items() if b.multi_process]
        raise UserError(f"backend {spec.backend!r} runs as one process, but {cluster.launcher} started "
                        f"{cluster.size}; set distribute.backend (or --backend) to {one_of(several)}")
    backend.setup()
    return backend
