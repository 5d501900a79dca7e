"""The run-folder contract: what ``fit-head`` and ``train-scratch`` write and ``report``/``predict`` read.

    runs/<name>-<timestamp>/
        config.json        RunConfig: the common keys, the kind's own part, the versions, when
        history.json       per-epoch train/val loss and accuracy (empty for heads without epochs)
        history.csv        the same, for spreadsheets
        metrics.json       evaluation metrics at the final and at the best epoch, training seconds,
                           the intervals (``summary``) and the training-health checks (``health``,
                           :mod:`tlkit.health`; absent from runs before it: :attr:`Run.health`)
        predictions.npz    evaluation set: paths, labels, probabilities (final and best)
        model.pt           the trained weights as a state_dict (torch.load(..., weights_only=True)),
        model_best.pt      the best epoch's (torch heads with an evaluation set),
        model.npz          or plain arrays for scikit-learn heads (no pickle)
        model_seeds.pt     a run of many seeds (fit-head --seeds): every seed's weights, stacked
        model_seeds.npz    (model.pt / model.npz hold the first seed's, alone)
        search.csv         a sweep (fit-head --grid): every configuration's fold scores, mean, std, rank, seconds
        checkpoint.pt      an unfinished train-scratch run's last epoch (removed when it finishes)

A run of many seeds (``fit-head --seeds``) has the same files. What changes
inside them:

* ``metrics.json``: ``final`` and ``best`` are the across-seed means (the
  epoch where every seed agrees on it, else null; the confusion matrix the
  mean one), and ``seeds`` lists each seed's own blocks;
* ``summary`` (every run, one seed too): accuracy, ROC AUC and average
  precision at the final epoch across seeds (mean, std, 95% Student-t
  interval; with one seed the mean only) and ``images``: a 95% bootstrap
  interval of accuracy over the evaluation images, the seeds averaged within
  each resample (:func:`tlkit.stats.seeds_summary`);
* ``predictions.npz``: ``proba_final`` and ``proba_best`` stay one (n,
  classes) array each and hold the *first* seed's, the one ``model.pt``
  gives back (so ``tlkit predict`` reproduces them and single-seed readers
  work unchanged); ``seeds``, ``proba_final_seeds`` and ``proba_best_seeds``
  (seeds, n, classes) hold every seed's. :meth:`Run.proba_seeds` reads both
  layouts;
* ``history.json``: one row per epoch with the across-seed means, and under
  ``per_seed`` each seed's values (``history.csv`` holds the means);
* ``config.json``: ``seeds``, and ``head_params`` with the first seed.

This module owns the file names, creating the folder (:meth:`RunWriter.plan`),
the writes (every file atomic and fsynced, through :mod:`tlkit.atomic`) and the
rule that ``metrics.json`` is written last, so its presence marks a finished
run. :func:`read_config` and :func:`load_run` are the only readers; they
also read the folders of earlier tlkit versions (head runs that recorded
``tlkit_version`` instead of ``versions``).

Two runs are comparable only when their evaluation sets have the same
fingerprint (same paths, same labels, same class names).

Imported by ``tlkit fit-head --help`` (through the head registry): numpy, and h5py through the cache
schema's Provenance (scikit-learn is imported by :func:`build_metrics`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tlkit.atomic import atomic_bytes, atomic_json, atomic_text
from tlkit.provenance import Provenance
from tlkit.errors import TlkitError

CONFIG = "config.json"
HISTORY = "history.json"
HISTORY_CSV = "history.csv"
METRICS = "metrics.json"
PREDICTIONS = "predictions.npz"
MODEL = "model.pt"
MODEL_BEST = "model_best.pt"
MODEL_ARRAYS = "model.npz"
MODEL_SEEDS = "model_seeds.pt"
MODEL_ARRAYS_SEEDS = "model_seeds.npz"
CHECKPOINT = "checkpoint.pt"
SEARCH_CSV = "search.csv"

BEST_NOTE = (
    "'best' is the epoch with the highest accuracy on the evaluation set itself: an optimistic figure "
    "(the seed paper reports it). Quote 'final' for an honest estimate."
)


# --- config.json -------------------------------------------------------------------------------

@dataclass(kw_only=True)
class HeadPart:
    """What a ``fit-head`` run records beyond the common keys: the head and the cache it was trained on."""

    head: str
    head_params: dict = field(default_factory=dict)  # the estimator's get_params(): rebuilds it
    n_features: int | None = None
    classes: list | None = None  # the estimator's classes_ (indices into class_names)
    cache: str | None = None
    # The cache's Provenance (tlkit.cache.schema), stored as its as_dict() and read back as that type;
    # None when the run recorded none. Older runs' missing attributes mean what the schema's defaults say.
    cache_provenance: Provenance | None = None
    split_source: str | None = None
    val_fraction: float | None = None
    split_seed: int | None = None
    weights: list[str] = field(default_factory=list)  # the model files written
    seeds: list[int] | None = None  # the seeds trained (fit-head --seeds); None in runs before it existed
    search: dict | None = None  # a sweep (fit-head --grid): grid, folds {k, seed}, seeds, chosen (SearchResult.record)

    def budget(self, head_params: dict | None = None) -> str:
        """The tuning budget in a few words: "grid of 12, 5-fold", a head's own inner search, or "untuned"."""
        if self.search:
            views = self.search.get("views")  # folds that trained on augmented views: a different budget to compare
            on_views = f" on {views['k']} {views['augment'] or 'augmented'} views" if views else ""
            return f"grid of {self.search['n_configs']}, {self.search['folds']['k']}-fold{on_views}"
        params = self.head_params if head_params is None else head_params
        if "Cs" in params and "cv" in params:  # logreg chooses C by its own cross-validation
            cs = params["Cs"]
            return f"C of {cs if isinstance(cs, int) else len(cs)}, {params['cv']}-fold (inside the head)"
        return "untuned (fixed hyperparameters)"

    def describe_model(self, kind: str) -> str:
        return f"{self.head} head"

    def __post_init__(self):
        if isinstance(self.cache_provenance, dict):
            self.cache_provenance = Provenance.from_attrs(self.cache_provenance, lenient=True) if self.cache_provenance else None

    def describe_features(self, kind: str) -> str:
        if self.cache_provenance is None:
            return "frozen features (unknown weights)"
        p = self.cache_provenance
        if (p.backbone, p.layer, p.views) == ("resnet18", "avgpool", ""):  # what every run said before backbones were a choice
            return f"frozen ResNet-18 features ({self.weights_id})"
        return f"frozen {p.describe().replace(f' at {p.precision}', '')} features"

    @property
    def weights_id(self) -> str:
        return self.cache_provenance.weights_id if self.cache_provenance and self.cache_provenance.weights_id else "unknown weights"

    @property
    def transform(self):
        return json.loads(self.cache_provenance.transform) if self.cache_provenance and self.cache_provenance.transform else None


@dataclass(kw_only=True)
class NetworkPart:
    """What a ``train-scratch`` run (kind scratch or finetune) records beyond the common keys."""

    model: str | None = None
    init: dict = field(default_factory=dict)  # {"weights": "random", "seed"} or {"weights_id", "weights_sha256"}
    data_root: str | None = None
    train_split: str | None = None
    train_fingerprint: str | None = None
    train: dict = field(default_factory=dict)  # TrainConfig.to_dict()
    transform: dict | None = None  # TransformSpec of the evaluation images
    augmentation: dict | None = None
    skipped: list = field(default_factory=list)
    device: str | None = None
    workers: int | None = None

    def describe_model(self, kind: str) -> str:
        return "ResNet-18 fine-tuned" if kind == "finetune" else "ResNet-18 from scratch"

    def describe_features(self, kind: str) -> str:
        """What the network saw: the images, starting from some weights."""
        if kind == "finetune":
            return f"images, init {self.init.get('weights_id', 'unknown weights')}"
        return f"images, random init (seed {self.init['seed']})" if "seed" in self.init else "images"


PARTS: dict[str, type] = {"head": HeadPart, "scratch": NetworkPart, "finetune": NetworkPart}
_COMMON = ("kind", "class_names", "eval_split", "eval_fingerprint", "n_train", "n_eval")


@dataclass(kw_only=True)
class RunConfig:
    """config.json: the keys every run has, its kind's part, and ``details``.

    ``details`` holds the keys this contract does not name: what a head records
    about its own fit (its training settings, the C it chose, the simulator it
    ran), and anything a newer tlkit added. In the file, all of them sit side
    by side at the top level.
    """

    kind: str  # "head", "scratch" or "finetune"
    class_names: list[str]
    part: HeadPart | NetworkPart
    eval_split: str | None = None
    eval_fingerprint: str | None = None  # see eval_fingerprint()
    n_train: int | None = None
    n_eval: int | None = None
    versions: dict = field(default_factory=dict)  # package -> version that wrote the run
    created: str | None = None  # ISO 8601, UTC
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        doc = {name: getattr(self, name) for name in _COMMON}
        doc.update(asdict(self.part))
        if isinstance(self.part, HeadPart) and self.part.cache_provenance is not None:
            doc["cache_provenance"] = self.part.cache_provenance.as_dict()  # the transform spelled out, as always
        doc.update(versions=self.versions, created=self.created)
        doc.update(self.details)
        return doc

    @classmethod
    def from_json(cls, doc, where: str | os.PathLike = CONFIG) -> RunConfig:
        """Parse config.json's content; a one-line :class:`TlkitError` for what is not a run configuration."""
        if not isinstance(doc, dict) or "kind" not in doc or "class_names" not in doc:
            raise TlkitError(f"{where} is not a tlkit run configuration (no kind or class_names)")
        doc = dict(doc)
        part_type = PARTS.get(doc["kind"])
        if part_type is None:
            raise TlkitError(f"{where} records a {doc['kind']!r} run, which this tlkit does not know "
                             f"(it knows: {', '.join(PARTS)})")
        if "versions" not in doc and "tlkit_version" in doc:  # head runs before the contract had versions
            doc["versions"] = {"tlkit": doc.pop("tlkit_version")}
        common = {name: doc.pop(name) for name in (*_COMMON, "versions", "created") if name in doc}
        part_keys = {f.name for f in fields(part_type)}
        try:
            part = part_type(**{k: doc.pop(k) for k in list(doc) if k in part_keys})
        except TypeError as exc:  # a required field of the part is missing
            raise TlkitError(f"{where} lacks what a {common['kind']!r} run records: {exc}") from None
        return cls(part=part, details=doc, **common)

    def describe_model(self) -> str:
        return self.part.describe_model(self.kind)

    def describe_features(self) -> str:
        return self.part.describe_features(self.kind)


def package_versions(*packages: str) -> dict:
    """tlkit's version and those of ``packages``, as recorded in config.json."""
    from importlib.metadata import PackageNotFoundError, version

    import tlkit

    out = {"tlkit": tlkit.__version__}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def now() -> str:
    """The ``created`` timestamp of a new run."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def eval_fingerprint(paths, labels, class_names) -> str:
    """sha256 over the evaluation set: two runs are comparable only if this matches."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(class_names)).encode())
    for p, y in sorted(zip((str(p) for p in paths), (int(v) for v in labels))):
        digest.update(f"{p}\t{y}\n".encode())
    return digest.hexdigest()


# --- metrics.json ------------------------------------------------------------------------------

def build_metrics(
    labels, proba_final, proba_best, *, final_epoch, best_epoch, training_seconds,
    class_names, final_loss=None, best_loss=None, seeds=None, histories=None, train_labels=None,
) -> dict:
    """metrics.json content: the same metric block at the final and at the best epoch, and the intervals.

    One seed: ``proba_final``/``proba_best`` are (n, classes), the other
    arguments single values. Many seeds: the probabilities are (seeds, n,
    classes), ``seeds`` names them, and ``final_epoch``, ``best_epoch``,
    ``final_loss``, ``best_loss`` and ``training_seconds`` are one value per
    seed (or one for all); ``final`` and ``best`` are then the across-seed
    means, ``seeds`` holds each seed's blocks, and ``training_seconds`` is
    the sum (the time it took to train them all). See the module docstring.

    ``health`` is :func:`tlkit.health.check_run` on every seed: ``histories``
    (one list of epoch records per seed) and ``train_labels`` let it judge
    whether the train loss moved; without them it checks the predictions only.
    """
    from tlkit.health import check_run
    from tlkit.metrics import classification_metrics
    from tlkit.stats import seeds_summary

    finals, bests = _per_seed(proba_final), _per_seed(proba_best)
    n_seeds = len(finals)
    if len(bests) != n_seeds or (seeds is not None and len(seeds) != n_seeds):
        raise ValueError(f"{n_seeds} seeds of final probabilities, {len(bests)} of best ones, seeds {seeds}")

    def each(value):
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n_seeds
        if len(values) != n_seeds:
            raise ValueError(f"expected one value per seed ({n_seeds}), got {len(values)}")
        return [None if v is None else v.item() if isinstance(v, np.generic) else v for v in values]

    blocks = []
    for i, epochs, losses in zip(range(n_seeds), zip(each(final_epoch), each(best_epoch)),
                                 zip(each(final_loss), each(best_loss))):
        blocks.append({
            "final": {"epoch": epochs[0], "loss": losses[0], **classification_metrics(labels, finals[i])},
            "best": {"epoch": epochs[1], "loss": losses[1], **classification_metrics(labels, bests[i])},
        })
    seconds = [float(t) for t in each(training_seconds)]
    total = seconds[0] if not isinstance(training_seconds, (list, tuple, np.ndarray)) else float(sum(seconds))
    metrics = {"class_names": list(class_names), "n_eval": int(len(labels)), "training_seconds": total}
    if n_seeds == 1:
        metrics.update(final=blocks[0]["final"], best=blocks[0]["best"])
    else:
        metrics.update(final=_mean_block([b["final"] for b in blocks], seeds),
                       best=_mean_block([b["best"] for b in blocks], seeds))
        metrics["seeds"] = [{"seed": None if seeds is None else int(seed), **block, "training_seconds": t}
                            for seed, block, t in zip(seeds or [None] * n_seeds, blocks, seconds)]
    metrics["summary"] = seeds_summary(labels, finals) if len(labels) else None
    metrics["health"] = check_run(labels, finals, histories=histories, train_labels=train_labels, seeds=seeds)
    metrics["note"] = BEST_NOTE
    return metrics


def _per_seed(proba) -> np.ndarray:
    """(seeds, n, classes) from (n, classes) or (seeds, n, classes)."""
    proba = np.asarray(proba, dtype=np.float64)
    return proba[None] if proba.ndim == 2 else proba


def _mean_block(blocks: list[dict], seeds) -> dict:
    """Many seeds' metric blocks as one: each number the across-seed mean (None if any seed lacks it)."""

    def mean(key):
        values = [b[key] for b in blocks]
        return None if any(v is None for v in values) else float(np.mean(values))

    epochs = {b["epoch"] for b in blocks}
    return {
        "epoch": epochs.pop() if len(epochs) == 1 else None,  # the final epoch is common; best epochs differ
        "loss": mean("loss"),
        **{key: mean(key) for key in ("accuracy", "roc_auc", "average_precision")},
        "confusion_matrix": np.mean([b["confusion_matrix"] for b in blocks], axis=0).tolist(),
        "n": blocks[0]["n"],
        "n_seeds": len(blocks),
    }


def seeds_history(histories: list[list[dict]], seeds: list[int]) -> list[dict]:
    """history.json of a run of many seeds: per epoch the across-seed means, and ``per_seed`` values.

    ``seconds`` is the sum of the seeds' own (the epoch's time for all of them together).
    """
    if len(histories) == 1:
        return list(histories[0])
    rows = []
    for records in zip(*histories):
        keys = ("train_loss", "train_acc", "val_loss", "val_acc")
        row = {"epoch": records[0]["epoch"], "lr": records[0]["lr"]}
        row.update({key: float(np.mean([r[key] for r in records])) for key in keys})
        row["seconds"] = float(sum(r["seconds"] for r in records))
        row["per_seed"] = {"seed": list(seeds), **{key: [r[key] for r in records] for key in keys}}
        rows.append(row)
    return rows


# --- writing a run folder ----------------------------------------------------------------------

class RunWriter:
    """Writes one run folder; :meth:`finish` writes metrics.json, the mark of a finished run, last.

        run = RunWriter.plan(out, "linear")   # checks --out, creates nothing yet
        ...train...
        run.create()
        run.write_config(config); run.write_history(h); run.write_predictions(...); run.write_file(MODEL, b)
        run.finish(metrics)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._written: set[str] = set()

    @classmethod
    def plan(cls, out, name: str, *, resumable: bool = False, resume: bool = False) -> RunWriter:
        """The folder a new run will write: ``out``, or ``runs/<name>-<timestamp>``. Creates nothing.

        A finished run is never overwritten. A ``resumable`` run (train-scratch,
        which keeps a checkpoint after every epoch) continues an unfinished
        folder only with ``resume`` and refuses one without it, so that finished
        epochs are never thrown away by accident. Other runs write nothing until
        training has ended, so an unfinished folder of theirs holds nothing worth
        keeping and is written over.
        """
        if out is None:
            if resume:
                raise TlkitError("--resume needs --out RUN_DIR: the folder of the interrupted run")
            return cls(Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        writer = cls(out)
        writer._refuse_finished()
        if resumable:
            unfinished = (writer.path / CHECKPOINT).exists() or (writer.path / CONFIG).exists()
            if unfinished and not resume:
                raise TlkitError(f"{writer.path} holds an unfinished run; add --resume to continue it, "
                                 "or choose another --out")
            if resume and not unfinished:
                raise TlkitError(f"{writer.path} holds no unfinished run to resume (no {CHECKPOINT}); "
                                 "drop --resume to start one")
        return writer

    def _refuse_finished(self) -> None:
        if (self.path / METRICS).exists():
            raise TlkitError(f"{self.path} already holds a finished run; choose another --out")

    def create(self) -> Path:
        """Make the folder (checking again that no run finished there meanwhile)."""
        self._refuse_finished()
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def write_file(self, name: str, data: bytes) -> None:
        """A file of the run (model weights...), written atomically."""
        if name == METRICS:
            raise ValueError("metrics.json is written by finish(), last")
        atomic_bytes(self.path / name, data)
        self._written.add(name)

    def write_config(self, config: RunConfig) -> None:
        atomic_json(self.path / CONFIG, config.to_json())
        self._written.add(CONFIG)

    def write_history(self, history: list) -> None:
        """history.json, and history.csv with its scalar columns (a many-seed run's ``per_seed`` is JSON only)."""
        rows = [asdict(r) if not isinstance(r, dict) else r for r in history]
        atomic_json(self.path / HISTORY, rows)
        buf = io.StringIO()
        if rows:
            columns = [k for k, v in rows[0].items() if not isinstance(v, (dict, list))]
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        atomic_text(self.path / HISTORY_CSV, buf.getvalue())
        self._written.update((HISTORY, HISTORY_CSV))

    def write_search(self, rows: list[dict]) -> None:
        """search.csv: one row per configuration of a sweep (its parameters, fold scores, mean, std, rank, seconds)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        self.write_file(SEARCH_CSV, buf.getvalue().encode())

    def write_predictions(self, paths, labels, proba_final, proba_best, seeds=None) -> None:
        """predictions.npz. Probabilities (n, classes), or (seeds, n, classes) with ``seeds`` naming them."""
        finals, bests = _per_seed(proba_final), _per_seed(proba_best)
        arrays = dict(paths=np.asarray(paths, dtype=str), labels=np.asarray(labels, dtype=np.int64),
                      proba_final=finals[0], proba_best=bests[0])  # the first seed's: what model.pt gives
        if len(finals) > 1:
            if seeds is None or len(seeds) != len(finals):
                raise ValueError(f"{len(finals)} seeds of probabilities need their {len(finals)} seed numbers")
            arrays.update(seeds=np.asarray(seeds, dtype=np.int64), proba_final_seeds=finals, proba_best_seeds=bests)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.write_file(PREDICTIONS, buf.getvalue())

    def finish(self, metrics: dict) -> Path:
        """Write metrics.json, last: from now on the folder is a finished run."""
        missing = [name for name in (CONFIG, HISTORY, PREDICTIONS) if name not in self._written]
        if missing:
            raise RuntimeError(f"a run is finished only after {', '.join(missing)} (tlkit bug)")
        atomic_json(self.path / METRICS, metrics)
        return self.path


# --- reading a run folder ----------------------------------------------------------------------

def read_config(path: str | os.PathLike) -> RunConfig:
    """The config.json of run folder ``path`` (finished or not), or a one-line :class:`TlkitError`."""
    path = Path(path)
    if not path.is_dir():
        raise TlkitError(f"{path} is not a run folder (no such folder)")
    if not (path / CONFIG).exists():
        raise TlkitError(f"{path} is not a run folder (no {CONFIG}); give a folder written by fit-head or train-scratch")
    try:
        doc = json.loads((path / CONFIG).read_text())
    except (ValueError, OSError) as exc:
        raise TlkitError(f"{path / CONFIG} is damaged: {exc}") from None
    return RunConfig.from_json(doc, path / CONFIG)


@dataclass
class Run:
    path: Path
    config: RunConfig
    metrics: dict
    history: list[dict]
    predictions: dict  # paths, labels, proba_final, proba_best (+ seeds, proba_*_seeds: see the module docstring)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seeds(self) -> list[int] | None:
        """The seeds whose predictions the run holds, in order (None: one run of an unrecorded seed)."""
        if "seeds" in self.predictions:
            return [int(s) for s in self.predictions["seeds"]]
        seeds = getattr(self.config.part, "seeds", None)
        return list(seeds) if seeds else None

    def proba_seeds(self, which: str = "final") -> np.ndarray:
        """Every seed's evaluation probabilities, (seeds, n, classes); one seed for single-seed runs."""
        many = self.predictions.get(f"proba_{which}_seeds")
        return np.asarray(many) if many is not None else np.asarray(self.predictions[f"proba_{which}"])[None]

    def seed_histories(self) -> list[list[dict]]:
        """Each seed's epoch records (history.json's ``per_seed`` split up; a single run's rows as they are)."""
        n_seeds = len(self.proba_seeds())
        if not self.history or "per_seed" not in self.history[0]:
            return [list(self.history)] * n_seeds if n_seeds == 1 or not self.history else [[]] * n_seeds
        return [[{"epoch": row["epoch"], **{k: v[i] for k, v in row["per_seed"].items() if k != "seed"}}
                 for row in self.history] for i in range(n_seeds)]

    @cached_property
    def health(self) -> dict:
        """metrics.json's ``health``; for a run written before tlkit checked it, the checks its files allow
        (the predictions and history: without the train labels, the train loss is not judged)."""
        if self.metrics.get("health") is not None:
            return self.metrics["health"]
        from tlkit.health import check_run

        return check_run(self.predictions["labels"], self.proba_seeds(), histories=self.seed_histories(),
                         seeds=self.seeds if self.seeds and len(self.seeds) == len(self.proba_seeds()) else None)


def load_run(path: str | os.PathLike) -> Run:
    """Read a finished run folder or raise a one-line :class:`TlkitError`."""
    path = Path(path)
    if not path.is_dir():
        raise TlkitError(f"{path} is not a run folder (no such folder)")
    missing = [n for n in (CONFIG, METRICS, PREDICTIONS) if not (path / n).exists()]
    if missing:
        raise TlkitError(f"{path} is not a finished run folder (missing {', '.join(missing)})")
    try:
        config = json.loads((path / CONFIG).read_text())
        metrics = json.loads((path / METRICS).read_text())
        history = json.loads((path / HISTORY).read_text()) if (path / HISTORY).exists() else []
        with np.load(path / PREDICTIONS, allow_pickle=False) as npz:
            predictions = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, KeyError) as exc:
        raise TlkitError(f"{path} holds a damaged run file: {exc}") from None
    return Run(path=path, config=RunConfig.from_json(config, path / CONFIG), metrics=metrics, history=history,
               predictions=predictions)
