"""Where a process stands in the job (hpctrain.distribute.cluster), from launcher environments given as dicts:
Slurm's hostlist and tasks-per-node syntax, detect() for each launcher (Open MPI's mpirun, the MPICH family's
Hydra mpiexec, srun, horovodrun, TF_CONFIG), TF_CONFIG for an srun step.
No subprocess, no TensorFlow."""
import json

import hostlist
import pytest

from hpctrain.distribute.cluster import Cluster, detect, expand_hostlist, slurm_tasks_per_node, slurm_tf_config
from hpctrain.errors import UserError

# Hostlist, number of hosts, and the hosts written out for a few (None: compared with python-hostlist only).
HOSTLISTS = [
    ("node01", 1, ["node01"]),
    ("login,gpu1,cpu7", 3, ["login", "gpu1", "cpu7"]),
    ("node[1-3]", 3, ["node1", "node2", "node3"]),
    ("node[01-03]", 3, ["node01", "node02", "node03"]),
    ("node[08-11]", 4, ["node08", "node09", "node10", "node11"]),
    ("node[001-003,010]", 4, None),
    ("node[7,9-10]", 3, ["node7", "node9", "node10"]),
    ("rack[1-2]-node[01-02]", 4, ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ("r[1-2]n[1-2]-ib", 4, ["r1n1-ib", "r1n2-ib", "r2n1-ib", "r2n2-ib"]),
    ("a[0-1]b[0-1]c[0-1]", 8, None),
    ("n[1-3]x", 3, ["n1x", "n2x", "n3x"]),
    ("gpu[1-2].cluster.local", 2, None),
    ("node-[1-2]", 2, None),
    ("node[01-02],gpu1,cpu[3-4]", 5, ["node01", "node02", "gpu1", "cpu3", "cpu4"]),
    ("login1,rack[1-2]-node[9-10]", 5, None),
    ("", 0, []),
]


@pytest.mark.fast
@pytest.mark.parametrize("nodes,count,expected", HOSTLISTS)
def test_hostlist_forms(nodes, count, expected):
    hosts = expand_hostlist(nodes)
    assert hosts == hostlist.expand_hostlist(nodes)
    assert len(hosts) == count and len(set(hosts)) == count
    if expected is not None:
        assert hosts == expected


@pytest.mark.fast
@pytest.mark.parametrize("nodes", ["node[01-", "node]", "node[3-1]", "node[a-b]", "node[]", "node[[1-2]]"])
def test_malformed_hostlist_is_a_value_error(nodes):
    with pytest.raises(ValueError, match=r"^cannot parse Slurm hostlist .+: .+") as error:
        expand_hostlist(nodes)
    assert "\n" not in str(error.value)


@pytest.mark.fast
@pytest.mark.parametrize("spec,expected", [
    ("1", [1]),
    ("16", [16]),
    ("4,2", [4, 2]),
    ("2(x3),1", [2, 2, 2, 1]),
    ("1(x4)", [1, 1, 1, 1]),
    ("2(x2),3,1(x2)", [2, 2, 3, 1, 1]),
])
def test_tasks_per_node_forms(spec, expected):
    assert slurm_tasks_per_node(spec) == expected == hostlist.parse_slurm_tasks_per_node(spec)


@pytest.mark.fast
@pytest.mark.parametrize("spec", ["", "x", "2(x", "2(3)", "2(x)", "-1", "2,,1", "1.5"])
def test_malformed_tasks_per_node_is_a_value_error(spec):
    with pytest.raises(ValueError, match=r"^cannot parse Slurm tasks per node .*: .+"):
        slurm_tasks_per_node(spec)


def srun_step(rank, nodes="node[01-02]", per_node="2(x2)", tasks=4, job_id="4242"):
    """What srun sets for one task of a step (block distribution: consecutive ranks share a node)."""
    counts = slurm_tasks_per_node(per_node)
    node = next(i for i in range(len(counts)) if rank < sum(counts[:i + 1]))
    return {"SLURM_JOB_ID": job_id, "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank - sum(counts[:node])), "SLURM_NODEID": str(node),
            "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": str(len(counts)),
            "SLURM_STEP_TASKS_PER_NODE": per_node, "SLURM_STEP_NODELIST": nodes,
            # the allocation's own variables, which the step's win over
            "SLURM_NTASKS": "99", "SLURM_NNODES": "9", "SLURM_TASKS_PER_NODE": "11(x9)", "SLURM_JOB_NODELIST": "x[1-9]"}


@pytest.mark.fast
def test_detect_horovodrun_wins_over_mpirun_and_slurm():
    env = {"HOROVOD_RANK": "3", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2",
           "HOROVOD_CROSS_RANK": "1", "HOROVOD_CROSS_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0", **srun_step(0)}
    assert detect(env) == Cluster("horovodrun", 3, 4, 1, 2, 1, 2, "4242")


@pytest.mark.fast
def test_detect_mpirun_inside_a_slurm_job():
    """mpirun's ranks keep the batch script's SLURM_* (no SLURM_STEP_ID); the node follows by-slot mapping."""
    env = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "SLURM_JOB_ID": "77", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}
    assert detect(env) == Cluster("mpirun", 5, 8, 1, 4, 1, 2, "77")


def hydra_rank(rank, size=8, per_node=4, pmi_port=False):
    """What Hydra's proxy (MPICH's or Intel MPI's mpiexec) sets for one rank; ranks fill nodes in blocks."""
    env = {"MPI_LOCALRANKID": str(rank % per_node), "MPI_LOCALNRANKS": str(per_node), "PMI_HOSTNAME": "node01"}
    if pmi_port:  # mpiexec -pmi-port: PMI_ID instead of PMI_RANK, and no PMI_SIZE
        return {**env, "PMI_PORT": "node01:40123", "PMI_ID": str(rank)}
    return {**env, "PMI_RANK": str(rank), "PMI_SIZE": str(size), "PMI_FD": "9"}


@pytest.mark.fast
@pytest.mark.parametrize("rank,expected", [
    (0, Cluster("mpiexec", 0, 8, 0, 4, 0, 2)),
    (5, Cluster("mpiexec", 5, 8, 1, 4, 1, 2)),
    (7, Cluster("mpiexec", 7, 8, 3, 4, 1, 2)),
])
def test_detect_mpich_mpiexec(rank, expected):
    assert detect(hydra_rank(rank)) == expected


@pytest.mark.fast
def test_detect_intel_mpi_mpiexec_on_one_node():
    """Intel MPI's mpiexec.hydra sets Hydra's variables beside its own I_MPI_*."""
    env = {**hydra_rank(2, size=3, per_node=3), "I_MPI_ROOT": "/opt/intel/oneapi/mpi/2021.10.0",
           "I_MPI_HYDRA_TOPOLIB": "hwloc"}
    assert detect(env) == Cluster("mpiexec", 2, 3, 2, 3, 0, 1)


@pytest.mark.fast
def test_detect_mpiexec_inside_a_slurm_job_is_taken_at_its_word():
    """Hydra starts its proxies with srun, one task per node: the ranks carry that step's SLURM_* (SLURM_PROCID
    is the proxy's, not the rank's), which mpiexec's own variables win over."""
    env = {**srun_step(1, nodes="node[01-02]", per_node="1(x2)", tasks=2, job_id="77"), **hydra_rank(6)}
    assert detect(env) == Cluster("mpiexec", 6, 8, 2, 4, 1, 2, "77")


@pytest.mark.fast
def test_detect_srun_with_pmi2_is_slurm_not_mpiexec():
    """srun --mpi=pmi2 sets PMI_RANK and PMI_SIZE but never MPI_LOCALRANKID: the step's variables count."""
    env = {**srun_step(3), "PMI_RANK": "3", "PMI_SIZE": "4", "PMI_FD": "7", "PMI_JOBID": "4242.0"}
    assert detect(env) == Cluster("slurm", 3, 4, 1, 2, 1, 2, "4242", ("node01", "node02"))


@pytest.mark.fast
def test_detect_pmix_rank_alone_is_not_a_launcher():
    """PMIx puts no size in the environment: srun --mpi=pmix is read from SLURM_*, Open MPI 5's mpirun
    from OMPI_COMM_WORLD_*, and a bare PMIX_RANK is no job."""
    assert detect({**srun_step(2), "PMIX_RANK": "2", "PMIX_NAMESPACE": "slurm.pmix.4242.0"}).launcher == "slurm"
    open_mpi_5 = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                  "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PMIX_RANK": "1", "PMIX_NAMESPACE": "prterun-vm-1@1"}
    assert detect(open_mpi_5) == Cluster("mpirun", 1, 2, 1, 2, 0, 1)
    assert detect({"PMIX_RANK": "3"}) == Cluster("single")


@pytest.mark.fast
def test_detect_horovodrun_wins_over_mpiexec():
    env = {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2",
           **hydra_rank(0, size=2, per_node=2)}
    assert detect(env) == Cluster("horovodrun", 1, 2, 1, 2, 0, 1)


@pytest.mark.fast
def test_detect_mpiexec_with_pmi_port_is_a_user_error():
    with pytest.raises(UserError, match=r"^Hydra's mpiexec set no PMI_SIZE for rank 3 .*-pmi-port$") as error:
        detect(hydra_rank(3, pmi_port=True))
    assert "\n" not in str(error.value)


@pytest.mark.fast
def test_detect_srun_step_reads_the_step_variables():
    assert detect(srun_step(3, nodes="rack[1-2]-node07")) == Cluster(
        "slurm", 3, 4, 1, 2, 1, 2, "4242", ("rack1-node07", "rack2-node07"))


@pytest.mark.fast
def test_detect_srun_step_falls_back_to_the_allocation_variables():
    env = {"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
           "SLURM_NTASKS": "3", "SLURM_NNODES": "2", "SLURM_TASKS_PER_NODE": "2,1", "SLURM_JOB_NODELIST": "n[8-9]"}
    assert detect(env) == Cluster("slurm", 2, 3, 0, 1, 1, 2, "9", ("n8", "n9"))


@pytest.mark.fast
def test_detect_batch_script_and_plain_process_are_single():
    batch = {"SLURM_JOB_ID": "5", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node[1-2]"}
    assert detect(batch) == Cluster("single", job_id="5")
    assert detect({}) == Cluster("single")


@pytest.mark.fast
def test_detect_srun_step_with_a_malformed_nodelist_is_a_value_error():
    with pytest.raises(ValueError, match=r"cannot parse Slurm hostlist 'node\[01-'"):
        detect(srun_step(0, nodes="node[01-"))


@pytest.mark.fast
@pytest.mark.parametrize("index,expected", [
    (0, ("tf_config", 0, 3, 0, 2, 0, 2)),
    (1, ("tf_config", 1, 3, 1, 2, 0, 2)),
    (2, ("tf_config", 2, 3, 0, 1, 1, 2)),
])
def test_detect_tf_config(index, expected):
    workers = ["hostA:2222", "hostA:2223", "hostB:2222"]
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
    c = detect(env)
    assert (c.launcher, c.rank, c.size, c.local_rank, c.local_size, c.node_rank, c.num_nodes) == expected
    assert c.hosts == tuple(workers) and c.job_id is None and c.is_chief == (index == 0)


@pytest.mark.fast
def test_slurm_tf_config_for_a_two_node_step():
    configs = [json.loads(slurm_tf_config(detect(srun_step(rank)), srun_step(rank))) for rank in range(4)]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": rank} for rank in range(4)]
    workers = configs[0]["cluster"]["worker"]
    assert all(c["cluster"]["worker"] == workers for c in configs)  # every task sees the same cluster
    hosts = [w.rsplit(":", 1)[0] for w in workers]
    ports = [int(w.rsplit(":", 1)[1]) for w in workers]
    assert hosts == ["node01", "node01", "node02", "node02"]  # rank order, block distribution
    assert len(set(workers)) == 4 and ports[0] != ports[1] and ports[2] != ports[3]  # distinct per node
    assert all(20000 <= p < 60000 for p in ports)


@pytest.mark.fast
def test_slurm_tf_config_ports_of_jobs_sharing_a_node_do_not_collide():
    def ports(job_id):
        env = srun_step(0, nodes="node01", per_node="4", tasks=4, job_id=job_id)
        return {w.rsplit(":", 1)[1] for w in json.loads(slurm_tf_config(detect(env), env))["cluster"]["worker"]}

    assert len(ports("100")) == 4 and not ports("100") & ports("101")


@pytest.mark.fast
@pytest.mark.parametrize("nodes,per_node,tasks", [
    ("node[01-02]", "2(x2)", 5),  # more tasks than the nodes hold
    ("node[01-02]", "2(x2)", 3),  # fewer
    ("node01", "2(x2)", 4),       # fewer nodes than tasks-per-node entries
])
def test_slurm_tf_config_error_when_tasks_do_not_fit(nodes, per_node, tasks):
    env = srun_step(0, nodes=nodes, per_node=per_node, tasks=tasks)
    with pytest.raises(ValueError, match=rf"^Slurm step of {tasks} tasks on .* cannot place every task$"):
        slurm_tf_config(detect(env), env)


# Large jobs: the forms Slurm writes for hundreds of nodes.
@pytest.mark.fast
@pytest.mark.parametrize("nodes,count", [("node[0001-1024]", 1024), ("gpu-[001-128,200-256]", 185),
                                         ("r[01-16]n[01-64]", 1024), ("a[1-500],b[1-500]", 1000)])
def test_hostlist_forms_of_large_jobs(nodes, count):
    hosts = expand_hostlist(nodes)
    assert len(hosts) == len(set(hosts)) == count and hosts == hostlist.expand_hostlist(nodes)


@pytest.mark.fast
@pytest.mark.parametrize("spec,expected", [("4(x256)", [4] * 256), ("8(x1023),4", [8] * 1023 + [4]),
                                           ("4(x2),2(x3),1", [4, 4, 2, 2, 2, 1])])
def test_tasks_per_node_forms_of_large_jobs(spec, expected):
    assert slurm_tasks_per_node(spec) == expected


@pytest.mark.fast
def test_slurm_tf_config_of_several_hosts_with_several_tasks_agrees_with_srun():
    """3 nodes x 4 tasks: every task's TF_CONFIG names the same 12 workers, and the node and local rank that
    detect() reads from it are srun's own (SLURM_NODEID, SLURM_LOCALID)."""
    steps = [srun_step(r, nodes="gpu[07-09]", per_node="4(x3)", tasks=12) for r in range(12)]
    configs = [slurm_tf_config(detect(env), env) for env in steps]
    workers = json.loads(configs[0])["cluster"]["worker"]
    assert [w.rsplit(":", 1)[0] for w in workers] == ["gpu07"] * 4 + ["gpu08"] * 4 + ["gpu09"] * 4
    assert len(set(workers)) == 12
    for env, config in zip(steps, configs):
        assert json.loads(config)["cluster"]["worker"] == workers
        c = detect({"TF_CONFIG": config})
        assert (c.rank, c.size, c.num_nodes, c.local_size) == (int(env["SLURM_PROCID"]), 12, 3, 4)
        assert (c.node_rank, c.local_rank) == (int(env["SLURM_NODEID"]), int(env["SLURM_LOCALID"]))
