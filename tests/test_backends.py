"""Each backend states its own facts: how it is started on one node and laid out on Slurm."""
import pytest

from hpctrain.distribute import backends
from hpctrain.errors import UserError

pytestmark = pytest.mark.fast
B = backends.BACKENDS


@pytest.mark.parametrize("name,n,launcher,expected", [
    ("none", 1, None, ("local", 1, [])),
    ("horovod", 4, None, ("mpirun", 4, [])),
    ("horovod", 2, "horovodrun", ("horovodrun", 2, [])),
    ("multiworker", 3, None, ("local", 3, [])),
    ("mirrored", 2, None, ("local", 1, ["distribute.devices=2"])),  # one process, two replicas
])
def test_local_plans(name, n, launcher, expected):
    assert B[name].local_plan(n, launcher) == expected


@pytest.mark.parametrize("name,n,launcher,message", [
    ("none", 2, None, "backend 'none' trains on one worker; choose --backend horovod, mirrored or multiworker"),
    ("horovod", 2, "local", "backend 'horovod' is started with --launcher mpirun or horovodrun on one node, not local"),
    ("multiworker", 2, "mpirun", "backend 'multiworker' is started with --launcher local on one node, not mpirun"),
    ("horovod", 0, None, "number of workers must be at least 1, not 0"),
])
def test_impossible_local_plans(name, n, launcher, message):
    with pytest.raises(UserError) as e:
        B[name].local_plan(n, launcher)
    assert str(e.value) == message


def test_facts_that_the_loop_and_submit_read():
    assert [name for name, b in B.items() if b.every_worker_saves] == ["mirrored", "multiworker"]
    assert [name for name, b in B.items() if b.multi_process] == ["horovod", "multiworker"]
    assert {name: b.slurm_templates[:1] for name, b in B.items()} == {
        "none": (), "horovod": ("horovod-srun",), "mirrored": ("mirrored",), "multiworker": ("multiworker",)}
