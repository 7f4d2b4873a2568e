"""stage_to_node with real processes as the local ranks of one node and a real barrier."""
import multiprocessing
import os

import pytest

from hpctrain.errors import UserError


def _local_rank(source, stage_dir, local_rank, barrier, results):
    from hpctrain.data.staging import stage_to_node

    try:
        results.put((local_rank, str(stage_to_node(source, stage_dir, local_rank=local_rank, barrier=barrier.wait))))
    except UserError as e:
        results.put((local_rank, f"UserError: {e}"))


def stage_on_node(source, stage_dir, ranks=3):
    """Runs `ranks` processes staging `source`; returns what each returned, by local rank."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(ranks, timeout=60), context.Queue()
    workers = [context.Process(target=_local_rank, args=(source, stage_dir, r, barrier, results))
               for r in range(ranks)]
    for w in workers:
        w.start()
    got = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    return [got[r] for r in range(ranks)]


def test_one_copy_per_node_reused_when_identical(tmp_path, small_dataset):
    stage = tmp_path / "node-local" / "stage"
    target = stage / small_dataset.name
    assert stage_on_node(small_dataset, stage) == [str(target)] * 3
    assert target.read_bytes() == small_dataset.read_bytes()
    inode = os.stat(target).st_ino
    assert stage_on_node(small_dataset, stage) == [str(target)] * 3
    assert os.stat(target).st_ino == inode  # identical copy kept, not copied again
    assert sorted(p.name for p in stage.iterdir()) == [small_dataset.name]  # no temporary files left


def test_a_changed_source_is_copied_again(tmp_path, small_dataset):
    import h5py

    stage = tmp_path / "stage"
    stage_on_node(small_dataset, stage)
    changed = tmp_path / "changed" / small_dataset.name
    changed.parent.mkdir()
    changed.write_bytes(small_dataset.read_bytes())
    with h5py.File(changed, "r+") as f:
        f.attrs["content_sha256"] = "0" * 64
    assert stage_on_node(changed, stage, ranks=2) == [str(stage / small_dataset.name)] * 2
    assert (stage / small_dataset.name).read_bytes() == changed.read_bytes()


def test_a_failed_copy_fails_every_rank(tmp_path, small_dataset):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    results = stage_on_node(small_dataset, blocked / "stage", ranks=2)
    assert results[0].startswith("UserError: cannot stage") and "file-not-folder" in results[0]
    assert results[1].startswith("UserError:") and "staging failed on local rank 0" in results[1]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from hpctrain.data import synthetic

    return synthetic.pack(tmp_path_factory.mktemp("source") / "em.h5", count=4, size=32, seed=0)
