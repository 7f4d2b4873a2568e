"""`hpctrain bench allreduce` on real workers of every backend (Horovod over MPI with its mpi4py reference,
Horovod over Gloo, MultiWorkerMirrored's ring, Mirrored), its bad input, and `--predict` in the report of a
real sweep on the network it measured."""
import json

import pytest

from test_report import run as timing_run

from conftest import assert_user_error, run_hpctrain, write_job

pytestmark = pytest.mark.slow
SIZES = ["-b", "4", "-e", "1K", "-f", "16"]  # 4 B, 64 B, 1 KiB


def job(tmp_path, mnist_h5):
    return write_job(tmp_path / "lenet.toml", name="lenet", data={"path": str(mnist_h5), "split": "holdout"},
                     model={"name": "lenet5"}, train={"batch_size": 16, "epochs": 1, "steps_per_epoch": 12},
                     output={"dir": str(tmp_path / "lenet"), "tensorboard": False})


def lenet_gradient_bytes():
    from hpctrain import models
    from hpctrain.spec import ModelSpec

    return 4 * models.build(ModelSpec(name="lenet5"), (28, 28, 1), 10, "uint8").count_params()


@pytest.fixture(scope="module")
def horovod_result(tmp_path_factory, mnist_h5):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "ar.json"
    proc = run_hpctrain("bench", "allreduce", job(tmp, mnist_h5), "--backend", "horovod", "-n", 2, *SIZES,
                        "--repeats", 2, "-o", out, check=True)
    return json.loads(out.read_text()), proc.stdout, out


def test_horovod_over_mpi_is_timed_beside_plain_mpi(horovod_result):
    result, stdout, _ = horovod_result
    assert result["collective"] == "Horovod over MPI" and result["workers"] == 2 and result["processes"] == 2
    assert [r["bytes"] for r in result["rows"]] == [4, 64, 1024]
    for row in result["rows"]:
        assert row["time_s"] > 0 and row["time_s_range"][0] <= row["time_s"] <= row["time_s_range"][1]
        assert row["busbw_GBps"] == pytest.approx(row["bytes"] / row["time_s"] / 1e9)  # 2 workers: factor 1
        assert row["reference"]["time_s"] > 0
    assert result["exchange"]["fusion_bytes"] == 128 << 20 and result["exchange"]["cycle_time_ms"] == 2.0
    assert result["fit"]["latency_s"] > 0 and result["reference_fit"]["latency_s"] >= 0
    assert result["gradient_set"]["bytes"] == lenet_gradient_bytes() and result["gradient_set"]["tensors"] == 10
    assert "| 1K |" in stdout and "| gradient set |" in stdout and "reference: mpi4py Allreduce" in stdout


@pytest.mark.parametrize("backend, launcher, collective", [
    ("horovod", "horovodrun", "Horovod over Gloo"),
    ("multiworker", None, "MultiWorkerMirroredStrategy, RING collective"),
    ("mirrored", None, "MirroredStrategy, ReductionToOneDevice")])
def test_every_backend_times_its_own_collective(tmp_path, mnist_h5, backend, launcher, collective):
    out = tmp_path / "ar.json"
    run_hpctrain("bench", "allreduce", job(tmp_path, mnist_h5), "--backend", backend, "-n", 2, *SIZES,
                 "--repeats", 1, "-o", out, *(["--launcher", launcher] if launcher else []), check=True)
    result = json.loads(out.read_text())
    assert result["collective"] == collective and result["workers"] == 2 and result["reference"] is None
    assert len(result["rows"]) == 3 and all(r["time_s"] > 0 for r in result["rows"])
    assert result["gradient_set"]["bytes"] == lenet_gradient_bytes()


def test_bad_bench_input_is_one_line(tmp_path, mnist_h5):
    spec = job(tmp_path, mnist_h5)
    for args, fragment in ((["-n", 2, "-b", "0"], "not a message size"),
                           (["-n", 2, "-b", "1M", "-e", "4K"], "larger than the largest"),
                           (["-n", 2, "-f", "1"], "factor must be at least 2"),
                           (["-n", 2, "--repeats", "0"], "--repeats must be at least 1"),
                           (["-n", 2, "--backend", "none"], "no collective to time")):
        assert_user_error(run_hpctrain("bench", "allreduce", spec, *args), fragment)
    assert not (tmp_path / "lenet").exists()


def test_report_predicts_on_the_measured_network(tmp_path, mnist_h5, horovod_result):
    _, _, measured = horovod_result
    proc = run_hpctrain("scaling", job(tmp_path, mnist_h5), "--backend", "horovod", "--workers", "1,2",
                        "--cores-per-worker", 1, "-o", tmp_path / "sweep", "--predict", "8,64",
                        "--allreduce", measured, check=True)
    predicted = json.loads((tmp_path / "sweep" / "report" / "report.json").read_text())[0]["prediction"]
    rows = {r["workers"]: r for r in predicted["rows"]}
    assert sorted(rows) == [1, 2, 8, 64] and "Horovod over MPI, 2 workers" in predicted["model"]
    assert rows[2]["measured_samples_per_s"] > 0 and "error" in rows[2] and "error" not in rows[8]
    assert rows[64]["step_s"] > rows[8]["step_s"] > rows[1]["step_s"]
    assert "Predicted (weak scaling)" in proc.stdout
    curve = predicted["allreduce"]  # the bandwidth curve the report plots, the reference beside it
    assert len(curve["rows"]) == 3 and all(r["busbw_GBps"] > 0 and r["reference_busbw_GBps"] > 0 for r in curve["rows"])
    assert "allreduce.png)" in (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert list((tmp_path / "sweep" / "report").glob("*-allreduce.png"))


def test_bad_prediction_options_are_one_line_errors(tmp_path):
    runs = [timing_run(tmp_path, 1, 80.0)]
    for args, fragment in ((["--predict", "0,8", "--network", "1Gbit/s,1us"], "positive worker counts"),
                           (["--predict", "8"], "needs the network"),
                           (["--predict", "8", "--network", "fast"], "BANDWIDTH,LATENCY"),
                           (["--network", "1Gbit/s,1us"], "go with --predict"),
                           (["--predict", "8", "--allreduce", tmp_path / "none.json"], "does not exist"),
                           (["--predict", "8", "--network", "1Gbit/s,1us", "--workers-per-node", "4"],
                            "needs --node-network")):
        assert_user_error(run_hpctrain("report", *runs, "-o", tmp_path / "r", *args), fragment)
