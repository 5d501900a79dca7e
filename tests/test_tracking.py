"""--log-to tensorboard|mlflow: what the trackers hold, read back with their own readers, equals the run folder."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_invoke_error, assert_one_line_error, invoke
from heads_data import blobs, write_cache
from run_helpers import scratch_run
from test_faults import small_disk  # noqa: F401  (a fixture)

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    X, y = blobs(24, 2, seed=0)
    Xv, yv = blobs(12, 2, seed=1)
    return write_cache(tmp_path_factory.mktemp("track") / "c.h5", {"train": (X, y), "val": (Xv, yv)}, ["ants", "bees"])


@pytest.fixture(scope="module")
def logged_run(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("track-run") / "run"
    result = invoke("fit-head", "--head", "quantum", "--cache", cache, "--out", out, "--seeds", "2", "--epochs", "3",
                    "--no-progress", "--log-to", "tensorboard", "--log-to", "mlflow")
    assert result.exit_code == 0, result.output
    assert "logged to TensorBoard" in result.output and "logged to MLflow" in result.output
    return out


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _expected(run: Path):
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return history, metrics


def test_tensorboard_events_equal_history_and_metrics(logged_run):
    history, metrics = _expected(logged_run)
    acc = _events(logged_run / "tb")
    f32 = lambda v: float(np.float32(v))  # noqa: E731 (TensorBoard stores scalars as float32)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert _scalars(acc, key) == [(r["epoch"], f32(r[key])) for r in history]  # the across-seed mean
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):  # what history.json holds per seed
        for i, seed in enumerate(history[0]["per_seed"]["seed"]):
            assert _scalars(acc, f"seed_{seed}/{key}") == [(r["epoch"], f32(r["per_seed"][key][i])) for r in history]
    final_epoch = metrics["final"]["epoch"]
    assert _scalars(acc, "final/accuracy") == [(final_epoch, f32(metrics["final"]["accuracy"]))]
    assert _scalars(acc, "seed_1/final/roc_auc") == [(final_epoch, f32(metrics["seeds"][1]["final"]["roc_auc"]))]
    for key in ("mean", "ci_low", "ci_high"):
        assert _scalars(acc, f"interval/accuracy/{key}") == [(final_epoch, f32(metrics["summary"]["accuracy"][key]))]
    boot = metrics["summary"]["images"]["accuracy"]
    assert _scalars(acc, "interval/images/accuracy/ci_low") == [(final_epoch, f32(boot["ci_low"]))]
    assert _scalars(acc, "training_seconds") == [(final_epoch, f32(metrics["training_seconds"]))]
    assert set(acc.Tags()["images"]) == {"figures/evaluation"}
    (image,) = acc.Images("figures/evaluation")
    assert image.width == 960 and image.height == 304  # 12 x 3.8 inches at 80 dpi
    # the hyperparameters, in the HParams plugin's session-start summary
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["head"].string_value == "quantum" and hparams["head_params.lr"].number_value == 0.001


def test_mlflow_run_equals_history_and_metrics(logged_run):
    from mlflow import MlflowClient

    history, metrics = _expected(logged_run)
    client = MlflowClient(tracking_uri=f"sqlite:///{(logged_run / 'mlruns.db').resolve()}")
    (exp,) = [e for e in client.search_experiments() if e.name == "tlkit"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == logged_run.name
    for key in ("train_loss", "val_acc", "lr"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert got == [(r["epoch"], float(r[key])) for r in history]  # exact: MLflow keeps float64
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"seed_0/{key}"))
        if key != "lr":
            assert got == [(r["epoch"], float(r["per_seed"][key][0])) for r in history]
    assert run.data.metrics["final/accuracy"] == metrics["final"]["accuracy"]
    assert run.data.metrics["interval/roc_auc/ci_high"] == metrics["summary"]["roc_auc"]["ci_high"]
    assert run.data.metrics["best/loss"] == metrics["best"]["loss"]
    assert run.data.params["head"] == "quantum" and run.data.params["head_params.epochs"] == "3"
    assert run.data.params["seeds"] == "[0, 1]"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.json", "history.json", "figures"} <= artifacts
    stored = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(logged_run.parent)))
    assert json.loads(stored.read_text()) == metrics
    # the figure is drawn once: MLflow's artifact holds the very PNG bytes of TensorBoard's image
    figure = Path(client.download_artifacts(run.info.run_id, "figures/evaluation.png", str(logged_run.parent)))
    (image,) = _events(logged_run / "tb").Images("figures/evaluation")
    assert figure.read_bytes() == image.encoded_image_string and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figure_drawn_onto_its_prepared_axes_is_the_whole_figure_drawn_anew(logged_run, tmp_path):
    """Only the run's own artists are drawn onto the axes drawn ahead (blitting): every pixel must be what
    drawing the whole figure gives."""
    import io

    from PIL import Image

    from tlkit.tracking import record

    record.warm_figures()
    prepared = record._PREPARED[0]
    blitted = np.asarray(Image.open(io.BytesIO(record.render_figures(record.read_record(logged_run), tmp_path)[0].png)))
    prepared.canvas.draw()
    whole = np.asarray(prepared.canvas.buffer_rgba())
    assert blitted.shape == whole.shape and np.array_equal(blitted, whole)
    assert len(np.unique(blitted.reshape(-1, 4), axis=0)) > 100  # curves, text and colours: not a blank canvas


def test_a_figure_on_axes_made_ahead_is_the_figure_drawn_from_scratch(logged_run, tmp_path):
    """The logging helper makes the figure's axes before the run arrives (warm_figures); the PNG is the same."""
    from tlkit.tracking import record

    rec = record.read_record(logged_run)
    fresh = record.render_figures(rec, tmp_path)[0].png
    record.warm_figures()
    assert len(record._PREPARED) == 1
    ahead = record.render_figures(rec, tmp_path)[0].png
    assert record._PREPARED == [] and ahead == fresh
    assert fresh[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_batches_stay_within_its_limits():
    """Every param and value is sent, in as few log_batch calls as MLflow's limits allow."""
    from mlflow.entities import Metric

    from tlkit.tracking.to_mlflow import MlflowLog

    calls = []

    class Client:
        def log_batch(self, run_id, metrics=(), params=()):
            calls.append((list(metrics), list(params)))

    log = MlflowLog.__new__(MlflowLog)  # no store: only the batching is under test
    log._client = Client()
    params = {f"p{i}": i for i in range(250)}
    metrics = [Metric("m", float(i), 0, i) for i in range(2000)]
    log._batch("run", params=params, metrics=metrics)
    assert all(len(p) <= 100 and len(m) + len(p) <= 1000 for m, p in calls)
    assert [m for c in calls for m in c[0]] == metrics
    assert {p.key: p.value for c in calls for p in c[1]} == {k: str(v) for k, v in params.items()}
    assert len(calls) == 3  # 100 + 900, 100 + 900, 50 + 200


def test_sweep_logs_one_child_run_per_configuration(cache, tmp_path):
    from mlflow import MlflowClient

    from tlkit.tracking import Tracker

    runs = {}
    for lr in (0.01, 0.1):
        out = tmp_path / f"lr-{lr}"
        assert invoke("fit-head", "--head", "linear", "--cache", cache, "--out", out, "--epochs", "2", "--lr", lr,
                      "--no-progress").exit_code == 0
        runs[lr] = out
    with Tracker(["tensorboard", "mlflow"], tmp_path, sweep="lr-grid", sweep_params={"lr": "[0.01, 0.1]"}) as tracker:
        for lr, out in runs.items():
            tracker.child_run(out, {"lr": lr})
    for lr, out in runs.items():
        acc = _events(tmp_path / "tb" / out.name)
        history, metrics = _expected(out)
        assert _scalars(acc, "val_loss") == [(r["epoch"], float(np.float32(r["val_loss"]))) for r in history]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "tlkit"]
    every = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in every if r.info.run_name == "lr-grid"]
    children = [r for r in every if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.params == {"lr": "[0.01, 0.1]"}
    assert sorted(float(c.data.params["sweep.lr"]) for c in children) == [0.01, 0.1]
    for child in children:
        metrics = _expected(tmp_path / child.info.run_name)[1]
        assert child.data.metrics["final/accuracy"] == metrics["final"]["accuracy"]


def test_train_scratch_logs_to_tensorboard(hymenoptera_small, tmp_path_factory):
    run = scratch_run(tmp_path_factory, hymenoptera_small, epochs=1, extra=("--log-to", "tensorboard"))
    history, metrics = _expected(run)
    acc = _events(run / "tb")
    assert _scalars(acc, "val_acc") == [(1, float(np.float32(history[0]["val_acc"])))]
    assert _scalars(acc, "final/roc_auc") == [(1, float(np.float32(metrics["final"]["roc_auc"])))]


def test_bad_trackers_are_one_line_before_training(cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert_invoke_error(invoke("fit-head", "--head", "linear", "--cache", cache, "--out", out, "--log-to", "wandb"),
                        "unknown --log-to 'wandb'")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert_invoke_error(invoke("fit-head", "--head", "linear", "--cache", cache, "--out", out, "--log-to", "mlflow"),
                        "pip install 'tlkit[track]'")
    assert_invoke_error(invoke("train-scratch", tmp_path, "--log-to", "mlflow"), "tlkit[track]")
    assert not out.exists()  # refused before anything was trained or written


def test_a_grid_run_logs_one_child_per_configuration(cache, tmp_path):
    """fit-head --grid writes one run whose metrics.json lists every configuration (the sweeps layout)."""
    from mlflow import MlflowClient

    from tlkit.tracking import log_run

    out = tmp_path / "grid"
    assert invoke("fit-head", "--head", "linear", "--cache", cache, "--out", out, "--epochs", "2",
                  "--no-progress").exit_code == 0
    rows = [{"lr": lr, "fold0": 0.5 + i / 10, "fold1": 0.6, "mean": 0.55 + i / 20, "std": 0.05, "rank": 2 - i,
             "seconds": 0.1 * (i + 1)} for i, lr in enumerate((0.001, 0.01))]
    for name, key, value in (("metrics.json", "search", rows),
                             ("config.json", "search", {"grid": {"lr": [0.001, 0.01]}, "chosen": {"lr": 0.01}})):
        doc = json.loads((out / name).read_text())
        doc[key] = value
        (out / name).write_text(json.dumps(doc))
    log_run(out, ["tensorboard", "mlflow"])
    for i, row in enumerate(rows):
        acc = _events(out / "tb" / "search" / f"{i:02d}-lr={row['lr']}")
        assert _scalars(acc, "cv/mean") == [(0, float(np.float32(row["mean"])))]
        assert _scalars(acc, "cv/fold0") == [(0, float(np.float32(row["fold0"])))]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "tlkit"]
    every = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in every if r.info.run_name == "grid"]
    children = sorted((r for r in every if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.info.run_name)
    assert [c.data.params for c in children] == [{"lr": "0.001"}, {"lr": "0.01"}]
    assert [c.data.metrics["cv/mean"] for c in children] == [row["mean"] for row in rows]
    assert [c.data.metrics["cv/rank"] for c in children] == [2.0, 1.0]


# -- the trackers start in a helper process while the run trains -----------------------------------------------


def _helpers_of(pid: int) -> list:
    """The live logging helpers that the command with ``pid`` started (found by their --parent, so also after
    the command is gone and they were re-parented)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "tlkit.tracking.background" in cmd and cmd[-2:] == ["--parent", str(pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
    return found


def test_the_trackers_are_imported_by_the_helper_not_by_the_command(cache, tmp_path):
    """The command trains while the helper imports MLflow and TensorBoard; what is logged is the same."""
    import launcher

    out = tmp_path / "run"
    code = ("import sys\nfrom tlkit.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('imported:', sorted(m for m in ('mlflow', 'tensorboard') if m in sys.modules), file=sys.stderr)\n")
    proc = launcher.run([sys.executable, "-c", code, "fit-head", "--head", "linear", "--cache", str(cache), "--out",
                         str(out), "--epochs", "2", "--no-progress", "--log-to", "tensorboard", "--log-to", "mlflow"],
                        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stderr
    assert f"logged to TensorBoard: tensorboard --logdir {out / 'tb'}" in proc.stdout
    from mlflow import MlflowClient

    (run,) = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}").search_runs(
        [MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}").get_experiment_by_name("tlkit").experiment_id])
    assert run.data.metrics["final/accuracy"] == _expected(out)[1]["final"]["accuracy"]


def test_a_run_that_fails_logs_nothing_and_leaves_no_helper(cache, tmp_path):
    import os
    import subprocess

    import launcher

    out = tmp_path / "run"
    scratch = tmp_path / "tmp"  # the helper's scratch folders, its staged MLflow store among them
    scratch.mkdir()
    missing = tmp_path / "nowhere.h5"  # found missing inside the run, after the helper started
    job = launcher.popen([sys.executable, "-m", "tlkit.cli", "fit-head", "--head", "linear", "--cache", str(missing),
                          "--out", str(out), "--log-to", "mlflow"], stdout=launcher.PIPE, stderr=launcher.PIPE, text=True,
                         env={**os.environ, "TMPDIR": str(scratch)})
    stdout, stderr = job.communicate(timeout=120)
    assert_one_line_error(subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr), str(missing))
    assert not out.exists() and not list(tmp_path.rglob("mlruns.db"))
    assert not _helpers_of(job.pid)
    assert list(scratch.iterdir()) == []  # stopped by SIGTERM, the helper took its scratch folders along


def test_the_helper_logs_into_a_store_opened_ahead_and_leaves_nothing_in_scratch(cache, tmp_path):
    """The run's new MLflow store is opened in the helper's scratch folder while the run trains, logged into,
    and copied beside the run: the run folder gets the whole store, the scratch folder keeps nothing."""
    import os

    import launcher

    out, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    proc = launcher.run([sys.executable, "-m", "tlkit.cli", "fit-head", "--head", "linear", "--cache", str(cache),
                         "--out", str(out), "--epochs", "2", "--no-progress", "--log-to", "mlflow"],
                        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("tlkit")
    assert experiment.artifact_location == (out.resolve() / "mlartifacts").as_uri()  # the run's, not scratch's
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["final/accuracy"] == _expected(out)[1]["final"]["accuracy"]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "config.json", "figures", "history.json", "metrics.json"]
    deadline = time.monotonic() + 10  # the helper removes its scratch folder after its last line
    while list(scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(scratch.iterdir()) == []


def test_a_command_whose_helper_is_gone_logs_itself_and_fails_with_the_helpers_line(logged_run, tmp_path):
    """Without a helper (it could not start, or died before the run finished) the command logs the run itself;
    a failure there (here MLflow refusing an unknown store) is the same one line the helper gives, not a
    traceback."""
    import shutil

    from tlkit.errors import TlkitError
    from tlkit.tracking.background import _Helper

    run_dir = tmp_path / "run"
    shutil.copytree(logged_run, run_dir, ignore=shutil.ignore_patterns("tb", "mlruns.db", "mlartifacts"))
    gone = _Helper.__new__(_Helper)
    gone.targets, gone.mlflow_uri, gone.proc, gone.done = ["mlflow"], "bogus://nowhere", None, False
    with pytest.raises(TlkitError, match=rf"^logging {re.escape(str(run_dir))} to mlflow failed: \S.*'bogus://nowhere'"):
        gone.log(run_dir, lambda line: None)
    assert (run_dir / "metrics.json").is_file()


def test_scratch_folders_of_killed_helpers_are_removed(tmp_path, monkeypatch):
    """A helper killed with its command (SIGKILL) cannot remove its scratch folder (its staged store): the next
    helper does."""
    import os
    import subprocess
    import tempfile

    from tlkit.tracking.background import SCRATCH_PREFIX, _remove_scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # A killed helper stays a zombie until it is reaped, which a container's first process may do late.
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while ") Z" not in Path(f"/proc/{zombie.pid}/stat").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in (dead.pid, zombie.pid, os.getpid()):
        (tmp_path / f"{SCRATCH_PREFIX}{pid}-x" / "staged").mkdir(parents=True)
        (tmp_path / f"{SCRATCH_PREFIX}{pid}-x" / "staged" / "mlruns.db").write_text("")
    _remove_scratch()
    zombie.wait()
    assert [p.name for p in tmp_path.iterdir()] == [f"{SCRATCH_PREFIX}{os.getpid()}-x"]  # a live helper's is kept
    _remove_scratch(os.getpid())  # a helper on its way out removes its own
    assert list(tmp_path.iterdir()) == []


def test_kill_9_of_the_command_takes_its_helper_along(cache, tmp_path):
    """The OOM killer's SIGKILL to the command alone: the helper dies with it (parent-death signal)."""
    import signal
    import time

    import launcher

    job = launcher.popen([sys.executable, "-m", "tlkit.cli", "fit-head", "--head", "quantum", "--cache", str(cache),
                          "--out", str(tmp_path / "run"), "--epochs", "300", "--no-progress", "--log-to", "mlflow"],
                         stdout=launcher.DEVNULL, stderr=launcher.DEVNULL)
    deadline = time.monotonic() + 60
    while not _helpers_of(job.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = _helpers_of(job.pid)
    assert helpers, "no helper started"
    job.send_signal(signal.SIGKILL)
    job.wait(10)
    deadline = time.monotonic() + 5
    while _helpers_of(job.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _helpers_of(job.pid)


def test_sigterm_mid_run_stops_the_helper_and_leaves_no_store_anywhere(cache, tmp_path):
    """A scheduler's SIGTERM while the head trains, once the helper has opened the run's store ahead: the command
    ends within seconds as interrupted, its helper with it, and no store is left, neither beside the run nor in
    the helper's scratch folder."""
    import os
    import signal

    import launcher

    out, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    job = launcher.popen([sys.executable, "-m", "tlkit.cli", "fit-head", "--head", "quantum", "--cache", str(cache),
                          "--out", str(out), "--epochs", "100000", "--no-progress", "--log-to", "mlflow"],
                         stdout=launcher.DEVNULL, stderr=launcher.DEVNULL, env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 120
    while not list(scratch.glob("tlkit-helper-*/staged/mlruns.db")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(scratch.glob("tlkit-helper-*/staged/mlruns.db")), "the helper opened no store ahead"
    assert job.poll() is None, "the run ended before it could be interrupted"
    sent = time.monotonic()
    job.send_signal(signal.SIGTERM)
    assert job.wait(20) == 128 + signal.SIGTERM and time.monotonic() - sent < 10
    deadline = time.monotonic() + 5
    while (_helpers_of(job.pid) or list(scratch.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _helpers_of(job.pid)
    assert list(scratch.iterdir()) == [] and not list(tmp_path.rglob("mlruns.db"))


def test_a_failure_to_log_is_one_line_and_the_run_is_kept(cache, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "a-file").write_text("")  # a store under a file: no folder can be made there
    result = invoke("fit-head", "--head", "linear", "--cache", cache, "--out", out, "--epochs", "2", "--no-progress",
                    "--log-to", "mlflow", "--mlflow-uri", f"sqlite:///{tmp_path / 'a-file' / 'x.db'}")
    assert_invoke_error(result, "logging", "mlflow", ignore=("train on",))
    assert (out / "metrics.json").is_file()


def test_a_full_disk_for_the_store_is_the_storage_line_and_leaves_no_store(cache, small_disk):
    """The run's files fit and MLflow's new store does not: the one storage line, the run kept, and no store
    cut short beside it (a partial copy was reported as "database disk image is malformed"), nor the artifacts
    of a store that is not there."""
    disk = small_disk(160 * 1024)
    out = disk / "run"
    result = invoke("fit-head", "--head", "linear", "--cache", cache, "--out", out, "--epochs", "2", "--no-progress",
                    "--log-to", "mlflow")
    assert_invoke_error(result, "logging", "mlflow", f"no space left on {disk}", "mlruns.db", ignore=("train on",))
    assert (out / "metrics.json").is_file()
    assert not [p.name for p in out.iterdir() if "mlruns" in p.name or p.name == "mlartifacts"]


def test_the_command_goes_on_at_the_helpers_done_line_not_at_its_exit(tmp_path):
    """A helper that has said ``done`` has written everything; what it does after (its exit) is not waited for,
    and a helper that ends without it is a failure with its error line."""
    import subprocess
    import time

    from tlkit.errors import TlkitError
    from tlkit.tracking.background import DONE, _Helper

    def helper(script: str) -> _Helper:
        h = _Helper.__new__(_Helper)
        h.targets, h.mlflow_uri, h.done = ["mlflow"], None, False
        h.proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.stdin.readline()\n" + script],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return h

    lingering = helper(f"print('logged to MLflow: here', flush=True)\nprint({DONE!r}, end='', flush=True)\n"
                       "time.sleep(60)")
    said = []
    t0 = time.monotonic()
    lingering.log(tmp_path, said.append)
    lingering.stop()
    assert time.monotonic() - t0 < 20 and said == ["logged to MLflow: here"]
    assert lingering.proc.poll() is None  # still in its (here: long) exit, and not waited for
    lingering.proc.kill()
    lingering.proc.wait()

    failing = helper("print('error: the store is read-only', flush=True)\nsys.exit(1)")
    with pytest.raises(TlkitError, match="^the store is read-only$"):
        failing.log(tmp_path, said.append)
    assert said == ["logged to MLflow: here"]
