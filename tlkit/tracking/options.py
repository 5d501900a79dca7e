"""The ``--log-to`` and ``--mlflow-uri`` options, one declaration for ``fit-head`` and ``train-scratch``."""

from __future__ import annotations

import click


def tracking_options(command):
    """Decorate a click command with ``--log-to`` (repeatable) and ``--mlflow-uri``."""
    command = click.option(
        "--mlflow-uri", default=None, metavar="URI",
        help="MLflow tracking store for --log-to mlflow [default: sqlite:///RUN/mlruns.db, beside the run].")(command)
    return click.option(
        "--log-to", "log_to", multiple=True, metavar="tensorboard|mlflow",
        help="Also log the finished run (per-epoch scalars of every seed and their mean, hyperparameters, final "
             "metrics with intervals, figures) to TensorBoard (RUN/tb/) or MLflow; repeatable. Needs "
             "pip install 'tlkit[track]'. E.g. --log-to tensorboard --log-to mlflow.")(command)
