"""The comparison table: one row per run, relative change against a baseline run.

Runs are comparable when they were evaluated on the same images with the
same labels and class names: the ``eval_fingerprint`` in their config.json
(:func:`tlkit.runs.eval_fingerprint`). That is the only requirement. Runs on
caches embedded with different weights, and scratch runs that have no cache
at all, are compared on purpose (the seed paper's whole point), and the
table's ``features`` column says what each run's network saw. Runs evaluated
on different images (another split, another data set, a cache that skipped
other files) are refused: their numbers would not measure the same thing.
So are head runs on caches of different stage-one precisions (see
:func:`check_one_precision`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tlkit.errors import TlkitError
from tlkit.runs import BEST_NOTE, Run

METRIC_NAMES = ("accuracy", "roc_auc", "average_precision")
COMPARISON_NOTE = (
    "difference = run minus baseline in final accuracy (each run's mean over its seeds); 95% interval by a "
    "paired bootstrap over the evaluation images (the same resamples for both runs, seeds averaged within each); "
    "McNemar: exact test on the first seed's predictions. Significant at 5% when the interval excludes 0 "
    "and p < 0.05."
)


def describe_conditions(conditions: dict | None) -> str:
    """A run's ``conditions`` (config.json, metrics.json) in a few words, for ``tlkit report``; "-" for none."""
    if not conditions:
        return "-"
    parts = [f"noise {conditions['noise']}" if conditions.get("noise") else "noise-free",
             f"{conditions['shots']} shots" if conditions.get("shots") else "analytic"]
    if conditions.get("qdevice") and conditions["qdevice"] != "default.qubit":
        parts.append(conditions["qdevice"])
    if conditions.get("trained_under"):
        parts.append(f"trained {conditions['trained_under']}")
    return ", ".join(parts)


def unique_names(runs: list[Run]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    names = []
    for run in runs:
        seen[run.name] += 1
        names.append(run.name if seen[run.name] == 1 else f"{run.name}-{seen[run.name]}")
    return names


def check_comparable(runs: list[Run]) -> str:
    """The shared eval fingerprint, or a one-line :class:`TlkitError` naming the runs that differ."""
    missing = [str(r.path) for r in runs if not r.config.eval_fingerprint]
    if missing:
        raise TlkitError(f"{', '.join(missing)}: config.json has no eval_fingerprint, so comparability cannot be checked")
    groups: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        groups[run.config.eval_fingerprint].append(str(run.path))
    if len(groups) > 1:
        parts = [f"{', '.join(paths)} (evaluated on set {fp[:10]}, {_split_of(runs, fp)})" for fp, paths in groups.items()]
        raise TlkitError(
            "runs are not comparable, they were evaluated on different images or labels: " + "; ".join(parts)
            + ". Report runs trained on the same data and split (for heads: caches of the same images)"
        )
    return next(iter(groups))


def _precision_of(run: Run) -> str | None:
    """A head run's cache precision (with its int8 calibration digest); None for runs without a cache."""
    provenance = getattr(run.config.part, "cache_provenance", None)
    if provenance is None:
        return None
    name, digest = provenance.precision, provenance.int8_calibration_sha256  # typed: old runs read as fp32
    return f"{name} (calibration {digest[:10]})" if digest else name


def check_one_precision(runs: list[Run]) -> None:
    """Refuse head runs whose caches were embedded at different precisions (or int8 calibrations).

    Weights are what this table compares on purpose; precision is how stage one computed, not an
    experimental variable, and its cost is the size of the differences the table exists to show
    (int8 moved the linear probe by 6.5 points on random weights, docs/precision.md). A mixed table
    would credit that to a head or to the weights. Scratch runs have no cache and never conflict.
    Precision against fp32 is measured by bench/bench_precision.py, on one split, with one probe.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        precision = _precision_of(run)
        if precision is not None:
            groups[precision].append(str(run.path))
    if len(groups) > 1:
        raise TlkitError(
            "head runs on caches of different precisions are not comparable: "
            + "; ".join(f"{', '.join(paths)} at {precision}" for precision, paths in groups.items())
            + ". Report runs whose caches were embedded at one --precision (bench/bench_precision.py compares precisions)"
        )


def _split_of(runs: list[Run], fingerprint: str) -> str:
    for run in runs:
        if run.config.eval_fingerprint == fingerprint:
            n = run.metrics.get("n_eval", "?")
            return f"split {run.config.eval_split!r}, {n} images"
    return "?"


def relative_change(value, base):
    """(value - base) / base in percent, the seed paper's '31.52% improvement' figure; None if undefined."""
    if value is None or base is None or base == 0:
        return None
    return (value - base) / abs(base) * 100.0


def pick_baseline(runs: list[Run], names: list[str], baseline) -> int:
    if baseline is None:
        return 0
    found = _find_run(runs, names, baseline)
    if found is None:
        raise TlkitError(f"--baseline {baseline} is not one of the runs given ({', '.join(names)})")
    return found


def _find_run(runs: list[Run], names: list[str], wanted) -> int | None:
    """The index of the run given as ``wanted`` (its folder or its name in the report), or None."""
    from pathlib import Path

    path = Path(wanted)
    for i, run in enumerate(runs):
        if path.exists() and path.resolve() == run.path.resolve():
            return i
    for i, name in enumerate(names):
        if str(wanted) in (name, str(runs[i].path)):
            return i
    return None


def parse_pairs(runs: list[Run], names: list[str], pairs) -> list[tuple[int, int]]:
    """``--compare RUN_A:RUN_B`` values as (run, baseline) indices; a one-line TlkitError for the others.

    A folder name may itself hold ':', so every split point is tried and the one naming two runs counts.
    """
    out = []
    for pair in pairs or ():
        text = str(pair)
        found = [(a, b) for i in range(len(text)) if text[i] == ":"
                 for a, b in [(_find_run(runs, names, text[:i]), _find_run(runs, names, text[i + 1:]))]
                 if a is not None and b is not None]
        if not found:
            raise TlkitError(f"--compare {text}: give RUN_A:RUN_B, two of the runs given ({', '.join(names)})")
        if found[0][0] == found[0][1]:
            raise TlkitError(f"--compare {text}: a run compared with itself")
        out.append(found[0])
    return out


def _aligned(run: Run, order: np.ndarray) -> np.ndarray:
    """The run's per-seed final probabilities with its images in ``order`` (paths).

    Runs with one eval fingerprint hold the same images, but each in its own order (a cache's rows, a
    folder's listing): pairing needs them image by image.
    """
    paths = np.asarray(run.predictions["paths"]).astype(str)
    position = {p: i for i, p in enumerate(paths)}
    return run.proba_seeds("final")[:, [position[p] for p in order]]


def comparisons(runs: list[Run], names: list[str], pairs: list[tuple[int, int]]) -> list[dict]:
    """One :func:`tlkit.stats.compare` entry per (run, baseline) pair, on the baseline's image order.

    ``flagged`` names the runs of the pair that did not train (:mod:`tlkit.health`): their verdict compares
    a head that never left its start.
    """
    from tlkit.health import describe
    from tlkit.stats import compare

    out = []
    for i, j in pairs:
        order = np.asarray(runs[j].predictions["paths"]).astype(str)
        labels = np.asarray(runs[j].predictions["labels"])
        entry = compare(labels, _aligned(runs[i], order), _aligned(runs[j], order), run=names[i], baseline=names[j])
        entry["n_seeds"] = {"run": len(runs[i].proba_seeds()), "baseline": len(runs[j].proba_seeds())}
        entry["flagged"] = {names[k]: describe(runs[k].health) for k in (i, j) if describe(runs[k].health)}
        out.append(entry)
    return out


def describe_comparison(c: dict) -> str:
    """The terminal line of one comparison."""
    interval = "no interval" if c["ci_low"] is None else f"95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}"
    return (f"{c['run']} vs {c['baseline']}: final accuracy {c['difference']:+.4f} ({interval}, paired bootstrap); "
            f"McNemar p = {c['mcnemar_p']:.3g} on {c['n_discordant']} discordant images (first seed): {_verdict(c)}")


# --- training health: every table marks a run that did not train (tlkit.health) ------------------
HEALTH_MARK = "⚠"
HEALTH_NOTE = (f"{HEALTH_MARK} marks a run where at least one seed did not train (tlkit's training-health check: "
               "see Training health)")


def _health_row(run: Run) -> dict:
    from tlkit.health import describe

    health = run.health
    return {"n_seeds": health["n_seeds"], "n_flagged": health["n_flagged"], "flags": health["flags"],
            "describe": describe(health), "stored": "health" in run.metrics}


def _name(row: dict) -> str:
    """A run's name in a table, marked when it did not train."""
    return f"{row['name']} {HEALTH_MARK}" if (row.get("health") or {}).get("n_flagged") else row["name"]


def _verdict(c: dict) -> str:
    from tlkit.stats import verdict

    flagged = c.get("flagged") or {}
    said = "; ".join(f"{name}: {text}" for name, text in flagged.items())
    return verdict(c) + (f" ({HEALTH_MARK} compares a run that did not train: {said})" if flagged else "")


def _health_legend(table: dict) -> list[str]:
    return [f"{HEALTH_NOTE}.", ""] if any((r.get("health") or {}).get("n_flagged") for r in table["runs"]) else []


def _health_markdown(table: dict) -> list[str]:
    flagged = [r for r in table["runs"] if (r.get("health") or {}).get("n_flagged")]
    if not flagged:
        return []
    from tlkit.health import CRITERIA

    lines = ["## Training health", ""]
    lines += [f"- **{r['name']}** {HEALTH_MARK}: {r['health']['describe']}" for r in flagged]
    return lines + ["", f"Checks: {CRITERIA}. The numbers behind each flag are in the run's metrics.json "
                        "(`health`). Its accuracy is not what this head can do: it never left its start.", ""]
# --- end of training health ---------------------------------------------------------------------


def _block(metrics_block: dict) -> dict:
    return {k: metrics_block.get(k) for k in ("epoch", "loss", *METRIC_NAMES, "confusion_matrix")}


def build_table(runs: list[Run], baseline=None, compare=()) -> dict:
    """The report as data (what report.json holds).

    ``comparisons``: every run against the baseline, then the pairs of ``compare`` ("RUN_A:RUN_B",
    A against B), each the paired comparison of :func:`tlkit.stats.compare`.
    """
    if not runs:
        raise TlkitError("no runs given")
    fingerprint = check_comparable(runs)
    check_one_precision(runs)
    names = unique_names(runs)
    base_i = pick_baseline(runs, names, baseline)
    pairs = [(i, base_i) for i in range(len(runs)) if i != base_i]
    pairs += [pair for pair in parse_pairs(runs, names, compare) if pair not in pairs]
    base = runs[base_i].metrics
    rows = []
    for name, run in zip(names, runs):
        m = run.metrics
        rows.append({
            "name": name,
            "path": str(run.path),
            "kind": run.config.kind,
            "model": run.config.describe_model(),
            "features": run.config.describe_features() + (f" at {_precision_of(run)}" if _precision_of(run) not in (None, "fp32") else ""),
            "conditions": describe_conditions(m.get("conditions") or run.config.details.get("conditions")),
            "epochs": len(run.history),
            "final": _block(m["final"]),
            "best": _block(m["best"]),
            "training_seconds": m.get("training_seconds"),
            "budget": _budget(run),
            "seeds": run.seeds,
            "summary": m.get("summary"),  # intervals; absent from runs written before they existed
            "health": _health_row(run),  # training-health flags (tlkit.health); computed for older runs
            "relative_change": {
                "final": {k: relative_change(m["final"].get(k), base["final"].get(k)) for k in METRIC_NAMES},
                "best": {k: relative_change(m["best"].get(k), base["best"].get(k)) for k in METRIC_NAMES},
                "training_seconds": relative_change(m.get("training_seconds"), base.get("training_seconds")),
            },
        })
    first = runs[0]
    return {
        "baseline": names[base_i],
        "eval_fingerprint": fingerprint,
        "eval_split": first.config.eval_split,
        "n_eval": first.metrics.get("n_eval"),
        "class_names": first.metrics.get("class_names") or first.config.class_names,
        "note": BEST_NOTE,
        "relative_change_note": "relative change = (run - baseline) / baseline, in percent",
        "runs": rows,
        "comparisons": comparisons(runs, names, pairs),
        "comparison_note": COMPARISON_NOTE,
        "budget_warning": budget_warning(names, [row["budget"] for row in rows]),
    }


def _budget(run: Run) -> str:
    """A run's tuning budget ("grid of 12, 5-fold"; see HeadPart.budget); a scratch run's is untuned."""
    budget = getattr(run.config.part, "budget", None)
    return budget() if budget else "untuned (fixed hyperparameters)"


def budget_warning(names: list[str], budgets: list[str]) -> str | None:
    """One line when the compared runs were tuned with different budgets (None when they all share one)."""
    if len(set(budgets)) < 2:
        return None
    return ("warning: the runs were tuned with different budgets (" + "; ".join(f"{n}: {b}" for n, b in zip(names, budgets))
            + "): part of a difference between them may be the tuning's")


def _num(value, digits=4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _epoch(value) -> str:
    return "–" if value is None else str(value)  # logreg has no epochs


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def render_markdown(table: dict, figures: dict[str, str] | None = None) -> str:
    lines = [
        "# tlkit report",
        "",
        f"{len(table['runs'])} runs evaluated on the same {table['n_eval']} images "
        f"(split `{table['eval_split']}`, classes {', '.join(table['class_names'] or [])}; "
        f"eval fingerprint `{table['eval_fingerprint'][:12]}`).",
        "",
        "## Metrics",
        "",
        "| run | model | features | conditions | accuracy (final) | ROC AUC (final) | avg precision (final) "
        "| final epoch | accuracy (best) | ROC AUC (best) | avg precision (best) | best epoch | training s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table["runs"]:
        f, b = r["final"], r["best"]
        lines.append(
            f"| {_name(r)} | {r['model']} | {r['features']} | {r['conditions']} | {_num(f['accuracy'])} | {_num(f['roc_auc'])} "
            f"| {_num(f['average_precision'])} | {_epoch(f['epoch'])} | {_num(b['accuracy'])} | {_num(b['roc_auc'])} "
            f"| {_num(b['average_precision'])} | {_epoch(b['epoch'])} | {_num(r['training_seconds'], 1)} |"
        )
    lines += ["", "Tuning budget: " + "; ".join(f"{r['name']} {r['budget']}" for r in table["runs"]) + "."]
    if table.get("budget_warning"):
        lines += ["", f"**{table['budget_warning'][0].upper()}{table['budget_warning'][1:]}**"]
    lines += [
        "",
        f"## Relative change against `{table['baseline']}`",
        "",
        "| run | accuracy (final) | ROC AUC (final) | avg precision (final) | accuracy (best) | ROC AUC (best) "
        "| avg precision (best) | training time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table["runs"]:
        rf, rb = r["relative_change"]["final"], r["relative_change"]["best"]
        lines.append(
            f"| {_name(r)} | {_pct(rf['accuracy'])} | {_pct(rf['roc_auc'])} | {_pct(rf['average_precision'])} "
            f"| {_pct(rb['accuracy'])} | {_pct(rb['roc_auc'])} | {_pct(rb['average_precision'])} "
            f"| {_pct(r['relative_change']['training_seconds'])} |"
        )
    lines += ["", f"{table['relative_change_note']}.", "", f"_{table['note']}_", ""] + _health_legend(table)
    lines += _intervals_markdown(table) + _comparisons_markdown(table) + _health_markdown(table)
    if figures:
        lines += ["## Figures", ""]
        for title, file in figures.items():
            lines += [f"### {title}", "", f"![{title}]({file})", ""]
    return "\n".join(lines)


def _interval(low, high) -> str:
    return "n/a" if low is None or high is None else f"{low:.4f} – {high:.4f}"


def _intervals_markdown(table: dict) -> list[str]:
    lines = [
        "## How sure: intervals of the final accuracy",
        "",
        "| run | seeds | accuracy (final, mean) | std across seeds | 95% interval across seeds (Student t) "
        "| 95% interval over the evaluation images (bootstrap) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in table["runs"]:
        summary = r.get("summary") or {}
        seeds = summary.get("accuracy") or {}
        images = (summary.get("images") or {}).get("accuracy") or {}
        n = len(r["seeds"]) if r.get("seeds") else 1
        lines.append(f"| {_name(r)} | {n} | {_num(r['final']['accuracy'])} | {_num(seeds.get('std'))} "
                     f"| {_interval(seeds.get('ci_low'), seeds.get('ci_high'))} "
                     f"| {_interval(images.get('ci_low'), images.get('ci_high'))} |")
    lines += ["", "Across seeds: how much the result moves with the seed (n/a with one seed). Over images: how much "
              "it would move on other images like these (seeds averaged within each resample; n/a for runs "
              "written before tlkit recorded it).", ""]
    return lines


def _comparisons_markdown(table: dict) -> list[str]:
    if not table["comparisons"]:
        return []
    lines = [
        "## Paired comparisons",
        "",
        "| run | against | difference in final accuracy | 95% interval (paired bootstrap) | McNemar p (first seed) "
        "| discordant images | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for c in table["comparisons"]:
        low = "n/a" if c["ci_low"] is None else f"{c['ci_low']:+.4f} – {c['ci_high']:+.4f}"
        mark = {name: f"{name} {HEALTH_MARK}" for name in c.get("flagged") or {}}
        lines.append(f"| {mark.get(c['run'], c['run'])} | {mark.get(c['baseline'], c['baseline'])} "
                     f"| {c['difference']:+.4f} | {low} | {c['mcnemar_p']:.3g} | {c['n_discordant']} | {_verdict(c)} |")
    return lines + ["", table["comparison_note"], ""]
