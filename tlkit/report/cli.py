"""``tlkit report``: the command line of the run comparison."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "-o", default="reports", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for report.md, report.json, curves.png and confusion-<run>.png.")
@click.option("--baseline", default=None,
              help="The run the others are compared with (its folder or name) [default: the first run].")
@click.option("--curves", default="final", show_default=True, type=click.Choice(["final", "best"]),
              help="Which epoch's predictions the ROC and precision-recall curves use.")
@click.option("--compare", "compare", multiple=True, metavar="RUN_A:RUN_B",
              help="Also compare run A with run B (folders or names; repeatable), beside every run against "
                   "the baseline, e.g. --compare runs/quantum:runs/bottleneck.")
def report(runs, out, baseline, curves, compare):
    """Compare finished runs (fit-head, train-scratch) in tables and figures.

    \b
    Writes to --out:
      report.md / report.json  accuracy, ROC AUC, average precision, training
                               seconds, at the final and at the best epoch
                               (labelled), and each run's relative change
                               against the baseline run, in percent:
                               (run - baseline) / baseline; the intervals of
                               each run (across seeds, over images); and the
                               paired comparisons: each run minus the
                               baseline in final accuracy, its 95% interval
                               (paired bootstrap over images), the exact
                               McNemar p, and "significant at 5%" or "not
                               significant" (--compare adds pairs)
      curves.png               loss per epoch (eval solid, train dashed; the
                               mean of a run's seeds, shaded min to max), ROC
                               and precision-recall curves of every run
      confusion-<run>.png      each run's confusion matrix, final and best

    \b
    Runs must have been evaluated on the same images with the same labels
    (the eval_fingerprint in their config.json); otherwise nothing is
    written and the runs that differ are named. Runs on caches embedded
    with different weights are accepted (the features column says which).

    \b
    Example:
        tlkit report runs/scratch runs/linear runs/quantum -o report --baseline runs/scratch
        tlkit report runs/linear runs/quantum runs/bottleneck --compare runs/quantum:runs/bottleneck
    """
    from tlkit.report import write_report
    from tlkit.report.table import describe_comparison

    table = write_report(runs, out, baseline=baseline, curves=curves, compare=compare)
    for row in table["runs"]:
        f, rel = row["final"], row["relative_change"]["final"]["accuracy"]
        change = "" if row["name"] == table["baseline"] or rel is None else f" ({rel:+.2f}% vs {table['baseline']})"
        seeds = f" (mean of {len(row['seeds'])} seeds)" if row.get("seeds") and len(row["seeds"]) > 1 else ""
        flagged = (row.get("health") or {}).get("describe")  # a run that did not train says so
        health = f"  ⚠ {flagged}: see report.md, Training health" if flagged else ""
        click.echo(f"{row['name']}: final accuracy {f['accuracy']:.4f}{seeds}{change}{health}")
    for comparison in table["comparisons"]:
        click.echo(describe_comparison(comparison))
    click.echo("tuning budget: " + "; ".join(f"{row['name']} {row['budget']}" for row in table["runs"]))
    if table["budget_warning"]:
        click.echo(table["budget_warning"], err=True)
    click.echo(f"report written to {out}/report.md")
