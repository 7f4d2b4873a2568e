"""How fast a 2-worker job ends when one rank dies: SIGKILL to rank 1 mid-training, per launcher.

    .venv/bin/python benchmarks/fault_latency.py

Prints the seconds from the kill to the launcher's exit and its exit code (tests/test_distributed.py
asserts the same thing stays under 60 s).
"""
import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from common import HPCTRAIN, pack_mnist, write_job


def rank_of(proc):
    try:
        env, cmd = proc.environ(), proc.cmdline()
    except psutil.Error:
        return None
    if "hpctrain" not in cmd or "train" not in cmd:
        return None
    for name in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK"):
        if name in env:
            return int(env[name])
    return json.loads(env["TF_CONFIG"])["task"]["index"] if "TF_CONFIG" in env else None


def main():
    with tempfile.TemporaryDirectory() as tmp:
        data = pack_mnist(tmp)
        job = write_job(Path(tmp) / "job.toml", name="kill", data={"path": str(data), "split": "holdout"},
                        model={"name": "lenet5"}, train={"batch_size": 16, "epochs": 1000, "validation": False},
                        output={"dir": f"{tmp}/run", "tensorboard": False})
        print("| backend | launcher | kill -> job end (s) | exit code |\n|---|---|---:|---:|")
        for backend, launcher in (("horovod", "mpirun"), ("horovod", "horovodrun"), ("multiworker", "local")):
            proc = subprocess.Popen([HPCTRAIN, "launch", "-n", "2", str(job), "--backend", backend, "--launcher",
                                     launcher, "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            me = psutil.Process(proc.pid)
            while not (Path(tmp) / "run" / "metrics.jsonl").exists():
                time.sleep(0.1)
            family = me.children(recursive=True)
            next(p for p in family if rank_of(p) == 1).kill()
            killed = time.monotonic()
            code = proc.wait(timeout=300)
            print(f"| {backend} | {launcher} | {time.monotonic() - killed:.1f} | {code} |", flush=True)
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            (Path(tmp) / "run" / "metrics.jsonl").unlink()


if __name__ == "__main__":
    main()
