"""Write a report folder: report.md, report.json, curves.png and one confusion-matrix image per run."""

from __future__ import annotations

import re
from pathlib import Path

from tlkit.atomic import atomic_json, atomic_text
from tlkit.report.figures import confusion_figure, curves_figure
from tlkit.report.table import build_table, render_markdown, unique_names
from tlkit.runs import load_run

CURVES = "curves.png"


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def write_report(run_paths, out_dir, baseline=None, curves: str = "final", compare=()) -> dict:
    """Load the runs (refusing incomparable ones), write every report file, return report.json's content.

    ``compare``: extra pairs "RUN_A:RUN_B" for the paired comparisons, beside every run against the baseline.
    """
    runs = [load_run(p) for p in run_paths]
    table = build_table(runs, baseline=baseline, compare=compare)  # refuses before anything is written
    names = unique_names(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    many = [name for name, run in zip(names, runs) if run.seeds and len(run.seeds) > 1]
    title = "Loss per epoch, ROC and precision-recall curves"
    if many:  # say what the band is where the figure is shown
        title += (f" (loss of {', '.join(many)}: the mean over the seeds, shaded from the lowest to the highest "
                  "seed; their ROC and precision-recall curves: the first seed)")
    figures = {title: CURVES}
    curves_figure(names, runs, out / CURVES, which=curves)
    class_names = table["class_names"]
    confusion = {}
    for name, run in zip(names, runs):
        file = f"confusion-{_file_safe(name)}.png"
        confusion_figure(name, run, class_names, out / file)
        confusion[name] = file
        figures[f"Confusion matrix: {name}"] = file
    table["figures"] = {"curves": CURVES, "curves_from": curves, "confusion": confusion}
    atomic_json(out / "report.json", table)
    atomic_text(out / "report.md", render_markdown(table, figures))
    return table
