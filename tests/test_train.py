"""Single-worker training, resume, evaluation and prediction through the real `hpctrain` command."""
import json
import signal
import subprocess
import time

import numpy as np
import pytest
import tifffile

from conftest import VENV_BIN, assert_user_error, run_hpctrain, write_job

OUTPUTS = ("spec.toml", "model.json", "metrics.csv", "metrics.jsonl", "timing.json", "curves.png")


def cnn_job(tmp_path, mnist_h5, name="cnn", **train):
    return write_job(
        tmp_path / f"{name}.toml", name=name,
        data={"path": str(mnist_h5), "split": "holdout"},
        model={"name": "mnist_cnn"},
        train={"learning_rate": 1e-3, "batch_size": 32, "epochs": 2, "steps_per_epoch": 15, **train},
        output={"dir": str(tmp_path / name)})


def unet_job(tmp_path, isbi_h5, name="unet", **train):
    return write_job(
        tmp_path / f"{name}.toml", name=name,
        data={"path": str(isbi_h5), "split": "fold0", "tile": 128, "augment": {"enabled": True}},
        model={"name": "unet", "unet": {"depth": 3, "filters": 8, "dropout": 0.0}},
        train={"learning_rate": 1e-3, "batch_size": 4, "epochs": 2, **train},
        output={"dir": str(tmp_path / name)})


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, mnist_h5):
    tmp_path = tmp_path_factory.mktemp("cnn")
    run_hpctrain("train", cnn_job(tmp_path, mnist_h5), check=True)
    return tmp_path / "cnn"


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory, isbi_h5):
    tmp_path = tmp_path_factory.mktemp("unet")
    run_hpctrain("train", unet_job(tmp_path, isbi_h5, epochs=3), check=True)
    return tmp_path / "unet"


@pytest.mark.slow
def test_cnn_learns_and_writes_every_output(cnn_run):
    rows = metrics_rows(cnn_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["loss"] < rows[0]["loss"]
    assert rows[1]["val_accuracy"] > 0.5  # 30 steps of 32 real digits; chance is 0.1
    for name in OUTPUTS:
        assert (cnn_run / name).is_file(), name
    assert (cnn_run / "checkpoints" / "last" / "checkpoint").is_file()
    assert (cnn_run / "checkpoints" / "best" / "checkpoint").is_file()
    timing = json.loads((cnn_run / "timing.json").read_text())
    assert len(timing["step_times"]) == 30 and len(timing["epoch_times"]) == 2
    assert timing["throughput"]["samples_per_s"] > 0 and timing["global_batch"] == 32
    assert (cnn_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_unet_learns_on_isbi(unet_run):
    rows = metrics_rows(unet_run)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"dice", "val_dice", "binary_accuracy"} <= set(rows[-1])


@pytest.mark.slow
def test_evaluate_and_predict_unet(unet_run, isbi_h5, tmp_path, data_dir):
    proc = run_hpctrain("evaluate", unet_run, "--json", tmp_path / "m.json", check=True)
    assert "rand_error" in proc.stdout
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["split"] == "fold0/val" and result["n_images"] == 6
    assert 0 <= result["soft_dice"] <= 1 and 0 <= result["pixel_error"] <= 1
    # Two slices of the real test volume through `predict`: the ISBI submission format.
    two = tmp_path / "two.tif"
    tifffile.imwrite(two, tifffile.imread(data_dir / "isbi2012" / "test-volume.tif")[:2], photometric="minisblack")
    run_hpctrain("predict", unet_run, "--input", two, "-o", tmp_path / "pred.tif", check=True)
    pred = tifffile.imread(tmp_path / "pred.tif")
    assert pred.shape == (2, 512, 512) and pred.dtype == np.float32
    assert 0 <= pred.min() and pred.max() <= 1
    assert_user_error(run_hpctrain("predict", unet_run, "--input", two, "-o", tmp_path / "pred.tif"), "exists")


@pytest.mark.slow
def test_evaluate_cnn_and_tsne(cnn_run, tmp_path):
    proc = run_hpctrain("evaluate", cnn_run, "--json", tmp_path / "m.json", check=True)
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["n_images"] == 2000 and len(result["confusion_matrix"]) == 10
    assert sum(map(sum, result["confusion_matrix"])) == 2000
    assert "accuracy" in proc.stdout
    run_hpctrain("plot", "tsne", cnn_run, "--count", 300, "-o", tmp_path / "tsne.png", check=True)
    assert (tmp_path / "tsne.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, mnist_h5):
    """Stopped by SIGTERM mid-epoch, resumed with --resume: the same weights as a run never stopped
    (deterministic ops, dropout drawing from a checkpointed generator)."""
    from hpctrain.evaluate.run import load_model
    from hpctrain.train.checkpoint import latest

    settings = dict(epochs=3, steps_per_epoch=25, deterministic=True, validation=False)
    run_hpctrain("train", cnn_job(tmp_path, mnist_h5, "straight", **settings), check=True)

    job = cnn_job(tmp_path, mnist_h5, "stopped", **settings)
    job.write_text(job.read_text() + "\n[distribute]\nsync_every = 1\n")
    proc = subprocess.Popen([str(VENV_BIN / "hpctrain"), "train", str(job)], stderr=subprocess.PIPE, text=True)
    first = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into epoch 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "continue with --resume" in err
    stopped_rows = metrics_rows(tmp_path / "stopped")
    assert len(stopped_rows) < 3
    timing = tmp_path / "stopped" / "timing.json"
    assert json.loads(timing.read_text())["complete"] is False

    run_hpctrain("train", job, "--resume", check=True)
    assert [r["epoch"] for r in metrics_rows(tmp_path / "stopped")] == [1, 2, 3]
    finished = json.loads(timing.read_text())
    assert finished["complete"] and finished["attempts"] == 2 and len(finished["step_times"]) == 75
    # Resuming a finished run changes nothing.
    proc = run_hpctrain("train", job, "--resume", check=True)
    assert "already finished" in proc.stdout and json.loads(timing.read_text()) == finished
    a, b = (load_model(latest(tmp_path / name / "checkpoints" / "last"))[1].get_weights()
            for name in ("straight", "stopped"))
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)


def test_dry_run_prints_the_default_unet_size():
    proc = run_hpctrain("train", "jobs/unet_isbi.toml", "--dry-run", cwd=VENV_BIN.parent.parent, check=True)
    assert "31,030,593 parameters" in proc.stdout


@pytest.mark.parametrize("override,fragment", [
    ("train.epoch=3", "unknown key train.epoch"),
    ("train.epochs='many'", "train.epochs"),
    ("model.name='resnet'", "model.name"),
    ("distribute.backend='nccl'", "distribute.backend"),
    ("data.tile=100", "multiple of 16"),
])
def test_bad_spec_is_a_one_line_error(override, fragment):
    proc = run_hpctrain("train", "jobs/unet_isbi.toml", "--dry-run", "--set", override, cwd=VENV_BIN.parent.parent)
    assert_user_error(proc, fragment)


def test_missing_and_malformed_spec(tmp_path):
    assert_user_error(run_hpctrain("train", tmp_path / "nope.toml"), "does not exist")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    assert_user_error(run_hpctrain("train", bad), "not valid TOML")


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(cnn_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(cnn_run, other)
    spec = (other / "spec.toml").read_text().replace('name = "mnist_cnn"', 'name = "lenet5"')
    (other / "spec.toml").write_text(spec)
    assert_user_error(run_hpctrain("evaluate", other), "does not fit")
    assert_user_error(run_hpctrain("evaluate", tmp_path / "nothing"), "neither a run folder")


@pytest.mark.slow
def test_existing_run_folder_needs_resume_or_force(cnn_run, mnist_h5, tmp_path):
    job = cnn_job(cnn_run.parent, mnist_h5)
    assert_user_error(run_hpctrain("train", job), "exists", "--resume")


@pytest.mark.parametrize("override,fragment", [
    ("data.split='fold9'", "no split 'fold9'"),
    ("train.batch_size=9000", "world size x batch larger than the split"),
    ("model.name='unet'", "needs segmentation"),
    ("data.tile=32", "does not fit the 28x28 images"),
    ("data.path='data/isbi2012/train-volume.tif'", "not a readable HDF5 file"),
])
def test_bad_data_choices_are_refused_before_a_run_folder_exists(tmp_path, mnist_h5, override, fragment):
    job = cnn_job(tmp_path, mnist_h5)
    assert_user_error(run_hpctrain("train", job, "--set", override, cwd=VENV_BIN.parent.parent), fragment)
    assert not (tmp_path / "cnn").exists()


@pytest.mark.parametrize("overrides,fragment", [
    (["train.target_metric='val_dice'"], "'val_dice' is not logged by this job; it logs loss, accuracy, val_loss, "
                                          "val_accuracy"),
    (["train.target_metric='val_accuracy'", "train.validation=false"], "'val_accuracy' is not logged by this job; "
                                                                       "it logs loss, accuracy"),
])
def test_a_target_the_job_does_not_log_is_refused_and_nothing_is_lost(tmp_path, mnist_h5, overrides, fragment):
    job = cnn_job(tmp_path, mnist_h5)
    earlier = tmp_path / "cnn" / "kept.txt"  # a run folder that --force would replace
    earlier.parent.mkdir()
    earlier.write_text("earlier run")
    sets = [a for o in [*overrides, "train.target_value=0.9"] for a in ("--set", o)]
    assert_user_error(run_hpctrain("train", job, *sets, "--force"), fragment)
    assert earlier.read_text() == "earlier run"


@pytest.mark.slow
def test_stop_at_target_ends_training_at_the_first_epoch_that_reaches_it(tmp_path, mnist_h5):
    job = cnn_job(tmp_path, mnist_h5, epochs=4, target_metric="val_loss", target_value=100.0, stop_at_target=True)
    run_hpctrain("train", job, check=True)
    rows = [json.loads(line) for line in (tmp_path / "cnn" / "metrics.jsonl").read_text().splitlines()]
    timing = json.loads((tmp_path / "cnn" / "timing.json").read_text())
    assert [r["epoch"] for r in rows] == [1] and timing["complete"] and timing["target"]["reached"]["epoch"] == 1
    assert_user_error(run_hpctrain("train", cnn_job(tmp_path, mnist_h5, name="no", stop_at_target=True)),
                      "train.stop_at_target needs train.target_metric")


def test_several_workers_need_a_distributed_backend(tmp_path, mnist_h5):
    assert_user_error(run_hpctrain("launch", "-n", 2, cnn_job(tmp_path, mnist_h5)), "backend 'none' trains on one")


@pytest.fixture(scope="module")
def mito_h5(tmp_path_factory):
    """A rare-foreground task packed from an image folder: bright blobs (~9 % of the pixels) on noise."""
    from PIL import Image

    from hpctrain.data import images

    folder = tmp_path_factory.mktemp("mito")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(12):
        blobs = np.zeros((64, 64), bool)
        for _ in range(3):
            cy, cx = rng.integers(8, 56, 2)
            blobs |= (yy - cy) ** 2 + (xx - cx) ** 2 < 20
        pixels = np.clip(rng.normal(90, 25, (64, 64)) + 90 * blobs, 0, 255).astype(np.uint8)
        (folder / "img").mkdir(exist_ok=True)
        (folder / "mask").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(folder / "img" / f"s{i}.png")
        Image.fromarray(blobs.astype(np.uint8) * 255).save(folder / "mask" / f"s{i}.png")
    return images.pack(folder / "mito.h5", images=folder / "img", masks=folder / "mask",
                       class_names=["background", "mitochondrion"])


@pytest.mark.slow
def test_a_new_task_reads_as_itself(tmp_path, mito_h5):
    """Its rare class said in the run's first lines, its class names in evaluate, no membrane scores unasked."""
    job = write_job(tmp_path / "job.toml", name="mito", data={"path": str(mito_h5), "split": "holdout"},
                    model={"name": "unet", "unet": {"depth": 3, "filters": 8, "dropout": 0.0}},
                    train={"batch_size": 4, "epochs": 2, "loss": "crossentropy+dice"},
                    output={"dir": str(tmp_path / "mito")})
    proc = run_hpctrain("train", job, check=True)
    assert "rare class mitochondrion (" in proc.stdout.splitlines()[0]
    assert "train.loss is crossentropy+dice (also: crossentropy, weighted_crossentropy)" in proc.stdout
    result = run_hpctrain("evaluate", tmp_path / "mito", check=True).stdout
    assert "mitochondrion" in result and "background" in result
    assert "membrane" not in result and "rand_error" not in result and "v_rand" not in result
    assert "v_rand" in run_hpctrain("evaluate", tmp_path / "mito", "--isbi", check=True).stdout
    inspect = run_hpctrain("inspect", mito_h5, check=True).stdout
    assert "rare: mitochondrion is" in inspect and "see train.loss" in inspect


@pytest.mark.slow
def test_a_unet_on_three_classes(tmp_path):
    """Class-id masks packed with --classes 3, a softmax U-Net, scored per class and predicted per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(8):
        ids = np.zeros((64, 64), np.uint8)
        ids[:, 20:40], ids[rng.integers(0, 40):, 44:] = 1, 2
        pixels = np.clip(rng.normal(60 + 70 * ids, 15), 0, 255).astype(np.uint8)
        for folder, array in (("img", pixels), ("mask", ids)):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(array).save(tmp_path / folder / f"s{i}.png")
    run_hpctrain("pack", "images", "--images", tmp_path / "img", "--masks", tmp_path / "mask", "--classes", 3,
                 "--class-names", "bg,road,river", "-o", tmp_path / "three.h5", check=True)
    unet = {"depth": 3, "filters": 8, "dropout": 0.0}
    job = write_job(tmp_path / "job.toml", name="three", data={"path": str(tmp_path / "three.h5"), "split": "holdout"},
                    model={"name": "unet", "unet": unet}, output={"dir": str(tmp_path / "three")},
                    train={"learning_rate": 1e-3, "batch_size": 2, "epochs": 2, "loss": "weighted_crossentropy"})
    assert_user_error(run_hpctrain("train", job), "'sigmoid' is for 2 classes", "softmax")
    assert not (tmp_path / "three").exists()
    run_hpctrain("train", job, "--set", "model.unet.output='softmax'", check=True)
    result = run_hpctrain("evaluate", tmp_path / "three", "--json", tmp_path / "m.json", check=True)
    scores = json.loads((tmp_path / "m.json").read_text())
    assert set(scores["dice"]) == {"bg", "road", "river"} and "river" in result.stdout
    assert 0 <= scores["pixel_error"] <= 1 and "rand_error" not in scores
    stack = tmp_path / "two.tif"
    tifffile.imwrite(stack, np.stack([np.asarray(Image.open(tmp_path / "img" / f"s{i}.png")) for i in (0, 1)]))
    run_hpctrain("predict", tmp_path / "three", "--input", stack, "-o", tmp_path / "p.tif", check=True)
    probs = tifffile.imread(tmp_path / "p.tif")
    assert probs.shape == (2, 3, 64, 64) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
