"""`hpctrain bench allreduce`: the time of one sum over all workers through the backend's own collective
(`Backend.collective`), for message sizes from 4 B to 256 MB, as nccl-tests and the OSU micro-benchmarks
measure it, on the workers of the job it runs in.

Each size is timed in `repeats` blocks of `iterations(bytes)` back-to-back calls, after 2 untimed ones; a
block starts after a barrier and its time per call is the slowest rank's. Bandwidths follow nccl-tests:
algbw = bytes / time, busbw = algbw x 2(n-1)/n (the bytes a ring moves over each link, so that busbw is
comparable across worker counts and with the link's own rate). Under MPI the same sizes are also timed with
a plain mpi4py `Allreduce` in turn with the backend's (the physical reference of the same processes).
"""
import math
import re
import statistics
import time

import numpy as np

from hpctrain import compat
from hpctrain.distribute.backends import GRADIENT_BYTES
from hpctrain.errors import UserError

MIN_BYTES, MAX_BYTES, FACTOR = GRADIENT_BYTES, 256 << 20, 2
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text):
    """'4', '4B', '64K', '256M', '1G' (binary units, as nccl-tests) -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match or int(match[1]) < 1:
        raise UserError(f"{text!r} is not a message size (e.g. 4, 64K, 256M)")
    return int(match[1]) * _UNITS[match[2].upper()]


def sizes(lo=MIN_BYTES, hi=MAX_BYTES, factor=FACTOR):
    """Message sizes lo, lo x factor, ... up to hi, each a whole number of float32 values."""
    if lo > hi:
        raise UserError(f"the smallest message ({lo} B) is larger than the largest ({hi} B)")
    if factor < 2:
        raise UserError(f"the size factor must be at least 2, not {factor}")
    out, size = [], lo
    while size <= hi:
        out.append(max(GRADIENT_BYTES, size - size % GRADIENT_BYTES))
        size *= factor
    return out


def iterations(nbytes):
    """Calls per timed block: 1000 for small messages, fewer as they grow (at least 32 MB per block), 5 at least."""
    return max(5, min(1000, (32 << 20) // nbytes))


def bus_factor(n):
    """nccl-tests' busbw / algbw of an allreduce over n ranks."""
    return 2 * (n - 1) / n


def _call(total, tensors):
    """One sum of `tensors`, waited for (one value of its first result is fetched)."""
    return lambda: np.asarray(total(tensors)[0][:1])


def _blocks(call, iters, repeats, backend):
    """(wall, CPU) seconds per call of each block, the slowest rank's (the CPU seconds are what the call takes
    from the process's cores, that training could compute with)."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        backend.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(iters):
            call()
        times.append((backend.allreduce((time.perf_counter() - start) / iters, "max"),
                      backend.allreduce((time.process_time() - cpu) / iters, "max")))
    return times


def _mpi_reference(backend):
    """A plain mpi4py Allreduce over the same processes, or None when they are not one MPI job."""
    if not backend.mpi_job:
        return None
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != backend.size:
        return None

    def reference(nbytes):
        send, recv = np.ones(nbytes // GRADIENT_BYTES, np.float32), np.empty(nbytes // GRADIENT_BYTES, np.float32)
        return lambda: comm.Allreduce(send, recv, op=MPI.SUM)

    return reference


def _row(nbytes, iters, blocks, n, reference=None):
    """The row of one size from its blocks' (wall, CPU) seconds per call, and the reference's."""
    times = [wall for wall, _ in blocks]
    t = statistics.median(times)
    row = {"bytes": nbytes, "iterations": iters, "time_s": t, "time_s_range": [min(times), max(times)],
           "cpu_s": statistics.median(cpu for _, cpu in blocks),
           "algbw_GBps": nbytes / t / 1e9, "busbw_GBps": nbytes / t / 1e9 * bus_factor(n)}
    if reference:
        ref = [wall for wall, _ in reference]
        r = statistics.median(ref)
        row["reference"] = {"time_s": r, "time_s_range": [min(ref), max(ref)],
                            "busbw_GBps": nbytes / r / 1e9 * bus_factor(n)}
    return row


def run(backend, message_sizes, repeats=3, gradient_shapes=None):
    """The benchmark on this process's part of the job; every rank returns the same result dict."""
    if not backend.scales():
        raise UserError(f"backend {backend.name!r} has one worker and no collective to time")
    tf = compat.tf()
    total, exchange = backend.collective(), backend.exchange()
    n = backend.replicas
    reference = _mpi_reference(backend)
    rows = []
    for nbytes in message_sizes:
        x = [tf.ones([nbytes // GRADIENT_BYTES], tf.float32)]
        ours_call = _call(total, x)
        ref_call = reference(nbytes) if reference else None
        iters = iterations(nbytes)
        ours, ref = [], []
        for _ in range(repeats):  # the backend's and the reference's blocks in turn
            ours += _blocks(ours_call, iters, 1, backend)
            if ref_call:
                ref += _blocks(ref_call, iters, 1, backend)
        rows.append(_row(nbytes, iters, ours, n, ref))
    result = {"collective": exchange["collective"], "exchange": exchange, "backend": backend.name, "workers": n,
              "processes": backend.size, "repeats": repeats, "rows": rows,
              "reference": "mpi4py Allreduce (MPI_SUM, float32)" if reference else None,
              "fit": fit(rows, n), "reference_fit": fit([r["reference"] | {"bytes": r["bytes"]} for r in rows], n)
              if reference else None}
    if gradient_shapes:
        grads = [tf.ones(shape, tf.float32) for shape in gradient_shapes]
        values = sum(math.prod(shape) for shape in gradient_shapes)
        iters = max(3, iterations(GRADIENT_BYTES * values))
        times = _blocks(_call(total, grads), iters, repeats, backend)
        result["gradient_set"] = {"tensors": len(grads), "values": values,
                                  **_row(GRADIENT_BYTES * values, iters, times, n)}
    return result


def fit(rows, n):
    """time(bytes) = latency + bytes / (algbw): the least-squares fit of the measured times, each weighted by
    its own size (relative errors), with busbw = algbw x 2(n-1)/n. None with fewer than 2 sizes."""
    if len(rows) < 2:
        return None
    s = np.array([r["bytes"] for r in rows], float)
    t = np.array([r["time_s"] for r in rows], float)
    (latency, per_byte), *_ = np.linalg.lstsq(np.stack([1 / t, s / t], axis=1), np.ones_like(t), rcond=None)
    latency, per_byte = max(float(latency), 0.0), max(float(per_byte), 1e-15)
    return {"latency_s": latency, "algbw_GBps": 1 / per_byte / 1e9, "busbw_GBps": bus_factor(n) / per_byte / 1e9}


def _size_text(nbytes):
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B" if nbytes < 1024 else f"{nbytes / (1 << 20):.1f}M"


def table(result):
    """The result as a Markdown table with a heading line, as printed."""
    ref = result["reference"]
    lines = [f"allreduce (sum, float32): {result['collective']}, {result['workers']} workers in "
             f"{result['processes']} processes; median of {result['repeats']} blocks, the slowest rank's time",
             "| size | iterations | time (us) | algbw (GB/s) | busbw (GB/s) |"
             + (" reference time (us) | reference busbw (GB/s) | busbw / reference |" if ref else ""),
             "|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if ref else "")]
    for row in result["rows"] + ([{**result["gradient_set"], "label": "gradient set"}]
                                 if result.get("gradient_set") else []):
        line = (f"| {row.get('label', _size_text(row['bytes']))} | {row['iterations']} | {1e6 * row['time_s']:.1f} | "
                f"{row['algbw_GBps']:.3f} | {row['busbw_GBps']:.3f} |")
        if ref and "reference" in row:
            r = row["reference"]
            share = row["busbw_GBps"] / r["busbw_GBps"] if r["busbw_GBps"] else float("nan")
            line += f" {1e6 * r['time_s']:.1f} | {r['busbw_GBps']:.3f} | {share:.2f} |"
        elif ref:
            line += " | | |"
        lines.append(line)
    if result.get("gradient_set"):
        g = result["gradient_set"]
        lines.append(f"gradient set: the job's model, {g['tensors']} tensors, {g['bytes'] / 1e6:.1f} MB, exchanged "
                     f"as training exchanges it; {1e6 * g['cpu_s']:.1f} us of CPU per exchange")
    if result["fit"]:
        f = result["fit"]
        lines.append(f"fit: time = {1e6 * f['latency_s']:.1f} us + bytes / {f['algbw_GBps']:.3f} GB/s "
                     f"(busbw {f['busbw_GBps']:.3f} GB/s)")
    if ref:
        lines.append(f"reference: {ref}, the same processes, in turn with each block")
    return "\n".join(lines)
