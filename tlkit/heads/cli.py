"""``tlkit fit-head``: the click command (heavy imports happen inside it)."""

from __future__ import annotations

import click

TRAIN_FLAGS = ("epochs", "batch_size", "lr", "momentum", "step_size", "gamma", "optimizer", "weight_decay")
QUANTUM_FLAGS = ("n_qubits", "depth", "qdevice", "shots", "qsim", "q_delta")
LOGREG_FLAGS = ("cv",)


@click.command("fit-head")
@click.option("--head", required=True, type=click.Choice(["linear", "logreg", "quantum"]),
              help="linear: nn.Linear(512, classes) by SGD; logreg: scikit-learn logistic regression on "
                   "standardized features, C by 5-fold CV on the train split; quantum: the dressed quantum "
                   "circuit of Mari et al.")
@click.option("--cache", "cache_path", default="cache/feats.h5", show_default=True,
              type=click.Path(dir_okay=False), help="Feature cache written by `tlkit embed`.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Run folder to write [default: runs/<head>-<timestamp>].")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1), help="Training epochs (torch heads).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="Rows per SGD step.")
@click.option("--lr", default=0.001, show_default=True, type=click.FloatRange(0, min_open=True), help="Initial learning rate.")
@click.option("--momentum", default=0.9, show_default=True, type=click.FloatRange(0), help="SGD momentum.")
@click.option("--step-size", default=7, show_default=True, type=click.IntRange(1), help="Epochs between learning-rate decays.")
@click.option("--gamma", default=0.1, show_default=True, type=click.FloatRange(0), help="Learning-rate decay factor.")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adam"]), help="Optimizer.")
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(0), help="L2 penalty in the optimizer.")
@click.option("--seed", default=0, show_default=True, help="Seeds initialisation and data order (and logreg's CV folds).")
@click.option("--n-qubits", default=4, show_default=True, type=click.IntRange(1), help="Qubits of the quantum head.")
@click.option("--depth", default=6, show_default=True, type=click.IntRange(1), help="Entangling + RY layers of the circuit.")
@click.option("--qdevice", default="default.qubit", show_default=True,
              help="Any installed PennyLane device: default.qubit, lightning.qubit, or a hardware plugin's.")
@click.option("--shots", default=None, type=click.IntRange(1), help="Measurement shots [default: analytic expectation values].")
@click.option("--qsim", default="auto", show_default=True, type=click.Choice(["auto", "torch", "qnode"]),
              help="How the circuit runs. auto: for analytic default.qubit, the same PennyLane circuit replayed as "
                   "batched torch ops (fast, exact); otherwise a PennyLane QNode with parameter broadcasting. "
                   "qnode: always the QNode.")
@click.option("--q-delta", default=0.01, show_default=True, type=click.FloatRange(0),
              help="Circuit weights start as q_delta * N(0, 1).")
@click.option("--cv", default=5, show_default=True, type=click.IntRange(2), help="Cross-validation folds choosing C (logreg).")
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share held out for evaluation when the cache has no 'val' split (stratified).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of that hold-out.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
@click.pass_context
def fit_head(ctx, head, cache_path, out, epochs, batch_size, lr, momentum, step_size, gamma, optimizer, weight_decay,
             seed, n_qubits, depth, qdevice, shots, qsim, q_delta, cv, val_fraction, split_seed, progress):
    """Train a classifier head on the cached features and write a run folder.

    \b
    Reads only the feature cache (no images, no backbone). Trains on the
    cache's 'train' split and evaluates on 'val'; a cache with only 'all'
    (or no 'val') is split by a seeded stratified hold-out (--val-fraction).
    Training defaults are the seed paper's: cross-entropy, batch 4, 30
    epochs, SGD momentum 0.9, lr 0.001 x0.1 every 7 epochs.

    \b
    The run folder (--out, default runs/<head>-<timestamp>) holds
    config.json (with the cache's provenance), history.json/.csv,
    metrics.json (accuracy, ROC AUC, AP, confusion matrix at the final and
    at the best epoch), predictions.npz and the weights (model.pt, or
    model.npz for logreg; neither needs pickle to load).

    \b
    Examples:
        tlkit fit-head --head linear
        tlkit fit-head --head quantum --seed 1 --out runs/q1
        tlkit fit-head --head quantum --qdevice lightning.qubit --shots 1000
        tlkit fit-head --head logreg --cache other/feats.h5
    """
    from tlkit.heads.fit import fit_head as run_fit_head
    from tlkit.heads.fit import summary_table

    values = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, step_size=step_size, gamma=gamma,
                  optimizer=optimizer, weight_decay=weight_decay, n_qubits=n_qubits, depth=depth, qdevice=qdevice,
                  shots=shots, qsim=qsim, q_delta=q_delta, cv=cv)
    applies = {"linear": TRAIN_FLAGS, "quantum": TRAIN_FLAGS + QUANTUM_FLAGS, "logreg": LOGREG_FLAGS}[head]
    ignored = [name for name in values if name not in applies
               and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if ignored:
        flags = ", ".join("--" + n.replace("_", "-") for n in ignored)
        click.echo(f"note: {flags} do(es) not apply to --head {head}; ignored", err=True)

    params = {name: values[name] for name in applies}
    if head == "quantum":
        params["simulator"] = params.pop("qsim")
    params["seed"] = seed

    result = run_fit_head(head, cache_path, out, params=params, val_fraction=val_fraction, split_seed=split_seed,
                          progress=progress, echo=lambda msg: click.echo(msg, err=True))
    click.echo(summary_table(result.metrics))
    click.echo(f"run folder: {result.run_dir}")
