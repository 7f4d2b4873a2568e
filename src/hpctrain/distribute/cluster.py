"""Where this process stands in the job: rank, size, local rank, node — read once from the launcher's
environment (horovodrun, Open MPI's mpirun, the MPICH family's Hydra mpiexec, Slurm's srun, TF_CONFIG), the
way Lightning's ClusterEnvironment does it. Nothing else in hpctrain reads these variables."""
import json
import os
import socket
from dataclasses import dataclass, field

import hostlist

from hpctrain.errors import UserError


@dataclass(frozen=True)
class Cluster:
    launcher: str  # horovodrun | mpirun (Open MPI) | mpiexec (MPICH family) | slurm | tf_config | single
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    job_id: str | None = None
    hosts: tuple[str, ...] = field(default_factory=tuple)  # one per node (Slurm) or per worker (TF_CONFIG)

    @property
    def is_chief(self):
        return self.rank == 0


def _int(env, name, default=0):
    return int(env.get(name, default))


def slurm_tasks_per_node(spec):
    """Expands Slurm's compressed '2(x3),1' into [2, 2, 2, 1]."""
    try:
        return hostlist.parse_slurm_tasks_per_node(spec.strip())
    except hostlist.BadHostlist as e:
        raise ValueError(f"cannot parse Slurm tasks per node {spec!r}: {e}") from None


def expand_hostlist(nodes):
    """'rack[1-2]-node[01-02],gpu1' -> ['rack1-node01', 'rack1-node02', 'rack2-node01', 'rack2-node02', 'gpu1']
    (Slurm's hostlist syntax, by python-hostlist)."""
    try:
        return hostlist.expand_hostlist(nodes)
    except hostlist.BadHostlist as e:
        raise ValueError(f"cannot parse Slurm hostlist {nodes!r}: {e}") from None


def _hydra(env, job_id):
    """A rank of Hydra's mpiexec (MPICH, Intel MPI): Hydra's proxy sets MPI_LOCALRANKID and MPI_LOCALNRANKS
    for every rank, and PMI_RANK and PMI_SIZE unless mpiexec ran with -pmi-port (then PMI_ID, and no size).
    srun --mpi=pmi2 sets PMI_RANK and PMI_SIZE too, but never MPI_LOCALRANKID. The node index assumes ranks
    placed in blocks of MPI_LOCALNRANKS, as Hydra does by default."""
    rank = int(env.get("PMI_RANK", env.get("PMI_ID", 0)))
    if "PMI_SIZE" not in env:
        raise UserError(f"Hydra's mpiexec set no PMI_SIZE for rank {rank} (as with -pmi-port): the job's size "
                        "is unknown; start it without -pmi-port")
    size = _int(env, "PMI_SIZE", 1)
    local_size = max(_int(env, "MPI_LOCALNRANKS", 1), 1)
    return Cluster("mpiexec", rank, size, _int(env, "MPI_LOCALRANKID"), local_size,
                   rank // local_size, -(-size // local_size), job_id)


def detect(env=None):
    """The Cluster for this process. The most specific launcher wins: horovodrun first; Open MPI's mpirun
    and Hydra's mpiexec inside a Slurm allocation are taken at their word (their ranks may carry the
    SLURM_STEP_* of the srun that started mpirun's daemons or Hydra's proxies); srun's step variables next,
    then TF_CONFIG. PMIX_RANK alone is not read: PMIx launchers put no size in the environment, and those
    hpctrain meets (Open MPI 5's mpirun, srun --mpi=pmix) set their own variables as well."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID")
    if "HOROVOD_RANK" in env:
        return Cluster("horovodrun", _int(env, "HOROVOD_RANK"), _int(env, "HOROVOD_SIZE", 1),
                       _int(env, "HOROVOD_LOCAL_RANK"), _int(env, "HOROVOD_LOCAL_SIZE", 1),
                       _int(env, "HOROVOD_CROSS_RANK"), _int(env, "HOROVOD_CROSS_SIZE", 1), job_id)
    if "OMPI_COMM_WORLD_RANK" in env:  # node index assumes by-slot mapping, as hpctrain launches
        rank, size = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE", 1)
        local_size = max(_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1), 1)
        return Cluster("mpirun", rank, size, _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"), local_size,
                       rank // local_size, -(-size // local_size), job_id)
    if "MPI_LOCALRANKID" in env and ("PMI_RANK" in env or "PMI_ID" in env):
        return _hydra(env, job_id)
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:  # inside an srun step, not the batch script
        per_node = slurm_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")))
        node, size = _int(env, "SLURM_NODEID"), _int(env, "SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", 1))
        return Cluster("slurm", _int(env, "SLURM_PROCID"), size,
                       _int(env, "SLURM_LOCALID"), per_node[node] if node < len(per_node) else 1,
                       node, _int(env, "SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", 1)), job_id,
                       tuple(expand_hostlist(env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "")))))
    if "TF_CONFIG" in env:
        config = json.loads(env["TF_CONFIG"])
        workers = config.get("cluster", {}).get("worker", [])
        index = int(config.get("task", {}).get("index", 0))
        hosts = tuple(w.rsplit(":", 1)[0] for w in workers)
        me = hosts[index] if index < len(hosts) else socket.gethostname()
        local = [i for i, h in enumerate(hosts) if h == me]
        nodes = list(dict.fromkeys(hosts))
        return Cluster("tf_config", index, max(len(workers), 1), local.index(index) if index in local else 0,
                       max(len(local), 1), nodes.index(me) if me in nodes else 0, max(len(nodes), 1), job_id,
                       tuple(workers))
    return Cluster("single", job_id=job_id)


def slurm_tf_config(cluster, env=None):
    """TF_CONFIG for the tasks of an srun step, one worker per task in rank order. TF's own
    SlurmClusterResolver needs GPUs (on CPUs it fails: range() arg 3 must not be zero) and drops tasks beyond
    one per GPU. srun's default block distribution puts consecutive ranks on a node; each task listens on
    a port of its own, derived from the job id so that jobs sharing a node do not collide."""
    env = os.environ if env is None else env
    per_node = slurm_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")))
    width = max([10, *per_node])
    base = 20000 + (int(cluster.job_id or 0) * width) % (40000 - width)
    workers = [f"{host}:{base + i}" for host, n in zip(cluster.hosts, per_node) for i in range(n)]
    if len(workers) != cluster.size:
        raise ValueError(f"Slurm step of {cluster.size} tasks on {list(cluster.hosts)} with tasks per node "
                         f"{per_node}: cannot place every task")
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": cluster.rank}})
