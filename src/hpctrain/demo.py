"""`hpctrain demo`: the whole story on the real ISBI 2012 data, on this machine.

raw TIFF stacks -> HDF5 -> CPU-sized U-Net on 1 worker and on 2 Horovod workers (mpirun)
-> Dice and Rand error on the 6 held-out slices -> the 1 vs 2 scaling report -> ISBI-format prediction.
"""
from pathlib import Path

from hpctrain.errors import UserError
from hpctrain.rundir import RunDir

JOB = "jobs/unet_isbi_cpu.toml"


def run(out="runs/demo", data_dir="data/isbi2012", workers=(1, 2), backend="horovod"):
    from hpctrain.data import isbi
    from hpctrain.evaluate import run as evaluation
    from hpctrain.evaluate import table
    from hpctrain.launch import sweep

    out, data_dir = Path(out), Path(data_dir)
    if not Path(JOB).is_file() or not data_dir.is_dir():
        raise UserError(f"run the demo from the hpctrain folder (needs {JOB} and {data_dir}/)")
    out.mkdir(parents=True, exist_ok=True)
    packed = out / "isbi.h5"
    print(f"== 1. pack {data_dir}/*.tif -> {packed}", flush=True)
    isbi.pack(packed, volume=data_dir / "train-volume.tif", labels=data_dir / "train-labels.tif",
              test=data_dir / "test-volume.tif", force=True)

    print(f"== 2. train {JOB} on {' then '.join(map(str, workers))} workers ({backend})", flush=True)
    # Here a "GPU" is one core: every worker, alone or not, gets one core of its own.
    plan = sweep.plan(JOB, list(workers), out / "scaling", backend, [f"data.path={sweep.toml_string(packed)}"])
    report = sweep.run(plan, force=True, cores_per_worker=1)

    print("== 3. evaluate on the held-out slices of fold 0", flush=True)
    scores = {}
    for n in workers:
        run_dir = RunDir(out / "scaling" / f"w{n}")
        scores[n] = evaluation.evaluate(run_dir.path, out=run_dir.evaluation)
        print(f"-- {n} worker{'s' * (n > 1)}: {run_dir.path}\n{table.format_table(scores[n])}", flush=True)

    prediction = out / "test-volume-prediction.tif"
    print(f"== 4. predict the ISBI test volume -> {prediction}", flush=True)
    evaluation.predict(plan.runs[-1].run_dir, data_dir / "test-volume.tif", prediction, force=True)

    print(f"\n== scaling report: {report}\n")
    print(report.read_text())
    print("Soft Dice (NVIDIA definition) on fold 0 validation: "
          + ", ".join(f"{n} worker{'s' * (n > 1)} {scores[n]['soft_dice']:.3f}" for n in workers))
    print(f"Everything is in {out}/")
    return report
