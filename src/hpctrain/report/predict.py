"""What N workers would give: step time, throughput and efficiency for N beyond the measured runs, from the
measured 1-worker step and the gradient exchange a ring allreduce needs (Patarasuk & Yuan 2009, as Horovod
and NCCL run it):

    step(N)     = step(1) + exchange(N)            (weak scaling: each worker keeps its batch)
    exchange(N) = messages x (overhead + 2(N-1) x latency) + 2(N-1)/N x gradient bytes / bandwidth

messages: the gradient bytes over the backend's fusion buffer (timing.json's environment.exchange), at least
1. With W workers per node (`workers_per_node`, Horovod's hierarchical allreduce) the exchange is a ring of
W inside each node over the node's own network plus a ring of N/W nodes over the cluster network, each node
carrying its whole gradient set. The exchange is not overlapped with compute in this model: measured N-worker
runs show how much of it training hid (their step against the prediction).

The network (latency per ring step, bandwidth per link) is given, e.g. "100Gbit/s,2us", or measured by
`hpctrain bench allreduce` on n workers: the bandwidth of the backend's fit, the latency of the plain MPI
reference's fit over its 2(n-1) ring steps. The overhead is the backend's own cost per message beyond the
network's (Horovod's cycle and negotiation): its fit's latency minus the reference's, from a benchmark file.
Without a reference the whole measured latency is spread over the ring steps, which errs on the slow side;
without a benchmark file the overhead is 0, which errs on the fast one.

Time to target at N workers: the samples a run needs to reach the target at global batch N x B, measured
(N workers, or 1 worker accumulating N micro-batches: the same updates), over the predicted samples/s:

    time_to_target(N) = samples_to_target(N x B) / samples_per_s(N)

Between two measured global batches the samples are interpolated in log-log; beyond them nothing is predicted
(statistical efficiency is not extrapolated). It counts training steps only: no validation, no start-up.
"""
import json
import math
import re
from dataclasses import dataclass

from hpctrain.distribute.allreduce_bench import bus_factor
from hpctrain.distribute.backends import GRADIENT_BYTES
from hpctrain.errors import UserError

_RATE = {"gbit/s": 1e9 / 8, "mbit/s": 1e6 / 8, "gb/s": 1e9, "mb/s": 1e6}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class Network:
    latency: float    # seconds per ring step
    bandwidth: float  # bytes/s each link carries (the ring's bus bandwidth)
    source: str

    def ring(self, nbytes, n):
        """(latency seconds per message, bandwidth seconds) of a ring allreduce of nbytes over n."""
        if n <= 1:
            return 0.0, 0.0
        return 2 * (n - 1) * self.latency, bus_factor(n) * nbytes / self.bandwidth


def parse_network(text):
    """'100Gbit/s,2us' (rates in Gbit/s, Mbit/s, GB/s, MB/s; latency in s, ms, us, ns) -> Network."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([GM](?:bit|B)/s)\s*,\s*([\d.]+)\s*(s|ms|us|ns)\s*", text or "", re.I)
    try:
        rate, latency = float(match[1]) * _RATE[match[2].lower()], float(match[3]) * _TIME[match[4].lower()]
    except (TypeError, ValueError, KeyError):
        raise UserError(f"network {text!r}: expected BANDWIDTH,LATENCY such as 100Gbit/s,2us or 12GB/s,1.5us") from None
    if rate <= 0 or latency < 0:
        raise UserError(f"network {text!r}: the bandwidth must be positive")
    return Network(latency, rate, text.strip())


@dataclass(frozen=True)
class Bench:
    """A `hpctrain bench allreduce -o FILE` result: the network it measured and the backend's overhead."""
    path: str
    result: dict

    @classmethod
    def load(cls, path):
        try:
            result = json.loads(open(path).read())
            fit, n, _ = result["fit"], result["workers"], result["exchange"]["bytes_per_value"]  # all present
        except FileNotFoundError:
            raise UserError(f"allreduce result {path} does not exist") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not a result of hpctrain bench allreduce -o: {e}") from None
        if not fit or n < 2:
            raise UserError(f"{path}: the benchmark ran on {n} worker(s) and {len(result.get('rows', []))} sizes; "
                            "the network needs 2 workers and 2 sizes at least")
        return cls(str(path), result)

    def curve(self):
        """The bus bandwidth against message size, the backend's and the plain MPI reference's (the report's
        allreduce plot)."""
        r = self.result
        return {"collective": r["collective"], "workers": r["workers"], "reference": r.get("reference"),
                "rows": [{"bytes": row["bytes"], "busbw_GBps": row["busbw_GBps"],
                          "reference_busbw_GBps": (row.get("reference") or {}).get("busbw_GBps")}
                         for row in r["rows"]],
                "gradient_set": {k: r["gradient_set"][k] for k in ("bytes", "busbw_GBps")}
                if r.get("gradient_set") else None}

    def network(self, parameters=None):
        """(Network, overhead seconds per message). When the job's gradient set has `parameters` values, the
        bandwidth is the one that exchange reached (the tensors and fusion training exchanges); otherwise the
        fit's over the message sizes. Bandwidths are of the bytes on the wire (the bench's float32 payload
        under its compression)."""
        result = self.result
        fit, n, grads = result["fit"], result["workers"], result.get("gradient_set")
        base = result.get("reference_fit") or fit
        bandwidth, what = fit["busbw_GBps"] * 1e9, "fit over the sizes"
        if grads and grads.get("values") == parameters and grads["time_s"] > fit["latency_s"]:
            bandwidth = bus_factor(n) * grads["bytes"] / (grads["time_s"] - fit["latency_s"])
            what = "bandwidth of the job's gradient set"
        bandwidth *= result["exchange"]["bytes_per_value"] / GRADIENT_BYTES
        source = f"measured: {self.path} ({result['collective']}, {n} workers; {what})"
        return (Network(base["latency_s"] / (2 * (n - 1)), bandwidth, source),
                max(0.0, fit["latency_s"] - base["latency_s"]))


@dataclass(frozen=True)
class Model:
    step: float                  # measured 1-worker step, seconds
    batch: int                   # samples per worker per step (strong: of all workers together)
    gradient_bytes: int
    messages: int                # fused messages per exchange
    network: Network
    overhead: float = 0.0        # the backend's seconds per message beyond the network's latency
    workers_per_node: int = 1
    node_network: Network | None = None
    split: int | None = None     # strong scaling: the batch that N workers split (N must divide it); None: weak

    @classmethod
    def of_run(cls, timing, network, overhead=0.0, workers_per_node=1, node_network=None):
        """The model of a 1-worker run's Timing (one that measured its steps)."""
        exchange = timing.environment.get("exchange") or {}
        nbytes = exchange.get("bytes_per_value", GRADIENT_BYTES) * timing.parameters  # older runs: float32
        fusion = exchange.get("fusion_bytes")
        if fusion == 0:  # every gradient its own message
            messages = timing.gradient_tensors or 1
        else:
            messages = math.ceil(nbytes / fusion) if fusion else 1
        return cls(timing.throughput["step_time_median"], timing.global_batch, nbytes, max(1, messages), network,
                   overhead, workers_per_node, node_network,
                   timing.per_worker_batch if timing.scaling == "strong" else None)

    @property
    def scaling(self):
        return "weak" if self.split is None else "strong"

    def runs_on(self, n):
        return self.split is None or self.split % n == 0

    def global_batch(self, n):
        return n * self.batch if self.split is None else self.batch

    def predict(self, n):
        """{workers, step_s, latency_s, bandwidth_s, samples_per_s, efficiency, limit} at n workers."""
        w = self.workers_per_node
        if w > 1 and n > w:
            parts = [self.node_network.ring(self.gradient_bytes, w),
                     self.network.ring(self.gradient_bytes, math.ceil(n / w))]
        else:
            parts = [(self.node_network if w > 1 else self.network).ring(self.gradient_bytes, n)]
        latency = self.messages * (self.overhead * (n > 1) + sum(p[0] for p in parts))
        bandwidth = sum(p[1] for p in parts)
        compute = self.step if self.split is None else self.step / n  # strong: each worker computes 1/n of the batch
        step = compute + latency + bandwidth
        limit = max((("compute", compute), ("latency", latency), ("bandwidth", bandwidth)), key=lambda kv: kv[1])[0]
        samples_per_s = self.global_batch(n) / step
        return {"workers": n, "global_batch": self.global_batch(n), "step_s": step, "latency_s": latency,
                "bandwidth_s": bandwidth, "samples_per_s": samples_per_s,
                "efficiency": samples_per_s * self.step / (n * self.batch), "limit": limit}

    def describe(self):
        nodes = (f", {self.workers_per_node} workers per node over {self.node_network.source}"
                 if self.workers_per_node > 1 else "")
        split = (f"; strong scaling: the counts that split the batch of {self.split}" if self.split else "")
        return (f"1-worker step {1e3 * self.step:.1f} ms, {self.gradient_bytes / 1e6:.1f} MB of gradients in "
                f"{self.messages} message(s) per step, ring allreduce over {self.network.source} "
                f"({self.network.bandwidth * 8 / 1e9:.2f} Gbit/s, {1e6 * self.network.latency:.1f} us per ring step), "
                f"{1e3 * self.overhead:.2f} ms of the backend's own per message" + nodes + split)


@dataclass(frozen=True)
class Request:
    """What `--predict` asks for: worker counts, and the network(s) to predict them on: given, or measured
    by a `bench allreduce` result (`allreduce`; with a given network, only its overhead is taken)."""
    counts: tuple
    network: Network | None = None
    allreduce: Bench | None = None
    workers_per_node: int = 1
    node_network: Network | None = None

    def __post_init__(self):
        if self.network is None and self.allreduce is None:
            raise UserError("--predict needs the network: --network BANDWIDTH,LATENCY, --allreduce FILE, or both")
        if self.workers_per_node < 1:
            raise UserError(f"--workers-per-node must be at least 1, not {self.workers_per_node}")
        if self.workers_per_node > 1 and self.node_network is None:
            raise UserError("--workers-per-node above 1 needs --node-network (the network inside a node)")


def for_group(timings, rows, request):
    """The prediction of a report group (its runs' Timings, its table rows): {"model", "rows"}; None when the
    group has no finished 1-worker run (its step time)."""
    single = [t for t in timings if t.world_size == 1 and t.throughput]
    if not single:
        return None
    network, overhead = request.network, 0.0
    if request.allreduce is not None:
        found, overhead = request.allreduce.network(single[0].parameters)
        network = network or found
    model = Model.of_run(single[0], network, overhead, request.workers_per_node, request.node_network)
    return {"model": model.describe(), "scaling": model.scaling, "rows": prediction(rows, model, request.counts),
            "allreduce": request.allreduce.curve() if request.allreduce else None}


def prediction(rows, model, counts):
    """The predicted rows for `counts`, each with the measured figures of a report row of the same count."""
    measured = {r["workers"]: r for r in rows}
    out = []
    for n in sorted(set(counts) | set(measured)):
        if not model.runs_on(n):
            continue
        row = model.predict(n)
        if n in measured and measured[n]["samples_per_s"]:
            row["measured_samples_per_s"] = measured[n]["samples_per_s"]
            row["error"] = row["samples_per_s"] / measured[n]["samples_per_s"] - 1
        out.append(row)
    return out


def samples_to_target(measured, global_batch):
    """Samples to the target at `global_batch`, from {global batch: samples measured}: log-log between the two
    measured batches around it, None outside them."""
    below = [g for g in measured if g <= global_batch]
    above = [g for g in measured if g >= global_batch]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    if lo == hi:
        return measured[lo]
    share = math.log(global_batch / lo) / math.log(hi / lo)
    return math.exp((1 - share) * math.log(measured[lo]) + share * math.log(measured[hi]))


def add_time_to_target(predicted, measured):
    """Adds samples_to_target and time_to_target_s to the predicted rows where their global batch is within
    the measured ones ({global batch: samples to target})."""
    for row in predicted["rows"]:
        samples = samples_to_target(measured, row["global_batch"])
        row["samples_to_target"] = samples
        row["time_to_target_s"] = samples / row["samples_per_s"] if samples else None
    predicted["targets_measured"] = dict(sorted(measured.items()))


def markdown(predicted):
    to_target = "targets_measured" in predicted
    lines = [f"Predicted ({predicted['scaling']} scaling): {predicted['model']}.", "",
             "| workers | step (ms) | exchange: latency (ms) | exchange: bandwidth (ms) | samples/s | efficiency "
             "| limited by | measured samples/s | prediction error |"
             + (" samples to target | time to target (s) |" if to_target else ""),
             "|---:|---:|---:|---:|---:|---:|---|---:|---:|" + ("---:|---:|" if to_target else "")]
    for r in predicted["rows"]:
        measured = r.get("measured_samples_per_s")
        against = (f"{measured:.1f} | {100 * r['error']:+.1f} %") if measured else "- | -"
        target = (f" {r['samples_to_target']:.0f} | {r['time_to_target_s']:.1f} |" if r.get("samples_to_target")
                  else " - | - |") if to_target else ""
        lines.append(f"| {r['workers']} | {1e3 * r['step_s']:.1f} | {1e3 * r['latency_s']:.2f} | "
                     f"{1e3 * r['bandwidth_s']:.2f} | {r['samples_per_s']:.1f} | {100 * r['efficiency']:.1f} % | "
                     f"{r['limit']} | {against} |" + target)
    if to_target:
        batches = ", ".join(f"{g}: {s:.0f}" for g, s in predicted["targets_measured"].items())
        lines += ["", f"Time to target predicted: the samples measured to reach the target at each global batch "
                  f"({batches}; log-log between them, nothing beyond) over the predicted samples/s; training steps "
                  "only, without validation or start-up."]
    return "\n".join(lines)
