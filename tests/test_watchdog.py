"""The stall watchdog (hpctrain.train.watchdog) without a job: its diagnosis from peers' heartbeats, and a
rank whose steps stop ending is ended with one line. No subprocess."""
import json
import time

import pytest

from hpctrain.rundir import RunDir
from hpctrain.train.watchdog import EXIT_STALLED, StallWatchdog, rank_hosts

pytestmark = pytest.mark.fast


def heartbeat(run, rank, host, age, started_ago=10, steps=40):
    now = time.time()
    run.ranks.mkdir(parents=True, exist_ok=True)
    run.heartbeat(rank).write_text(json.dumps({"rank": rank, "host": host, "pid": 4242, "steps": steps,
                                               "phase": "training", "started": now - started_ago,
                                               "progress": now - age, "alive": now - age}))


def test_a_silent_peer_is_named_with_its_host_and_last_step(tmp_path):
    run = RunDir(tmp_path)
    dog = StallWatchdog(run, 0, 3, timeout=30)
    dog.on_train_begin()
    heartbeat(run, 1, "node2", age=40)
    heartbeat(run, 2, "node3", age=1)
    line = dog.diagnosis(dog._peers())
    assert "(distribute.stall_timeout = 30 s)" in line
    assert "stopped responding: rank 1 (node2, pid 4242) silent for 40 s (last heard after step 40)" in line
    assert "node3" not in line


def test_peers_all_alive_and_waiting_point_at_the_network(tmp_path):
    run = RunDir(tmp_path)
    dog = StallWatchdog(run, 1, 2, timeout=30)
    heartbeat(run, 0, "node1", age=1)
    assert "every rank is alive and waiting (ranks 0 (node1) after step 40): they cannot reach each other" \
        in dog.diagnosis(dog._peers())


def test_a_peer_without_a_heartbeat_of_this_run_never_started(tmp_path):
    run = RunDir(tmp_path)
    dog = StallWatchdog(run, 0, 3, timeout=30)
    heartbeat(run, 1, "node2", age=3600, started_ago=7200)  # left by an earlier run
    line = dog.diagnosis(dog._peers())
    assert line.startswith("rank 0 (") and "has not started training" in line  # still in its start-up
    assert "rank 1 never started" in line and "rank 2 never started" in line


def test_a_rank_whose_steps_stop_is_ended_with_one_line(tmp_path, capsys):
    run = RunDir(tmp_path)
    ended = []
    dog = StallWatchdog(run, 0, 2, timeout=0.6, exit=ended.append).start()
    try:
        dog.on_train_begin()
        heartbeat(run, 1, "node2", age=0)
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            heartbeat(run, 1, "node2", age=0)  # alive, but no step ends anywhere
            time.sleep(0.05)
    finally:
        dog.close()
    assert ended == [EXIT_STALLED]
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hpctrain train: no training step ended for") and "every rank is alive" in line
    assert run.stalled.read_text().strip() == line  # for the launcher
    assert rank_hosts(run, 2)[1] == "node2"


def test_steps_that_keep_ending_keep_the_job(tmp_path):
    run = RunDir(tmp_path)
    ended = []
    dog = StallWatchdog(run, 0, 1, timeout=0.6, exit=ended.append).start()
    try:
        dog.on_train_begin()
        for _ in range(30):
            dog.on_train_batch_end(0)
            time.sleep(0.05)
    finally:
        dog.close()
    assert ended == [] and json.loads(run.heartbeat(0).read_text())["steps"] > 0
