"""The heads ``tlkit fit-head`` knows, each declared once.

A :class:`HeadSpec` is everything about a head that is not its arithmetic:
its name, its class, its hyperparameters (defaults, constraints, help text:
:class:`~tlkit.train.hparams.HParam`) and the format its weights are saved in.
From these declarations come the estimator's ``__init__`` and checks
(:class:`tlkit.heads.estimator.Head`), the options of ``tlkit fit-head``
(:mod:`tlkit.heads.cli`), and the way a run folder's head is rebuilt
(:func:`load_head`). Nothing outside a head's class looks at its name.

Adding a head is one declaration here plus one class::

    BOTTLENECK = HeadSpec(
        name="bottleneck", cls="tlkit.heads.bottleneck:BottleneckHead", title="Classical bottleneck",
        summary="the quantum head's dressing with a classical layer instead of the circuit",
        params=(N_QUBITS, *TRAINING), weights=TORCH_STATE,
    )
    class BottleneckHead(TorchHead, head="bottleneck"):
        def _build_module(self, n_features, n_classes): ...

(which is how the bottleneck head below is declared).

Imported by ``tlkit fit-head --help`` (its options come from here): no torch, scikit-learn or PennyLane here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tlkit.errors import HeadError
from tlkit.heads.noise import NOISE_HELP
from tlkit.heads.store import ARRAYS, TORCH_STATE, WeightsFormat
from tlkit.runs import read_config
from tlkit.train.config import TrainConfig
from tlkit.train.hparams import HParam


@dataclass(frozen=True)
class HeadSpec:
    name: str  # --head NAME, the run folder's head
    cls: str  # "module:Class", imported on first use (the CLI never imports torch to list its options)
    title: str  # heading of this head's own options in `fit-head --help`
    summary: str  # its line in the help of --head
    params: tuple[HParam, ...]  # in the order of the estimator's __init__
    weights: WeightsFormat

    def param(self, name: str) -> HParam:
        return next(p for p in self.params if p.name == name)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def load_class(self) -> type:
        module, name = self.cls.split(":")
        head_class = getattr(importlib.import_module(module), name)
        assert head_class.spec is self, f"{self.cls} does not declare head={self.name!r}"
        return head_class

    def build(self, params: dict | None = None):
        """A new estimator with ``params`` (the others at their defaults)."""
        unknown = sorted(set(params or {}) - {p.name for p in self.params})
        if unknown:
            raise HeadError(f"the {self.name} head has no hyperparameter {', '.join(unknown)} "
                            f"(it has: {', '.join(p.name for p in self.params)})")
        return self.load_class()(**(params or {}))


TRAINING = TrainConfig.hparams()  # the shared training loop's settings, declared on TrainConfig
SIMULATORS = ("auto", "torch", "qnode", "per-sample")
DEFAULT_CS = tuple(np.logspace(-6, 5, 45).tolist())

LINEAR = HeadSpec(
    name="linear", cls="tlkit.heads.linear:LinearHead", title="Linear head",
    summary="nn.Linear(feature_dim, classes) by SGD",
    params=TRAINING, weights=TORCH_STATE,
)

LOGREG = HeadSpec(
    name="logreg", cls="tlkit.heads.logreg:LogRegHead", title="Logistic regression",
    summary="scikit-learn logistic regression on standardized features, C by 5-fold CV on the train split",
    params=(
        HParam("Cs", DEFAULT_CS, "Inverse regularisation strengths to try (an int n: n values on "
               "scikit-learn's default grid); default 45 values from 1e-6 to 1e5.", cli=False),
        HParam("cv", 5, "Cross-validation folds choosing C (fewer when the rarest class has fewer "
               "training examples); on the command line, fit-head's --cv.", min=2, cli=False),
        HParam("max_iter", 1000, "L-BFGS iterations per fit.", min=1, cli=False),
        HParam("seed", 0, "Seed of the cross-validation folds."),
    ),
    weights=ARRAYS,
)

N_QUBITS = HParam("n_qubits", 4, "Qubits of the circuit.", min=1, section="Quantum circuit and its classical control")

QUANTUM = HeadSpec(
    name="quantum", cls="tlkit.heads.quantum:QuantumHead", title="Quantum circuit",
    summary="the dressed quantum circuit of Mari et al.",
    params=(
        N_QUBITS,
        HParam("depth", 6, "Entangling + RY layers of the circuit.", min=1),
        HParam("entangling", "chain", "The CNOTs of each layer: chain (the circuit of Mari et al.) or none (the "
               "same circuit without them: the separable ablation of Bowles et al.).", choices=("chain", "none")),
        HParam("noise", None, NOISE_HELP + " (docs/noise.md).", type=str, optional=True, default_text="no noise"),
        HParam("qdevice", "default.qubit",
               "Any installed PennyLane device: default.qubit, lightning.qubit, or a hardware plugin's."),
        HParam("shots", None, "Measurement shots: each <Z> estimated from N sampled bit strings, trained by "
               "the parameter-shift rule.", type=int, min=1, optional=True, default_text="analytic expectation values"),
        HParam("simulator", "auto",
               "How the circuit runs. auto: on default.qubit or default.mixed, the same PennyLane circuit replayed "
               "as batched torch ops (state vectors; density matrices under --noise; sampled under --shots); "
               "other devices: a PennyLane QNode. qnode: always the QNode (default.mixed under --noise).",
               choices=SIMULATORS, cli_choices=("auto", "torch", "qnode"), aliases=("--qsim",)),
        HParam("q_delta", 0.01, "Circuit weights start as q_delta * N(0, 1).", min=0),
        *TRAINING,
    ),
    weights=TORCH_STATE,
)

# The classical control: the quantum head's dressing and training loop, with an n_qubits-wide classical layer
# where the circuit was. --n-qubits means the same width for both, so one flag sets up the fair pair.
BOTTLENECK = HeadSpec(
    name="bottleneck", cls="tlkit.heads.bottleneck:BottleneckHead", title="Classical bottleneck",
    summary="the quantum head's dressing with a classical layer of the same width in place of the circuit "
            "(its control)",
    params=(replace(N_QUBITS, help="Width of the classical middle layer (the circuit's qubits in the quantum head)."),
            *TRAINING),
    weights=TORCH_STATE,
)

# The classical baselines of Bowles, Ahmed & Schuld's benchmark (arXiv:2403.07059), each on standardized features.
SEED = HParam("seed", 0, "Seed of the initialisation and the data order.")
SVC = HeadSpec(
    name="svc", cls="tlkit.heads.svc:SVCHead", title="RBF support-vector machine",
    summary="scikit-learn RBF SVC on standardized features, scored by its decision function (a baseline)",
    params=(
        HParam("C", 1.0, "SVC regularisation: larger C fits the training data more closely.", min=0, min_open=True),
        HParam("gamma", None, "RBF kernel width 1/(2 sigma^2); none: 'scale', 1 / (n_features * X.var()). "
               "Python and --grid gamma=... only (--gamma is the StepLR factor).", type=float, min=0, min_open=True,
               optional=True, cli=False),
        replace(SEED, help="Unused by the (deterministic) SVC; kept so that --seeds works for every head."),
    ),
    weights=ARRAYS,
)
_LR = next(p for p in TRAINING if p.name == "lr")
MLP_MAX_EPOCHS = {"lbfgs": 30, "adam": 200}  # the mlp's max_epochs when none is given, by solver
MLP = HeadSpec(
    name="mlp", cls="tlkit.heads.mlp:MLPHead", title="Multi-layer perceptron",
    summary="scikit-learn MLPClassifier (one ReLU hidden layer, L-BFGS or Adam) on standardized features (a baseline)",
    params=(
        HParam("hidden", 100, "Width of the hidden layer.", min=1),
        HParam("alpha", 1e-4, "L2 penalty of the MLP.", min=0),
        # lbfgs within 30 iterations: scikit-learn's advice for small training sets (a few thousand rows); on
        # hymenoptera and on digits it scores as Adam's 200 epochs do, or better, in a fraction of the time
        # (docs/heads.md, "What make demo costs"). Adam keeps scikit-learn's 200 epochs.
        HParam("solver", "lbfgs", "MLP weight optimizer: lbfgs (full-batch quasi-Newton, for small training "
               "sets) or adam (minibatches of up to 200 rows).", choices=("lbfgs", "adam")),
        replace(_LR, help="Initial learning rate (--solver adam only)."),
        HParam("max_epochs", None, "MLP: the most L-BFGS iterations or Adam epochs (each stops earlier when the "
               "loss settles; the run records how many it took).", type=int, min=1, optional=True,
               default_text=", ".join(f"{n} for {solver}" for solver, n in MLP_MAX_EPOCHS.items())),
        replace(SEED, help="Seed of the initialisation and the data order."),
    ),
    weights=ARRAYS,
)

HEADS: dict[str, HeadSpec] = {spec.name: spec for spec in (LINEAR, LOGREG, QUANTUM, BOTTLENECK, SVC, MLP)}


def get_spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise HeadError(f"unknown head {name!r} (one of: {', '.join(HEADS)})")
    return HEADS[name]


def head_class(name: str) -> type:
    return get_spec(name).load_class()


def save_head(estimators, run) -> list[str]:
    """Write the fitted estimator's weights into the run folder (a RunWriter); returns the file names.

    ``estimators`` is one fitted head, or a list of them, one per seed (``fit_seeds``): the first seed's
    weights go where a single run's do, and every seed's into one more file (:mod:`tlkit.heads.store`).
    """
    if not isinstance(estimators, (list, tuple)):
        estimators = [estimators]
    weights = estimators[0].spec.weights
    return weights.save(estimators[0], run) if len(estimators) == 1 else weights.save_seeds(list(estimators), run)


def load_head(run_dir, which: str = "final", seed: int | None = None):
    """The fitted estimator a ``fit-head`` run saved: ``predict_proba(features)``, ``classes_``.

    ``which="best"`` loads the best-epoch weights of a head that has them
    instead of the final ones (a head without epochs has only one set).
    ``seed`` picks one seed of a run of many (``fit-head --seeds``); by
    default, the run's first seed (a single run's only one).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config.kind != "head":
        raise HeadError(f"{run_dir} holds a {config.kind!r} run, not a fit-head run")
    if which not in ("final", "best"):
        raise HeadError(f"which must be 'final' or 'best', got {which!r}")
    part = config.part
    if part.classes is None or part.n_features is None:
        raise HeadError(f"{run_dir} config.json lacks what is needed to rebuild the head (classes, n_features)")
    spec = get_spec(part.head)
    params = dict(part.head_params)
    seeds = list(part.seeds or [params.get("seed")])
    seed_index = None
    if seed is not None:
        if seed not in seeds:
            raise HeadError(f"{run_dir} holds no seed {seed} (its seeds: {', '.join(map(str, seeds))})")
        seed_index = seeds.index(seed) if len(seeds) > 1 else None
        params["seed"] = seed
    estimator = spec.build(params)
    estimator.check_params()
    return spec.weights.load(estimator, run_dir, which, np.asarray(part.classes), int(part.n_features),
                             seed_index=seed_index)
