"""A job whose training stops moving ends, naming the ranks that stopped: no rank waits for ever on a peer
that froze (SIGSTOP, a hung file system, a dead node behind a collective) or on a cut network.

Every rank keeps a heartbeat file in RUN/.ranks/ (its host, pid, steps done and when the last one ended),
written every few seconds by a thread whatever the training thread is doing. When no step (training or
validation) has ended on a rank for `distribute.stall_timeout` seconds, it reads its peers' heartbeats: a
peer whose file is no longer written stopped responding; peers whose files are fresh but whose steps stand
still are waiting too (then it is the link between them). The lowest rank still alive says so in one line
and ends its process, which makes the launcher end the job; the others follow a few seconds later, so that
no rank outlives the job, even where the launcher cannot reach them any more.
"""
import json
import os
import socket
import sys
import threading
import time

from hpctrain import compat
from hpctrain.atomic import write_text

keras = compat.keras()

EXIT_STALLED = 1


class StallWatchdog(keras.callbacks.Callback):
    """Started with the process (`start`), before the first collective; a Keras callback during training.
    Start-up (staging, the first collectives, building the model) may take twice `timeout`."""

    def __init__(self, run, rank, size, timeout, exit=os._exit):
        super().__init__()
        self.run = run
        self.rank, self.size, self.timeout, self._exit = rank, size, timeout, exit
        self.interval = max(0.2, min(5.0, timeout / 6))
        self.host = socket.gethostname()
        self.steps = 0
        self.started = self.progress = time.time()  # when the last step ended (or a phase began)
        self.phase = "starting"                      # then "training"; "idle" between and after fits
        self._done = threading.Event()
        self._thread = None

    def start(self):
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="hpctrain-watchdog", daemon=True)
        self._thread.start()
        return self

    # Progress, from the training thread.
    def on_train_begin(self, logs=None):
        self.progress, self.phase = time.time(), "training"

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.progress = time.time()

    def _moved(self, *args, **kwargs):
        self.progress = time.time()

    on_test_batch_end = on_epoch_end = _moved  # validation and checkpoints move too

    def on_train_end(self, logs=None):
        self.phase = "idle"

    def close(self):
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    # The watching thread.
    def _beat(self):
        record = {"rank": self.rank, "host": self.host, "pid": os.getpid(), "steps": self.steps,
                  "phase": self.phase, "started": self.started, "progress": self.progress, "alive": time.time()}
        self.run.ranks.mkdir(parents=True, exist_ok=True)
        write_text(self.run.heartbeat(self.rank), json.dumps(record))

    def _limit(self):
        return {"starting": 2 * self.timeout, "training": self.timeout}.get(self.phase)

    def _watch(self):
        while not self._done.wait(self.interval):
            try:
                self._beat()
            except OSError:
                pass  # a full or vanished file system must not end training by itself
            limit = self._limit()
            if limit is None or time.time() - self.progress < limit:
                continue
            others = self._peers()
            alive = sorted([self.rank, *(p["rank"] for p in others if not p["silent"])])
            if alive[0] != self.rank:  # a lower rank reports; this one follows if it cannot
                if self._done.wait(3 * self.interval + 2):
                    return
            line = f"hpctrain train: {self.diagnosis(others)}"
            print(line, file=sys.stderr, flush=True)
            try:  # for the launcher, which ends the job if its ranks cannot all be reached any more
                write_text(self.run.stalled, line + "\n")
            except OSError:
                pass
            self._exit(EXIT_STALLED)
            return

    def _peers(self):
        """The other ranks' heartbeats, each marked `silent` when it is no longer written."""
        now, peers = time.time(), []
        for rank in range(self.size):
            if rank == self.rank:
                continue
            try:
                record = json.loads(self.run.heartbeat(rank).read_text())
            except (OSError, ValueError):
                record = {}
            if record.get("started", 0) < self.started - 120:  # none, or an earlier run's
                record = {"rank": rank, "host": "?", "steps": None, "alive": None}
            record["silent"] = record["alive"] is None or now - record["alive"] > 3 * self.interval + 2
            peers.append(record)
        return peers

    def diagnosis(self, peers):
        """One line: how long nothing moved here, and which ranks stopped (or that all are alive)."""
        if self.phase == "starting":
            head = (f"rank {self.rank} ({self.host}) has not started training {time.time() - self.progress:.0f} s "
                    f"after it began (start-up may take 2 x distribute.stall_timeout = {2 * self.timeout:g} s)")
        else:
            head = (f"no training step ended for {time.time() - self.progress:.0f} s on rank {self.rank} "
                    f"({self.host}) after step {self.steps} (distribute.stall_timeout = {self.timeout:g} s)")
        silent = [p for p in peers if p["silent"]]
        if silent:
            now = time.time()
            named = ", ".join(
                f"rank {p['rank']} never started" if p["alive"] is None else
                f"rank {p['rank']} ({p['host']}, pid {p['pid']}) silent for {now - p['alive']:.0f} s "
                f"(last heard after step {p['steps']})" for p in silent)
            return f"{head}; stopped responding: {named}"
        waiting = ", ".join(f"{p['rank']} ({p['host']}) after step {p['steps']}" for p in peers)
        return (f"{head}; every rank is alive and waiting (ranks {waiting}): they cannot reach each other "
                f"(network?)")


def rank_hosts(run, size):
    """The host of each rank, from the heartbeats every rank wrote when training began (None: none found)."""
    hosts = []
    for rank in range(size):
        try:
            hosts.append(json.loads(run.heartbeat(rank).read_text())["host"])
        except (OSError, ValueError, KeyError):
            hosts.append(None)
    return hosts

