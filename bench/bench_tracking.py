"""What `--log-to tensorboard --log-to mlflow` costs a 30-epoch quantum head run, measured side by side.

    .venv/bin/python bench/bench_tracking.py --cache cache/feats.h5
    .venv/bin/python bench/bench_tracking.py --data ../shared/datasets/hymenoptera_data   # embeds with --weights random first

In interleaved rounds (so that a busy machine weighs on both alike):

  * `tlkit fit-head --head quantum` (the defaults: 30 epochs, batch 4) as a whole process, once plain and
    once with --log-to tensorboard --log-to mlflow; the difference of their wall times is what logging adds;
  * the logging alone, in a fresh process, on a copy of the plain run folder: `tlkit.tracking.log_run`
    the first time (imports of tensorboard, mlflow and matplotlib, the new sqlite store, the figure) and
    a second time in the same process (the logging work itself: reading the files, writing the events,
    the MLflow batches, the figure).

Each is printed as a share of the run's training seconds (metrics.json); target: logging under 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import cpu_description  # noqa: E402

TIME_LOG = """
import json, shutil, sys, time
t = time.perf_counter()
from tlkit.tracking import log_run
src, targets = sys.argv[1], sys.argv[2].split(",")
def copy(tag):
    dst = f"{src}-log{tag}"
    shutil.copytree(src, dst)
    return dst
a, b = copy(1), copy(2)
t = time.perf_counter(); log_run(a, targets); first = time.perf_counter() - t
t = time.perf_counter(); log_run(b, targets); second = time.perf_counter() - t
print(json.dumps({"first": first, "second": second}))
"""


def run(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def fit(cache: Path, out: Path, log: bool) -> tuple[float, float]:
    """(wall seconds of the whole command, training seconds from metrics.json)."""
    extra = ["--log-to", "tensorboard", "--log-to", "mlflow"] if log else []
    wall, _ = run([sys.executable, "-m", "tlkit.cli", "fit-head", "--head", "quantum", "--cache", str(cache),
                   "--out", str(out), "--no-progress", *extra])
    return wall, json.loads((out / "metrics.json").read_text())["training_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--data", type=Path, default=os.environ.get("TLKIT_HYMENOPTERA"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = args.cache
        if cache is None:
            if args.data is None:
                sys.exit("error: give --cache or --data (or set TLKIT_HYMENOPTERA)")
            cache = tmp / "feats.h5"
            run([sys.executable, "-m", "tlkit.cli", "embed", str(args.data), str(cache), "--weights", "random",
                 "--no-progress"])
        rows = []
        for r in range(args.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            got = {log: fit(cache, tmp / f"r{r}-{'logged' if log else 'plain'}", log) for log in order}
            _, out = run([sys.executable, "-c", TIME_LOG, str(tmp / f"r{r}-plain"), "tensorboard,mlflow"])
            alone = json.loads(out.strip().splitlines()[-1])
            train = got[False][1]
            row = {"train": train, "added": got[True][0] - got[False][0], **alone}
            rows.append(row)
            print(f"round {r + 1}: training {train:.2f} s (logged run: {got[True][1]:.2f} s); whole command "
                  f"{got[False][0]:.1f} s plain, {got[True][0]:.1f} s with --log-to tensorboard --log-to mlflow "
                  f"(+{row['added']:.2f} s); log_run alone: first {alone['first']:.2f} s, again {alone['second']:.2f} s",
                  flush=True)
        share = lambda key: median([r[key] / r["train"] for r in rows])  # noqa: E731
        print(f"median of {args.rounds} rounds, as a share of the training seconds "
              f"({median([r['train'] for r in rows]):.2f} s): whole command +{share('added'):.0%}; "
              f"log_run cold (imports, store, figure) {share('first'):.0%}; "
              f"log_run warm (the logging work itself) {share('second'):.1%} (target < 5%)")


if __name__ == "__main__":
    main()
