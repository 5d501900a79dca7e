"""What `--log-to tensorboard --log-to mlflow` costs a 30-epoch quantum head run, measured side by side.

    .venv/bin/python bench/bench_tracking.py --cache cache/feats.h5
    .venv/bin/python bench/bench_tracking.py --data ../shared/datasets/hymenoptera_data   # embeds with --weights random first

In interleaved rounds (so that a busy machine weighs on both alike):

  * `tlkit fit-head --head quantum` (the defaults: 30 epochs, batch 4) as a whole process, once plain and
    once with --log-to tensorboard --log-to mlflow; the difference of their wall times is what logging adds
    to a user's command (the target): the trackers are imported in a helper process while the head trains
    (tlkit/tracking/background.py), so what remains is mostly the logging work after training. That part
    is also timed alone, from the command's "run folder:" line (its files are written) to its end, plain
    and logged: steadier than the whole commands, whose training seconds vary by a third on a busy machine;
  * the logging alone, in a fresh process, on copies of the plain run folder: `tlkit.tracking.log_run`
    the first time (imports of tensorboard, mlflow and matplotlib, the new sqlite store, the figure) and
    then again on the other copies in the same process, the median of those (`--calls`; the logging work
    itself: reading the files, the figure, the events, a new MLflow store and its batches), as wall
    seconds and as the CPU seconds of the process (less swayed by other jobs on a shared machine).

Each is printed as a share of the run's training seconds (metrics.json); target: logging under 5% of them,
for the whole command. The two runs of a round can train for different seconds on a loaded machine, so the
whole-command difference is noisy there: use --rounds 5 on an otherwise idle machine.

`--baseline DIR` also times `log_run` from another tlkit source tree in the same rounds, e.g. the code
before a change (`git archive OLD_COMMIT tlkit | tar -x -C /tmp/before`), so before and after are
measured side by side on the same run folder under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
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
from statistics import median
t = time.perf_counter()
from tlkit.tracking import log_run
src, targets, name, calls = sys.argv[1], sys.argv[2].split(","), sys.argv[3], int(sys.argv[4])
copies = []
for i in range(calls):
    copies.append(f"{src}-{name}-log{i}")
    shutil.copytree(src, copies[-1])
wall, cpu = [], []
for run_dir in copies:
    t, c = time.perf_counter(), time.process_time()
    log_run(run_dir, targets)
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
print(json.dumps({"first": wall[0], "second": median(wall[1:]), "second_cpu": median(cpu[1:])}))
"""


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def fit(cache: Path, out: Path, log: bool) -> tuple[float, float, float]:
    """(wall seconds of the whole command, training seconds from metrics.json, seconds from its "run folder:"
    line, printed once the run's files are written, to its end: the logging left after the training)."""
    extra = ["--log-to", "tensorboard", "--log-to", "mlflow"] if log else []
    cmd = [sys.executable, "-m", "tlkit.cli", "fit-head", "--head", "quantum", "--cache", str(cache), "--out", str(out),
           "--no-progress", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    written = None
    for line in proc.stdout:
        if line.startswith("run folder:"):
            written = time.perf_counter()
    err = proc.stderr.read()
    end = time.perf_counter()
    if proc.wait() != 0 or written is None:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{err[-2000:]}")
    return end - t, json.loads((out / "metrics.json").read_text())["training_seconds"], end - written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--data", type=Path, default=os.environ.get("TLKIT_HYMENOPTERA"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5, help="log_run calls per process (the first is the cold one)")
    parser.add_argument("--baseline", type=Path, help="another tlkit source tree (a folder holding tlkit/) whose "
                        "log_run is timed in the same rounds")
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
            trees = {"this": None, **({"baseline": args.baseline} if args.baseline else {})}
            alone = {}
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                alone[name] = log_alone(tmp / f"r{r}-plain", trees[name], f"{name}{r}", args.calls)
            train = got[False][1]
            row = {"train": train, "added": got[True][0] - got[False][0], "tail": got[True][2] - got[False][2],
                   **{f"{key}_{name}": v for name, times in alone.items() for key, v in times.items()}}
            rows.append(row)
            base = (f"; baseline: first {row['first_baseline']:.2f} s, again {row['second_baseline']:.2f} s "
                    f"(CPU {row['second_cpu_baseline']:.2f} s)" if args.baseline else "")
            print(f"round {r + 1}: training {train:.2f} s (logged run: {got[True][1]:.2f} s); whole command "
                  f"{got[False][0]:.1f} s plain, {got[True][0]:.1f} s with --log-to tensorboard --log-to mlflow "
                  f"(+{row['added']:.2f} s), after its files were written {got[False][2]:.2f} s plain, "
                  f"{got[True][2]:.2f} s logged (+{row['tail']:.2f} s); log_run alone: first {row['first_this']:.2f} s, again "
                  f"{row['second_this']:.2f} s (CPU {row['second_cpu_this']:.2f} s){base}", flush=True)
        share = lambda key: median([r[key] / r["train"] for r in rows])  # noqa: E731
        print(f"median of {args.rounds} rounds, as a share of the training seconds "
              f"({median([r['train'] for r in rows]):.2f} s): whole command {share('added'):+.1%} (target < 5%), "
              f"after the "
              f"run's files were written {share('tail'):+.1%} (the logging the command waits for); "
              f"log_run in a fresh process, cold (imports, store, figure) {share('first_this'):.0%}; "
              f"log_run warm (the logging work itself) {share('second_this'):.1%}, its CPU seconds "
              f"{share('second_cpu_this'):.1%}")
        if args.baseline:
            ratio = lambda key: median([r[f"{key}_this"] / r[f"{key}_baseline"] for r in rows])  # noqa: E731
            print(f"baseline {args.baseline}: log_run cold {share('first_baseline'):.0%}, warm "
                  f"{share('second_baseline'):.1%}, its CPU seconds {share('second_cpu_baseline'):.1%}; "
                  f"this/baseline: cold {ratio('first'):.2f}, warm {ratio('second'):.2f}, CPU {ratio('second_cpu'):.2f}")


def log_alone(run_dir: Path, tree: Path | None, tag: str, calls: int) -> dict:
    """``log_run`` on ``calls`` copies of ``run_dir`` in a fresh process, with tlkit from ``tree`` (None: this one)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree.resolve()), env.get("PYTHONPATH", "")])
    # cwd: `python -c` puts the working folder first on sys.path, before PYTHONPATH
    _, out = run([sys.executable, "-c", TIME_LOG, str(run_dir), "tensorboard,mlflow", tag, str(calls)], env,
                 cwd=run_dir.parent)
    return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
