"""The ``tlkit evaluate`` job: run folder in, RUN/evaluations/<conditions>/ out (see :mod:`tlkit.evaluate.cli`)."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError
from tlkit.evaluate.scorer import Conditions
from tlkit.runs import METRICS, RunConfig, RunWriter, build_metrics, eval_fingerprint, load_run

EVALUATIONS = "evaluations"


@dataclass
class Result:
    conditions: Conditions
    path: Path
    metrics: dict
    kept: bool  # an earlier evaluate wrote it (same conditions, same numbers)
    plot: Path | None = None

    def line(self) -> str:
        summary = (self.metrics.get("summary") or {}).get("accuracy") or {}
        accuracy = f"{self.metrics['final']['accuracy']:.4f}"
        if summary.get("ci_low") is not None:
            accuracy += f" ± {(summary['ci_high'] - summary['ci_low']) / 2:.4f}"
        n_seeds = len(self.metrics.get("seeds", [])) or 1
        seconds = self.metrics.get("evaluation", {}).get("seconds")
        when = " (kept from an earlier evaluate)" if self.kept else f" in {seconds:.2f} s" if seconds is not None else ""
        return (f"{self.conditions.folder}: accuracy {accuracy} ({n_seeds} seed{'s' if n_seeds > 1 else ''}), ROC AUC "
                f"{self.metrics['final']['roc_auc']:.4f}{when} -> {self.path}")


def run_evaluations(run_dir: Path, noise, shots, qdevice: str, seed_index: str, cache_path, progress, echo) -> list[Result]:
    from tlkit.heads.noise import parse_sweep
    from tlkit.heads.quantum import make_qnode, resolve_simulator
    from tlkit.heads.registry import load_head

    run = load_run(run_dir)
    part = run.config.part
    if run.config.kind != "head" or getattr(part, "head", None) != "quantum":
        what = getattr(part, "head", None) or run.config.kind
        raise TlkitError(f"{run_dir} holds a {what} run; evaluate scores quantum heads (fit-head --head quantum)")
    component, models = parse_sweep(noise)
    all_seeds = list(part.seeds or [part.head_params.get("seed", 0)])
    seeds = _pick_seeds(all_seeds, seed_index, run_dir)
    conditions = [Conditions(model, shots, qdevice) for model in models]
    params = part.head_params
    for c in conditions:  # an unknown device, or noise on one that cannot take it, fails before any work
        if resolve_simulator("auto", c.qdevice, c.shots, c.noise) != "torch":
            make_qnode(int(params["n_qubits"]), c.qdevice, c.shots, c.noise, params.get("entangling", "chain"))
    X, y, paths = _evaluation_rows(run, cache_path)
    heads = [load_head(run_dir, seed=s) for s in seeds]

    from tqdm import tqdm

    suffix = "" if str(seed_index) == "all" else f"_seed-{seeds[0]}"  # one seed of many: its own folder
    enabled = sys.stderr.isatty() if progress is None else progress
    results = []
    for c in tqdm(conditions, desc="evaluate", unit="condition", disable=not enabled or len(conditions) == 1,
                  file=sys.stderr):
        results.append(_evaluate_one(run, heads, seeds, X, y, paths, c, suffix))
    if component is not None:
        plot = _sweep_plot(run_dir, component, results)
        for r in results:
            r.plot = plot
    return results


def _pick_seeds(seeds: list[int], seed_index: str, run_dir) -> list[int]:
    if str(seed_index) == "all":
        return seeds
    try:
        k = int(seed_index)
    except ValueError:
        raise TlkitError(f"--seed-index must be a position in the run's seeds or 'all', got {seed_index!r}") from None
    if not 0 <= k < len(seeds):
        raise TlkitError(f"--seed-index {k}: {run_dir} holds {len(seeds)} seed(s) (positions 0 to {len(seeds) - 1})")
    return [seeds[k]]


def _evaluation_rows(run, cache_path):
    """The run's evaluation rows, read again from its cache and checked against its eval fingerprint."""
    from tlkit.cache import load_cache
    from tlkit.heads.splits import plan_splits

    part = run.config.part
    cache = load_cache(cache_path or part.cache)
    plan = plan_splits(cache, val_fraction=part.val_fraction or 0.2, split_seed=part.split_seed or 0)
    if eval_fingerprint(plan.eval.paths, plan.eval.labels, cache.class_names) != run.config.eval_fingerprint:
        raise TlkitError(f"the evaluation rows of {cache.path} are not the ones {run.path} was evaluated on "
                         "(the cache changed); give the run's own cache with --cache")
    return plan.eval.features, plan.eval.labels, plan.eval.paths


def _evaluate_one(run, heads, seeds, X, y, paths, conditions: Conditions, suffix: str) -> Result:
    from tlkit.evaluate.scorer import score

    folder = run.path / EVALUATIONS / (conditions.folder + suffix)
    if (folder / METRICS).exists():
        previous = json.loads((folder / METRICS).read_text())
        if previous.get("seeds_evaluated") == seeds:
            return Result(conditions, folder, previous, kept=True)
    proba, seconds = score(heads, seeds, X, conditions)
    trained = run.config.details.get("conditions") or {"noise": None, "shots": None}
    recorded = {**conditions.as_dict(), "gradient": None,
                "trained_under": _trained_text(trained)}
    one = len(seeds) == 1
    metrics = build_metrics(
        y, proba[0] if one else proba, proba[0] if one else proba,
        final_epoch=run.metrics["final"].get("epoch"), best_epoch=None,
        training_seconds=run.metrics.get("training_seconds"), class_names=run.config.class_names,
        seeds=None if one else seeds)
    metrics.update(conditions=recorded, seeds_evaluated=seeds, evaluation={"seconds": seconds, "of": str(run.path)},
                   note="an evaluation of trained heads under other conditions: 'best' repeats 'final' (no epochs)")
    config = RunConfig.from_json(run.config.to_json())
    config = replace(config, part=replace(config.part, seeds=seeds),
                     details={**config.details, "conditions": recorded, "evaluation_of": str(run.path)})
    writer = RunWriter(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer.write_config(config)
    writer.write_history([])
    writer.write_predictions(paths, y, proba[0] if one else proba, proba[0] if one else proba,
                             seeds=None if one else seeds)
    writer.finish(metrics)
    return Result(conditions, folder, metrics, kept=False)


def _trained_text(trained: dict) -> str:
    parts = [f"under {trained['noise']}" if trained.get("noise") else "noise-free",
             f"at {trained['shots']} shots" if trained.get("shots") else "analytic"]
    return " ".join(parts)


def _sweep_plot(run_dir: Path, component: str, results: list[Result]) -> Path:
    """accuracy.png and sweep.json: accuracy (mean, 95% interval) against the swept component's strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlkit.atomic import atomic_bytes, atomic_json

    rest = results[0].conditions
    others = replace(rest, noise=type(rest.noise)(tuple(c for c in rest.noise.components if c[0] != component)))
    name = f"sweep-{component}" + ("" if others.folder == "exact" else f"_{others.folder}")
    out = Path(run_dir) / EVALUATIONS / name
    out.mkdir(parents=True, exist_ok=True)
    points = []
    for r in results:
        summary = r.metrics.get("summary") or {}
        seeds = summary.get("accuracy") or {}
        images = (summary.get("images") or {}).get("accuracy") or {}
        low, high, kind = (seeds.get("ci_low"), seeds.get("ci_high"), "across seeds") if seeds.get("ci_low") is not None \
            else (images.get("ci_low"), images.get("ci_high"), "over images")
        points.append({"strength": dict(r.conditions.noise.components)[component],
                       "accuracy": r.metrics["final"]["accuracy"], "ci_low": low, "ci_high": high, "interval": kind,
                       "folder": str(r.path)})
    x = np.array([p["strength"] for p in points])
    acc = np.array([p["accuracy"] for p in points])
    low = np.array([p["ci_low"] if p["ci_low"] is not None else p["accuracy"] for p in points])
    high = np.array([p["ci_high"] if p["ci_high"] is not None else p["accuracy"] for p in points])
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    axes.fill_between(x, low, high, alpha=0.25, label=f"95% interval {points[0]['interval']}")
    axes.plot(x, acc, marker="o", label=f"mean accuracy ({len(results[0].metrics.get('seeds', [])) or 1} seed(s))")
    if (x > 0).any() and x[x > 0].max() / x[x > 0].min() >= 10:
        axes.set_xscale("symlog", linthresh=x[x > 0].min())
    axes.set_xlabel(f"{component} strength")
    axes.set_ylabel("final accuracy")
    shots = rest.shots
    axes.set_title(f"{Path(run_dir).name}: accuracy against {component}" + (f" ({shots} shots)" if shots else ""))
    axes.legend(fontsize=8)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_bytes(out / "accuracy.png", buf.getvalue())
    plt.close(figure)
    atomic_json(out / "sweep.json", {"component": component, "conditions": others.as_dict(), "points": points})
    return out / "accuracy.png"
