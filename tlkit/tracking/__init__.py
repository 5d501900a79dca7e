"""Experiment tracking: ``--log-to tensorboard|mlflow`` on ``fit-head`` and ``train-scratch``.

A finished run folder is logged from its files (:mod:`tlkit.tracking.record`), so the
tracker shows exactly what ``metrics.json`` and ``history.json`` hold; the folder stays
the source of truth. Logs go beside the run by default (``RUN/tb/``, ``RUN/mlruns.db``).

    with Tracker(["tensorboard", "mlflow"], log_dir=run_dir) as tracker:
        tracker.log_run(run_dir)

A sweep run (``fit-head --grid``: one run folder whose metrics.json lists every configuration's
cross-validation scores under ``search``) is logged as the parent of one child run per
configuration, read from those rows: nothing to call. Sweeps made of several run folders
log one child run per folder under one parent (TensorBoard: one sub-folder per child, which
its HParams dashboard compares; MLflow: a parent run and children tagged with its id)::

    with Tracker(targets, log_dir=sweep_dir, sweep="lr-grid", sweep_params={"lr": "[0.01, 0.1]"}) as tracker:
        for config, run_dir in finished:
            tracker.child_run(run_dir, config)

tensorboard and mlflow are imported only when asked for (``pip install 'tlkit[track]'``).
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

from tlkit.errors import TlkitError
from tlkit.extras import MissingExtra

TARGETS = ("tensorboard", "mlflow")


def check_targets(targets) -> list[str]:
    """The de-duplicated targets, or a one-line error for an unknown or uninstalled one (cheap: no import)."""
    out = []
    for target in targets:
        if target not in TARGETS:
            raise TlkitError(f"unknown --log-to {target!r}; choose {' or '.join(TARGETS)}")
        if importlib.util.find_spec(target) is None:
            raise MissingExtra(f"--log-to {target} needs the package {target}: pip install 'tlkit[track]'")
        if target not in out:
            out.append(target)
    return out


class Tracker:
    """Logs finished run folders to the chosen trackers; a context manager (closes a sweep's parent run)."""

    def __init__(self, targets, log_dir, mlflow_uri: str | None = None, *, sweep: str | None = None,
                 sweep_params: dict | None = None, figures: bool = True, draw=None, staged=None):
        """``draw``: an executor (``concurrent.futures``) that draws the figures while this process logs the
        rest, as the logging helper does (:mod:`tlkit.tracking.background`); None draws them here, first.
        ``staged``: an MLflow store opened ahead (:class:`tlkit.tracking.to_mlflow.Staged`, the helper's)."""
        self.targets = check_targets(targets)
        self.log_dir = Path(log_dir)
        self.figures = figures
        self.draw = draw
        self.sweep = sweep
        self.tb = self.mlflow = None
        self._parent = None
        self.where: list[str] = []
        if "tensorboard" in self.targets:
            from tlkit.tracking.to_tensorboard import TensorBoardLog

            self.tb = TensorBoardLog(self.log_dir)
            self.where.append(f"TensorBoard: tensorboard --logdir {self.tb.root}")
        if "mlflow" in self.targets:
            from tlkit.tracking.to_mlflow import MlflowLog

            self.mlflow = MlflowLog(self.log_dir, mlflow_uri, staged=staged)
            self.where.append(f"MLflow: mlflow ui --backend-store-uri {self.mlflow.uri}")
            if sweep is not None:
                self._parent = self.mlflow.start_parent(sweep, sweep_params or {})

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._parent is not None:
            self.mlflow.finish_parent(self._parent, "FINISHED" if exc_type is None else "KILLED")
            self._parent = None
        if self.mlflow is not None and exc_type is None:
            self.mlflow.publish()
        elif self.mlflow is not None:
            self.mlflow.discard()

    def log_run(self, run_dir, config: dict | None = None) -> None:
        """Log one finished run; inside a sweep (``sweep=``) it is a child run with ``config`` as parameters."""
        from tlkit.tracking.record import figures_folder, read_record, search_children

        rec = read_record(run_dir)
        extra = {f"sweep.{k}": v for k, v in (config or {}).items()}
        folder = Path(rec.name) if self.sweep is not None else Path(".")
        with figures_folder() as tmp:
            # The figures, and TensorBoard's events that hold them, in the drawing worker where there is one (the
            # helper's), while this process writes to MLflow: the two take about as long. The MLflow run is even
            # closed meanwhile: its figures are files added after. What follows is the command's wait.
            work = partial(_figures_and_events, rec, Path(tmp), self.figures and bool(self.targets), self.tb, folder,
                           extra)
            pending = self.draw.submit(work) if self.draw is not None else None
            figures = work() if pending is None else []
            if self.mlflow is not None:
                run_id = self.mlflow.start(rec, extra, self._parent)
                self.mlflow.log_files(run_id, rec)
                self.mlflow.finish(run_id)
            if pending is not None:
                figures = pending.result()
            if self.mlflow is not None:
                self.mlflow.log_figures(run_id, figures)
        for child in search_children(rec):  # fit-head --grid: one child run per configuration
            if self.tb is not None:
                self.tb.log_child(folder / "search" / child.name, child.params, child.scalars)
            if self.mlflow is not None:
                self.mlflow.log_child(child.name, child.params, child.scalars, run_id)

    def child_run(self, run_dir, config: dict) -> None:
        """One configuration of a sweep: its finished run folder and the settings it was trained with."""
        if self.sweep is None:
            raise ValueError("child_run() needs a Tracker(..., sweep=NAME)")
        self.log_run(run_dir, config)


def _figures_and_events(rec, folder: Path, draw: bool, tb, tb_folder: Path, extra: dict) -> list:
    """The run's figures (drawn if ``draw``) and, with a TensorBoard log, its event file (scalars, hyperparameters
    and those figures); returns the figures."""
    from tlkit.tracking.record import render_figures

    figures = render_figures(rec, folder) if draw else []
    if tb is not None:
        tb.log(rec, tb_folder, extra, figures)
    return figures


def log_run(run_dir, targets, mlflow_uri: str | None = None, echo=lambda msg: None, draw=None, staged=None) -> None:
    """Log the finished run in ``run_dir`` to ``targets``, beside it; ``echo`` says where to look; ``draw``
    and ``staged`` as for :class:`Tracker`."""
    if not targets:
        return
    with Tracker(targets, run_dir, mlflow_uri, draw=draw, staged=staged) as tracker:
        tracker.log_run(run_dir)
    for line in tracker.where:
        echo(f"logged to {line}")
