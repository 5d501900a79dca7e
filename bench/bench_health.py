"""Which training settings train the quantum and bottleneck heads on many classes (docs/heads.md).

    PYTHONPATH=. python bench/bench_health.py                        # 1437 train / 360 eval rows, 10 classes
    PYTHONPATH=. python bench/bench_health.py --seeds 3 --heads bottleneck --out /tmp/health.png

Builds the synthetic 10-class cache of the tests (``tests/heads_data.random_weight_features``:
separable classes on the large shared offset that random ResNet-18 weights give, the sizes of the
issue-21 digits set), fits each head with each setting through ``tlkit.heads.fit.fit_head`` (the
``fit-head`` path, many seeds in one run), and reports per setting the final accuracy of every seed,
the final train loss against the loss of predicting the class frequencies, and how many seeds the
training-health check (:mod:`tlkit.health`) flagged. Writes the figure of docs/heads.md and prints a
Markdown table; prints the CPU it ran on. Accuracy does not depend on the CPU; the seconds do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# (label, hyperparameters): the paper's defaults first, then what the warning suggests trying.
SETTINGS = [
    ("defaults: sgd lr 0.001, step 7", {}),
    ("sgd lr 0.01", {"lr": 0.01}),
    ("sgd lr 0.1", {"lr": 0.1}),
    ("sgd lr 0.001, step 30", {"step_size": 30}),
    ("adam lr 0.001, step 7", {"optimizer": "adam"}),
    ("adam lr 0.001, step 30", {"optimizer": "adam", "step_size": 30}),
    ("adam lr 0.0003, step 30", {"optimizer": "adam", "lr": 0.0003, "step_size": 30}),
    ("adam lr 0.0001, step 30", {"optimizer": "adam", "lr": 0.0001, "step_size": 30}),
]


def cpu() -> str:
    """The CPU's model and the vector extensions that matter to torch on it."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(wanted) or 'none of avx2/avx512'}"


def build_cache(path: Path, n_train: int, n_eval: int, n_classes: int) -> Path:
    from heads_data import random_weight_features, write_cache

    names = [f"class{c}" for c in range(n_classes)]
    return write_cache(path, {"train": random_weight_features(n_train, n_classes, seed=1),
                              "val": random_weight_features(n_eval, n_classes, seed=2)}, names)


def measure(cache: Path, heads: list[str], seeds: int, work: Path) -> list[dict]:
    from tlkit.heads.fit import fit_head

    rows = []
    for head in heads:
        for label, params in SETTINGS:
            start = time.perf_counter()
            result = fit_head(head, cache, work / f"{head}-{len(rows)}", params=params, seeds=list(range(seeds)),
                              progress=False)
            health = result.metrics["health"]
            entries = health["seeds"]
            row = {
                "head": head, "setting": label, "params": params,
                "accuracy": [s["below_chance"]["accuracy"] for s in entries],
                "final_train_loss": [s["did_not_learn"]["final_train_loss"] for s in entries],
                "class_frequency_loss": entries[0]["did_not_learn"]["class_frequency_loss"],
                "majority_class_rate": entries[0]["below_chance"]["majority_class_rate"],
                "n_flagged": health["n_flagged"], "flags": health["flags"], "n_seeds": health["n_seeds"],
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            print(f"{head:<11}{label:<28} accuracy {np.mean(row['accuracy']):.3f} "
                  f"(seeds {', '.join(f'{a:.3f}' for a in row['accuracy'])})  train loss "
                  f"{np.mean(row['final_train_loss']):.3f} vs {row['class_frequency_loss']:.3f}  "
                  f"flagged {row['n_flagged']}/{row['n_seeds']}  {row['seconds']:.0f} s", flush=True)
    return rows


def figure(rows: list[dict], heads: list[str], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in SETTINGS]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(labels) + 1.6))
    height = 0.8 / len(heads)
    colours = {"quantum": "tab:purple", "bottleneck": "tab:orange", "linear": "tab:blue"}
    for k, head in enumerate(heads):
        mine = {r["setting"]: r for r in rows if r["head"] == head}
        ys = np.arange(len(labels)) + (k - (len(heads) - 1) / 2) * height
        means = [np.mean(mine[label]["accuracy"]) for label in labels]
        flagged = [mine[label]["n_flagged"] > 0 for label in labels]
        ax.barh(ys, means, height=height * 0.9, color=colours.get(head, f"C{k}"), label=head, alpha=0.85)
        for y, label, bad in zip(ys, labels, flagged):
            accs = mine[label]["accuracy"]
            ax.plot(accs, [y] * len(accs), "k.", markersize=4)
            if bad:
                ax.text(max(accs) + 0.01, y, f"⚠ {mine[label]['n_flagged']}/{mine[label]['n_seeds']} flagged",
                        va="center", fontsize=7)
    chance = rows[0]["majority_class_rate"]
    ax.axvline(chance, color="grey", linestyle="--", linewidth=1)
    ax.text(chance, len(labels) - 0.4, " majority-class rate", color="grey", fontsize=7, va="bottom")
    ax.set_yticks(np.arange(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel(f"final accuracy on the evaluation set (bars: mean of {rows[0]['n_seeds']} seeds; dots: each seed)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    lines = ["| head | setting | final accuracy (mean; seeds) | final train loss (loss of the class frequencies) "
             "| seeds flagged |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['setting']} | {np.mean(r['accuracy']):.3f} "
                     f"({', '.join(f'{a:.3f}' for a in r['accuracy'])}) | {np.mean(r['final_train_loss']):.3f} "
                     f"({r['class_frequency_loss']:.3f}) | {r['n_flagged']}/{r['n_seeds']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default="quantum,bottleneck", help="comma-separated heads (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per setting (default: %(default)s)")
    parser.add_argument("--train", type=int, default=1437, help="train rows (default: %(default)s)")
    parser.add_argument("--eval", type=int, default=360, help="evaluation rows (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=10, help="classes (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "health-settings.png"), help="the figure")
    parser.add_argument("--json", default=None, help="also write the measurements as JSON here")
    args = parser.parse_args(argv)
    heads = args.heads.split(",")
    print(f"cpu: {cpu()}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(Path(tmp) / "feats.h5", args.train, args.eval, args.classes)
        rows = measure(cache, heads, args.seeds, Path(tmp))
    figure(rows, heads, Path(args.out), f"Synthetic {args.classes}-class cache like random-weight features "
                                        f"({args.train} train, {args.eval} evaluation rows)")
    print(markdown(rows))
    print(f"figure: {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
