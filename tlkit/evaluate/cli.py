"""``tlkit evaluate RUN``: a finished quantum run judged under other conditions, without retraining.

    RUN/evaluations/<conditions>/      one folder per condition ("exact", "noise-depolarizing=0.01_shots-1000")
        config.json                    the run's, with the evaluation's conditions (and what it was trained under)
        metrics.json                   the same blocks and intervals as a run (tlkit.runs.build_metrics)
        predictions.npz                every evaluated seed's probabilities
    RUN/evaluations/sweep-<component>[_<rest>]/accuracy.png, sweep.json   a swept noise component

An evaluation folder is read like a run (:func:`tlkit.runs.load_run`), so ``tlkit report RUN
RUN/evaluations/<conditions>`` shows it beside the run (same evaluation images, a "conditions" column).
"""

from __future__ import annotations

from pathlib import Path

import click

from tlkit.errors import TlkitError


@click.command("evaluate")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--noise", default=None, metavar="SPEC",
              help="Noise channels, e.g. depolarizing=0.01,readout=0.02 (docs/noise.md). A comma list of values on "
                   "one component sweeps it: depolarizing=0,0.001,0.01,0.05 [default: none].")
@click.option("--shots", default=None, type=int, help="Shots per <Z> [default: analytic expectation values].")
@click.option("--qdevice", default="default.qubit", show_default=True,
              help="PennyLane device running the trained circuit (inference only): default.qubit and default.mixed "
                   "run on tlkit's torch simulators, any other installed device (lightning.qubit, a hardware "
                   "plugin's) as a QNode.")
@click.option("--seed-index", "seed_index", default="all", show_default=True, metavar="K|all",
              help="Which of the run's seeds: its position in the run's seed list, or all of them.")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="The run's feature cache, if it has moved [default: the path config.json records].")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
def evaluate(run_dir, noise, shots, qdevice, seed_index, cache_path, progress):
    """Score a finished quantum run on its evaluation rows under other conditions.

    \b
    The trained heads are kept; only how the circuit runs changes: noise
    channels (--noise), finite shots (--shots), another device (--qdevice).
    With none of them, it reproduces the run's own final metrics. Results go
    to RUN/evaluations/<conditions>/ (metrics.json with the same blocks and
    intervals as a run, predictions.npz); a swept noise component also
    gets a plot of accuracy against its strength.

    \b
    Examples:
        tlkit evaluate runs/q10
        tlkit evaluate runs/q10 --noise depolarizing=0.01 --shots 1000
        tlkit evaluate runs/q10 --noise depolarizing=0,0.001,0.01,0.05 --shots 1000
        tlkit evaluate runs/q10 --qdevice lightning.qubit --seed-index 0
    """
    from tlkit.evaluate.job import run_evaluations

    if shots is not None and shots < 1:
        raise TlkitError(f"--shots must be at least 1, got {shots}")
    results = run_evaluations(Path(run_dir), noise, shots, qdevice, seed_index, cache_path, progress,
                              echo=lambda msg: click.echo(msg, err=True))
    for result in results:
        click.echo(result.line())
    if len(results) > 1:
        click.echo(f"plot: {results[0].plot}")

