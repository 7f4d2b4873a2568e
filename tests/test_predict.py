"""The allreduce benchmark's arithmetic and the scaling model, on figures written here: sizes, bus bandwidth,
the latency/bandwidth fit, the ring model's terms, fusion, hierarchical rings, and bad input."""
import json

import pytest

from hpctrain.distribute import allreduce_bench as bench
from hpctrain.errors import UserError
from hpctrain.report import predict, scaling
from test_report import run as timing_run

pytestmark = pytest.mark.fast


def test_sizes_and_units():
    assert bench.parse_bytes("4") == 4 and bench.parse_bytes("64K") == 65536 and bench.parse_bytes("256MB") == 256 << 20
    assert bench.sizes(4, 64, 4) == [4, 16, 64]
    assert bench.sizes()[0] == 4 and bench.sizes()[-1] == 256 << 20 and len(bench.sizes()) == 27
    assert bench.iterations(4) == 1000 and bench.iterations(256 << 20) == 5
    assert bench.bus_factor(2) == 1.0 and bench.bus_factor(8) == pytest.approx(1.75)
    for bad in ("0", "4X", "-4", ""):
        with pytest.raises(UserError, match="not a message size"):
            bench.parse_bytes(bad)
    with pytest.raises(UserError, match="larger than the largest"):
        bench.sizes(1 << 20, 1024)


def test_fit_recovers_latency_and_bandwidth():
    latency, bandwidth = 50e-6, 2e9  # 50 us + bytes / 2 GB/s, on 4 workers
    rows = [{"bytes": s, "time_s": latency + s / bandwidth} for s in bench.sizes(4, 64 << 20, 4)]
    fit = bench.fit(rows, 4)
    assert fit["latency_s"] == pytest.approx(latency, rel=1e-6)
    assert fit["algbw_GBps"] == pytest.approx(2.0, rel=1e-6) and fit["busbw_GBps"] == pytest.approx(3.0, rel=1e-6)
    assert bench.fit(rows[:1], 4) is None


def test_table_names_the_reference_and_its_share():
    row = bench._row(1 << 20, 32, [(0.002, 0.001), (0.001, 0.0), (0.003, 0.004)], 2, reference=[(0.001, 0.001)])
    result = {"collective": "Horovod over MPI", "workers": 2, "processes": 2, "repeats": 3, "rows": [row],
              "reference": "mpi4py Allreduce", "fit": None}
    text = bench.table(result)
    assert "| 1M | 32 | 2000.0 | 0.524 | 0.524 | 1000.0 | 1.049 | 0.50 |" in text
    assert row["time_s_range"] == [0.001, 0.003] and row["cpu_s"] == 0.001


def test_network_specs():
    net = predict.parse_network("100Gbit/s,2us")
    assert net.bandwidth == 12.5e9 and net.latency == pytest.approx(2e-6)
    assert predict.parse_network("12GB/s, 1.5us").bandwidth == 12e9
    for bad in ("100", "100Gbit/s", "fast,2us", "100Gbit/s,2 parsecs", "0Gbit/s,1us", None):
        with pytest.raises(UserError, match="network"):
            predict.parse_network(bad)


def test_measured_network_takes_the_latency_of_the_reference_and_the_overhead_beyond_it(tmp_path):
    result = {"collective": "Horovod over MPI", "workers": 2, "rows": [{}, {}], "exchange": {"bytes_per_value": 4},
              "fit": {"latency_s": 2.0e-3, "busbw_GBps": 1.5}, "reference_fit": {"latency_s": 4e-6, "busbw_GBps": 2}}
    path = tmp_path / "ar.json"

    def bench(**changes):
        path.write_text(json.dumps({**result, **changes}))
        return predict.Bench.load(path)

    network, overhead = bench().network()
    assert network.latency == pytest.approx(2e-6) and network.bandwidth == 1.5e9  # 4 us over 2 ring steps
    assert overhead == pytest.approx(2.0e-3 - 4e-6)
    network, overhead = bench(reference_fit=None).network()
    assert network.latency == pytest.approx(1e-3) and overhead == 0  # no reference: all of it per ring step
    grads = {"tensors": 8, "values": 250_000, "bytes": 1_000_000, "time_s": 2.0e-3 + 1e-3}  # 1 MB in 1 ms
    assert bench(gradient_set=grads).network(250_000)[0].bandwidth == pytest.approx(1e9)  # the job's own exchange
    assert bench(gradient_set=grads).network(500_000)[0].bandwidth == 1.5e9  # another model: the fit
    fp16 = bench(gradient_set=grads, exchange={"bytes_per_value": 2})  # 1 MB of float32 sent as 0.5 MB
    assert fp16.network(250_000)[0].bandwidth == pytest.approx(0.5e9) and fp16.network()[0].bandwidth == 0.75e9
    path.write_text("{}")
    with pytest.raises(UserError, match="not a result of hpctrain bench allreduce"):
        predict.Bench.load(path)
    with pytest.raises(UserError, match="does not exist"):
        predict.Bench.load(tmp_path / "none.json")
    with pytest.raises(UserError, match="needs the network"):
        predict.Request((8,))
    with pytest.raises(UserError, match="needs --node-network"):
        predict.Request((8,), network=network, workers_per_node=4)


def test_ring_model_terms():
    net = predict.Network(latency=10e-6, bandwidth=1e9, source="test")
    model = predict.Model(step=0.1, batch=32, gradient_bytes=100_000_000, messages=2, network=net, overhead=1e-3)
    one, eight = model.predict(1), model.predict(8)
    assert one["step_s"] == 0.1 and one["efficiency"] == 1.0 and one["samples_per_s"] == 320
    assert eight["latency_s"] == pytest.approx(2 * (1e-3 + 14 * 10e-6))
    assert eight["bandwidth_s"] == pytest.approx(1.75 * 0.1)
    assert eight["step_s"] == pytest.approx(0.1 + eight["latency_s"] + eight["bandwidth_s"])
    assert eight["limit"] == "bandwidth" and eight["samples_per_s"] == pytest.approx(8 * 32 / eight["step_s"])
    tiny = predict.Model(step=0.1, batch=32, gradient_bytes=4, messages=1, network=net)
    assert tiny.predict(100_000)["limit"] == "latency" and tiny.predict(2)["limit"] == "compute"


def test_strong_scaling_splits_the_compute_of_one_global_batch():
    net = predict.Network(latency=10e-6, bandwidth=1e9, source="test")
    model = predict.Model(step=0.4, batch=8, gradient_bytes=10_000_000, messages=1, network=net, split=8)
    four = model.predict(4)
    assert four["global_batch"] == 8 and four["step_s"] == pytest.approx(0.1 + 6 * 10e-6 + 1.5 * 0.01)
    assert four["samples_per_s"] == pytest.approx(8 / four["step_s"])
    assert four["efficiency"] == pytest.approx(0.4 / (4 * four["step_s"]))
    assert [r["workers"] for r in predict.prediction([], model, (2, 3, 4, 16))] == [2, 4]  # 3 and 16 cannot split 8


def test_hierarchical_rings_cross_the_nodes_once_per_node():
    cluster, node = predict.Network(5e-6, 12.5e9, "ib"), predict.Network(1e-6, 100e9, "nvlink")
    model = predict.Model(0.1, 32, 10**9, 1, cluster, 0.0, workers_per_node=4, node_network=node)
    p = model.predict(64)  # 16 nodes of 4
    assert p["bandwidth_s"] == pytest.approx(1.5 * 1e9 / 100e9 + 1.875 * 1e9 / 12.5e9)
    assert p["latency_s"] == pytest.approx(6 * 1e-6 + 30 * 5e-6)
    assert model.predict(4)["bandwidth_s"] == pytest.approx(1.5 * 1e9 / 100e9)  # one node: its own network


def test_report_predicts_from_the_one_worker_run_with_its_fusion(tmp_path):
    fused = {"exchange": {"collective": "Horovod over MPI", "fusion_bytes": 64 << 20}}
    runs = [timing_run(tmp_path, n, tp, parameters=50_000_000, environment=fused,
                       throughput={"samples_per_s": tp, "samples_per_s_ci95": 0.5, "step_time_median": 8 * n / tp})
            for n, tp in ((1, 80.0), (2, 150.0))]
    request = predict.Request((2, 64), network=predict.parse_network("10Gbit/s,5us"))
    [group] = scaling.build(runs, request)
    rows = {r["workers"]: r for r in group["prediction"]["rows"]}
    assert sorted(rows) == [1, 2, 64] and "in 3 message(s)" in group["prediction"]["model"]  # 200 MB / 64 MiB
    assert rows[2]["measured_samples_per_s"] == 150.0
    assert rows[2]["error"] == pytest.approx(rows[2]["samples_per_s"] / 150 - 1)
    assert rows[64]["bandwidth_s"] == pytest.approx(2 * 63 / 64 * 200e6 / 1.25e9)
    text = scaling.markdown([group])
    assert "Predicted (weak scaling)" in text and "| 64 |" in text
    with pytest.raises(UserError, match="needs a finished 1-worker run"):
        scaling.build(runs[1:], request)
    gloo = timing_run(tmp_path, 2, 140.0, backend="gloo", throughput={"samples_per_s": 140.0})
    predicted, alone = scaling.build([*runs, gloo], request)  # a group without its 1-worker run is said so
    assert predicted["prediction"] and alone["backend"] == "gloo" and alone["prediction"] is None
    assert "Not predicted: no finished 1-worker run" in scaling.markdown([predicted, alone])


def test_report_plots_the_bench_curve_beside_its_reference(tmp_path):
    rows = [{"bytes": b, "busbw_GBps": b / 1e6, "reference": {"busbw_GBps": 2 * b / 1e6}} for b in (1 << 10, 1 << 20)]
    path = tmp_path / "ar.json"
    path.write_text(json.dumps({"collective": "Horovod over MPI", "workers": 2, "rows": rows, "reference": "mpi4py",
                                "exchange": {"bytes_per_value": 4}, "fit": {"latency_s": 1e-3, "busbw_GBps": 1.0},
                                "gradient_set": {"values": 10, "bytes": 40, "busbw_GBps": 0.01, "time_s": 2e-3}}))
    runs = [timing_run(tmp_path, n, tp, throughput={"samples_per_s": tp, "step_time_median": 8 * n / tp})
            for n, tp in ((1, 80.0), (2, 150.0))]
    report = scaling.write(runs, tmp_path / "report", predict=predict.Request((4,), allreduce=predict.Bench.load(path)))
    [group] = json.loads((tmp_path / "report" / "report.json").read_text())
    curve = group["prediction"]["allreduce"]
    assert [r["reference_busbw_GBps"] for r in curve["rows"]] == [2 * 1024 / 1e6, 2 * 1048576 / 1e6]
    assert curve["gradient_set"] == {"bytes": 40, "busbw_GBps": 0.01}
    [png] = (tmp_path / "report").glob("*-allreduce.png")
    assert f"({png.name})" in report.read_text() and png.stat().st_size > 1000


def test_time_to_target_is_predicted_from_the_samples_measured_at_each_global_batch(tmp_path):
    """1 worker accumulating k micro-batches measures the samples to the target at global batch k x 8; the
    prediction divides them by the predicted samples/s, between the measured batches only."""
    def timing(workers, tp, k=1, epoch=4, backend="horovod"):
        return timing_run(tmp_path / f"k{k}", workers, tp, backend=backend, accumulate_steps=k,
                          global_batch=8 * workers * k, throughput={"samples_per_s": tp, "step_time_median": 8 / tp},
                          target={"metric": "val_accuracy", "value": 0.9, "reached": {"epoch": epoch, "seconds": 9.0}})

    for k in (2, 4):
        (tmp_path / f"k{k}").mkdir()
    (tmp_path / "k1").mkdir()
    runs = [timing(1, 80.0, epoch=4), timing(2, 150.0, epoch=5),   # 320 and 800 samples: 10 steps per epoch
            timing(1, 80.0, k=2, epoch=6, backend="none"), timing(1, 80.0, k=4, epoch=4, backend="none")]
    request = predict.Request((4, 8, 64), network=predict.parse_network("100Gbit/s,2us"))
    report = scaling.build(runs, request)
    [group] = [g for g in report if g["settings"]["accumulate_steps"] == 1]  # accumulation runs: groups of their own
    assert len(report) == 3
    rows = {r["workers"]: r for r in group["prediction"]["rows"]}
    assert group["prediction"]["targets_measured"] == {8: 320, 16: 880, 32: 1280}  # batch 16: mean of 800 and 960
    assert rows[1]["time_to_target_s"] == pytest.approx(320 / 80)
    assert rows[4]["samples_to_target"] == 1280 and rows[4]["time_to_target_s"] == pytest.approx(
        1280 / rows[4]["samples_per_s"])
    assert rows[8]["samples_to_target"] is None and rows[64]["time_to_target_s"] is None  # beyond the measured
    assert predict.samples_to_target({8: 100, 32: 400}, 16) == pytest.approx(200)  # log-log
    text = scaling.markdown(report)
    assert "samples to target | time to target (s) |" in text and "(8: 320, 16: 880, 32: 1280;" in text
    text = scaling.write(runs, tmp_path / "report", predict=request).read_text()
    assert "(j-horovod-time_to_target.png)" in text and (tmp_path / "report" / "j-horovod-time_to_target.png").exists()
