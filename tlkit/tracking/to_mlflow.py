"""MLflow: one run per run folder, a sweep as a parent run with one child per configuration.

The store is ``sqlite:///LOG_DIR/mlruns.db`` (MLflow's own default kind since 3.7: no server)
unless ``--mlflow-uri`` names another; artifacts (config.json, history.json, metrics.json and
the figures) go to ``LOG_DIR/mlartifacts/`` for a new experiment. Everything goes through
``MlflowClient`` in batches, so no global MLflow state is touched.
"""

from __future__ import annotations

import time
from pathlib import Path

from tlkit.extras import require
from tlkit.tracking.record import RunRecord

DB = "mlruns.db"
ARTIFACTS = "mlartifacts"
EXPERIMENT = "tlkit"
PARENT_TAG = "mlflow.parentRunId"


def default_uri(log_dir: Path) -> str:
    return f"sqlite:///{Path(log_dir).resolve() / DB}"


def _template_db(version: str) -> Path:
    """An empty MLflow sqlite store at this MLflow's schema, made once per MLflow version.

    Why: MLflow creates a new sqlite store by running every schema migration (alembic), which took
    seconds, many times a small head's training time; a copy of a migrated empty file is instant,
    and MLflow then only checks that its schema revision is the current one.
    """
    import os

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlkit"
    template = cache / f"mlflow-{version}-empty.db"
    if not template.exists():
        from mlflow import MlflowClient

        from tlkit.atomic import atomic_path

        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(template) as tmp:
            MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # creates and migrates the tables
    return template


def _new_store(uri: str) -> None:
    """Start a new sqlite store from the migrated template (see :func:`_template_db`); other stores as they are."""
    import shutil

    import mlflow

    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.exists() or not path.parent.is_dir():
        return
    try:
        template = _template_db(mlflow.__version__)
    except OSError:  # no writable cache folder: MLflow migrates the new file itself
        return
    from tlkit.atomic import atomic_path

    # Whole or not at all: a copy cut short by a full disk left a store MLflow called "malformed".
    with atomic_path(path) as tmp:
        shutil.copyfile(template, tmp)


def _schema_head_once() -> None:
    """Look MLflow's newest schema revision up once per process, not at every store it opens.

    Why: opening a store checks its schema against the newest revision, which MLflow finds by loading all of
    its migration scripts (68, 0.03 s) each time; the answer is fixed for an installed MLflow, and a helper
    that warmed itself on a scratch store opens the run's store next. Where MLflow has moved the function,
    nothing changes.
    """
    import functools

    from mlflow.store.db import utils

    latest = getattr(utils, "_get_latest_schema_revision", None)
    if latest is not None and not hasattr(latest, "cache_info"):
        utils._get_latest_schema_revision = functools.cache(latest)


def warm(scratch: Path) -> None:
    """Every store call the logging makes, once, on a new store in ``scratch`` (the logging helper): MLflow's
    engine, SQLAlchemy's compiled statements and the artifact repository are then ready for the real run."""
    from mlflow.entities import Metric

    log = MlflowLog(scratch)
    run_id = log.client.create_run(log.experiment_id, run_name="warm").info.run_id
    log._batch(run_id, params={"warm": 1}, metrics=[Metric("warm", 1.0, int(time.time() * 1000), 0)])
    staged = Path(scratch) / "staged"
    staged.mkdir()
    (staged / "warm.txt").write_text("warm\n")
    log.client.log_artifacts(run_id, str(staged))
    log.client.set_terminated(run_id, "FINISHED")


class Staged:
    """A new, empty store opened ahead in a scratch folder (the logging helper, while the run trains), so that a
    run's own new store costs no opening when the run is logged: the run is logged into it, and the file is then
    copied beside the run, whole or not at all (:meth:`MlflowLog.publish`).

    Why: opening a new store (copying the template, making the engine, checking the schema) was 0.015 s of the
    0.1 s the command waits for once its run is written. Nothing in a store names its own file (runs and
    experiments hold their artifact locations only), so the copy is the store as if it had been made there.
    The scratch folder is the helper's to remove.
    """

    def __init__(self, folder: Path):
        folder.mkdir()
        self.path = folder / DB
        self.log = MlflowLog(folder)
        self.log.open_store()


class MlflowLog:
    """One MLflow store. Its client, with the store's engine, is made on first use: opening a store checks
    its schema (against every migration file, the first time in a process: 0.1-0.2 s), which can then run while
    a figure is drawn.

    ``staged``: a :class:`Staged` store to log into when this folder's own store would be a new file; the file
    then reaches ``log_dir`` at :meth:`publish`.
    """

    def __init__(self, log_dir: Path, uri: str | None = None, experiment: str = EXPERIMENT,
                 staged: Staged | None = None):
        require("mlflow", "track", "--log-to mlflow")
        self.log_dir = Path(log_dir)
        self.uri = uri or default_uri(log_dir)
        self.experiment = experiment
        self._client = None
        self._staged = staged if uri is None and not (self.log_dir / DB).exists() else None

    def open_store(self) -> None:
        """Open the store (a new sqlite file is first copied from the template) without touching experiments."""
        import logging

        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." is not news to a user
            logging.getLogger(name).setLevel(logging.WARNING)
        _new_store(self.uri)
        _schema_head_once()
        self._client = MlflowClient(tracking_uri=self.uri)
        self._client.get_experiment_by_name(self.experiment)  # the engine, its connection, the schema check

    @property
    def client(self):
        if self._client is None:
            if self._staged is not None:
                self._client = self._staged.log._client
            else:
                self.open_store()
            found = self._client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else self._client.create_experiment(
                self.experiment, artifact_location=(self.log_dir.resolve() / ARTIFACTS).as_uri())
        return self._client

    def publish(self) -> None:
        """A staged store's file, copied beside the run whole or not at all (a full disk: the one storage
        line, and no store cut short); nothing for a store that was written in place."""
        if self._staged is None or self._client is None:
            return
        import shutil

        from tlkit.atomic import atomic_path

        try:
            with atomic_path(self.log_dir / DB) as tmp:
                shutil.copyfile(self._staged.path, tmp)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """A staged store that is not published leaves nothing beside the run: the artifacts its runs wrote
        there (``mlartifacts/``) are removed, since no store would name them. TensorBoard's files stay: they are
        whole without it."""
        if self._staged is None or self._client is None:
            return
        import shutil

        shutil.rmtree(self.log_dir / ARTIFACTS, ignore_errors=True)

    @property
    def experiment_id(self) -> str:
        self.client  # noqa: B018 - opens the store, finding or making the experiment
        return self._experiment_id

    def start_parent(self, name: str, params: dict) -> str:
        """A parent run for a sweep; its children are logged with :meth:`start` (``parent=`` its id)."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"tlkit.kind": "sweep"})
        self._batch(run.info.run_id, params=params)
        return run.info.run_id

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def start(self, rec: RunRecord, extra_params: dict | None = None, parent: str | None = None) -> str:
        """A new MLflow run holding ``rec``'s parameters and metrics, in batches; returns its id."""
        from mlflow.entities import Metric

        tags = {"tlkit.run_dir": str(rec.run.path.resolve()), "tlkit.kind": rec.run.config.kind}
        if parent:
            tags[PARENT_TAG] = parent
        run_id = self.client.create_run(self.experiment_id, run_name=rec.name, tags=tags).info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, step, value in rec.epoch_scalars]
        metrics += [Metric(tag, value, now, rec.final_step) for tag, value in rec.final_scalars.items()]
        self._batch(run_id, params={**rec.params, **(extra_params or {})}, metrics=metrics)
        return run_id

    def log_files(self, run_id: str, rec: RunRecord) -> None:
        """The run's files (config.json, history.json, metrics.json) in one artifact upload: each
        ``log_artifact`` call looks the run and its store up again."""
        self._upload(run_id, rec.files)

    def finish(self, run_id: str) -> None:
        """The run is marked finished; its figures may follow (:meth:`log_figures`): artifacts need no open run."""
        self.client.set_terminated(run_id, "FINISHED")

    def log_figures(self, run_id: str, figures) -> None:
        """The figures, under ``figures/``, in one upload."""
        self._upload(run_id, [figure.path for figure in figures], "figures")

    def _upload(self, run_id: str, paths, folder: str | None = None) -> None:
        import shutil
        import tempfile

        if not paths:
            return
        with tempfile.TemporaryDirectory(prefix="tlkit-mlflow-") as stage:
            for path in paths:
                shutil.copyfile(path, Path(stage) / Path(path).name)
            self.client.log_artifacts(run_id, stage, folder)

    def log_child(self, name: str, params: dict, scalars: dict[str, float], parent: str) -> str:
        """One configuration of a sweep as a child run of ``parent``: its settings and scores."""
        from mlflow.entities import Metric

        tags = {PARENT_TAG: parent, "tlkit.kind": "sweep-configuration"}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        now = int(time.time() * 1000)
        self._batch(run_id, params=params, metrics=[Metric(k, v, now, 0) for k, v in scalars.items()])
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _batch(self, run_id: str, params: dict | None = None, metrics: list | None = None) -> None:
        """As few ``log_batch`` calls as MLflow's limits allow (each is a transaction): per call at most 100
        params and 1000 values in all."""
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in (params or {}).items()]
        metrics = list(metrics or [])
        while params or metrics:
            some_params, params = params[:100], params[100:]
            room = 1000 - len(some_params)
            some_metrics, metrics = metrics[:room], metrics[room:]
            self.client.log_batch(run_id, metrics=some_metrics, params=some_params)
