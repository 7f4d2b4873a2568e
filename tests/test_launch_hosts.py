"""`hpctrain launch --hosts/--hostfile` without hosts: parsing, placement slot by slot, the command lines
of each launcher across hosts, and the interface setting. No subprocess."""
import json

import pytest

from hpctrain.distribute import network
from hpctrain.errors import UserError
from hpctrain.launch import hosts, local

pytestmark = pytest.mark.fast


def test_hosts_with_and_without_slots():
    assert hosts.parse_hosts("node1:2,node2") == (hosts.Host("node1", 2), hosts.Host("node2", 1))
    assert hosts.parse_hosts(" gpu-01.cluster:4 , gpu-02.cluster:4 ") == (hosts.Host("gpu-01.cluster", 4),
                                                                          hosts.Host("gpu-02.cluster", 4))


@pytest.mark.parametrize("text,fragment", [("node1:x", "is not HOST or HOST:SLOTS"), ("node1:0", "at least 1 slot"),
                                           ("node1,node1", "named twice"), (",", "no host"),
                                           ("no de", "is not a host name"), ("node1:-1", "HOST:SLOTS")])
def test_malformed_hosts_are_user_errors(text, fragment):
    with pytest.raises(UserError, match=fragment):
        hosts.parse_hosts(text)


def test_open_mpi_hostfile(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# from the site's allocation\nnode1 slots=2\n\nnode2 slots=2 max_slots=4  # two GPUs\nnode3\n")
    assert hosts.read_hostfile(f) == (hosts.Host("node1", 2), hosts.Host("node2", 2), hosts.Host("node3", 1))


@pytest.mark.parametrize("text,fragment", [("node1 slots=two\n", "line 1: expected 'HOST slots=N'"),
                                           ("node1 cpus=2\n", "line 1: expected"), ("# none\n", "names no host"),
                                           ("node1\nnode1\n", "named twice")])
def test_malformed_hostfiles_are_user_errors(tmp_path, text, fragment):
    f = tmp_path / "hosts"
    f.write_text(text)
    with pytest.raises(UserError, match=fragment):
        hosts.read_hostfile(f)
    with pytest.raises(UserError, match="cannot read hostfile"):
        hosts.read_hostfile(tmp_path / "missing")


def test_placement_fills_slot_by_slot_and_refuses_more_workers_than_slots():
    two = hosts.parse_hosts("node1:2,node2:2")
    assert hosts.placement(two) == ["node1", "node1", "node2", "node2"]
    assert hosts.placement(two, 3) == ["node1", "node1", "node2"]
    with pytest.raises(UserError, match="5 workers do not fit the 4 slots of node1:2,node2:2"):
        hosts.placement(two, 5)


def where(interface="eth0"):
    answers = {"node1": hosts.Answer("node1", "10.1.0.11", (7001, 7002)),
               "node2": hosts.Answer("node2", "10.1.0.12", (7101, 7102))}
    return hosts.Placement(("node1", "node1", "node2", "node2"), answers, interface)


def test_placement_addresses_are_one_free_port_per_worker_on_its_host():
    w = where()
    assert w.counts() == "node1:2,node2:2"
    assert w.addresses() == ["10.1.0.11:7001", "10.1.0.11:7002", "10.1.0.12:7101", "10.1.0.12:7102"]


def test_open_mpi_across_hosts_uses_tcp_on_the_interface_and_the_agent(monkeypatch):
    monkeypatch.setenv("HPCTRAIN_RSH", "/opt/site/bin/rsh-agent")
    cmd = local.OPEN_MPI.command("mpirun", 4, ["python", "-m", "hpctrain"], {"PATH": "/bin"}, where())
    joined = " ".join(cmd)
    assert "-H node1:2,node2:2" in joined and "--mca plm_rsh_agent /opt/site/bin/rsh-agent" in joined
    assert "--mca btl_tcp_if_include eth0" in joined and "--mca oob_tcp_if_include eth0" in joined
    assert "self,vader" not in joined  # shared memory alone cannot reach the other node
    assert cmd[-3:] == ["python", "-m", "hpctrain"]


def test_hydra_across_hosts():
    cmd = " ".join(local.MPICH.command("mpiexec", 4, ["python"], {}, where()))
    assert "-hosts node1:2,node2:2 -launcher ssh -launcher-exec ssh" in cmd and "-iface eth0" in cmd


def test_horovodrun_across_hosts():
    cmd = local.horovodrun_command(4, ["python"], where())
    assert cmd[1:] == ["--gloo", "-np", "4", "-H", "node1:2,node2:2", "--network-interfaces", "eth0", "python"]


def test_multiworker_across_hosts_gets_one_tf_config_per_worker(monkeypatch):
    monkeypatch.setattr(hosts, "is_local", lambda name: name == "node1")
    workers = local._workers(4, ["python", "-m", "hpctrain", "train", "job.toml"], {"PATH": "/v/bin", "X": "no"},
                             where())
    names = [name for name, *_ in workers]
    assert names == ["worker 0 (node1)", "worker 1 (node1)", "worker 2 (node2)", "worker 3 (node2)"]
    here = json.loads(workers[1][2]["TF_CONFIG"])
    assert here["task"]["index"] == 1 and here["cluster"]["worker"][2] == "10.1.0.12:7101"
    remote = workers[2][1]
    assert remote[:4] == ["ssh", "-o", "BatchMode=yes", "node2"] and len(remote) == 5
    assert "PATH=/v/bin" in remote[4] and "X=no" not in remote[4] and '"index": 2' in remote[4]


def test_one_interface_setting_reaches_every_transport():
    variables = network.variables("ib0")
    assert {"OMPI_MCA_btl_tcp_if_include", "OMPI_MCA_oob_tcp_if_include", "HOROVOD_GLOO_IFACE",
            "NCCL_SOCKET_IFNAME"} <= set(variables) and set(variables.values()) == {"ib0"}
    assert network.variables(None) == {}
    assert network.chosen(None, {"HPCTRAIN_INTERFACE": "eth1"}) == "eth1"
    assert network.chosen("ib0", {"HPCTRAIN_INTERFACE": "eth1"}) == "ib0"


def test_an_interface_this_host_lacks_is_a_user_error_naming_the_ones_it_has():
    assert network.address("lo") == "127.0.0.1"
    with pytest.raises(UserError, match=r"interface ib9 not found on .+ \(it has .*lo"):
        network.address("ib9")
