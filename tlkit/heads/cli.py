"""``tlkit fit-head``: the click command, its head options generated from the registry.

Every hyperparameter a head declares (:mod:`tlkit.heads.registry`) becomes
one option. A setting several heads share (the training loop's, the seed) is
one option; --help lists each option under the heads it applies to. A flag
given for a head that does not have the setting is reported and ignored.
Heavy imports happen inside the command.
"""

from __future__ import annotations

from dataclasses import replace

import click

from tlkit.errors import HeadError
from tlkit.heads.grid import parse_grid
from tlkit.heads.registry import HEADS
from tlkit.train.config import SEEDS_HELP, parse_seeds
from tlkit.tracking.options import tracking_options
from tlkit.train.hparams import HParamOption, SectionedCommand, option, stacked


def _shared_help(declared: list[tuple[str, str]]) -> str:
    """One help text for a setting several heads declare, naming the heads where their texts differ."""
    texts: dict[str, list[str]] = {}
    for head, text in declared:
        texts.setdefault(text, []).append(head)
    if len(texts) == 1:
        return next(iter(texts))
    parts = [f"{', '.join(heads)}: {text[0].lower()}{text[1:].rstrip('.')}" for text, heads in texts.items()]
    return "; ".join(parts) + "."


def _head_options():
    """The options of every declared hyperparameter, and which heads each one applies to."""
    declared: dict[str, list] = {}  # name -> [(head, HParam)], in the registry's order
    for spec in HEADS.values():
        for param in spec.params:
            if param.cli:
                declared.setdefault(param.name, []).append((spec.name, param))
    decorators, applies = [], {}
    for name, uses in declared.items():
        heads = [head for head, _ in uses]
        first = uses[0][1]
        if any(replace(p, help="") != replace(first, help="") for _, p in uses):  # one option, one meaning
            raise AssertionError(f"heads {heads} declare {name!r} with different defaults or constraints")
        section = None  # an option of every head: with the general options
        if len(heads) < len(HEADS):
            label = first.section or (HEADS[heads[0]].title if len(heads) == 1 else "Options")
            section = f"{label} (--head {', '.join(heads)})"
        decorators.append(option(first, help=_shared_help([(h, p.help) for h, p in uses]), section=section))
        applies[name] = frozenset(heads)
    return decorators, applies


_DECORATORS, APPLIES = _head_options()


@click.command("fit-head", cls=SectionedCommand)
@click.option("--head", required=True, type=click.Choice(list(HEADS)),
              help="; ".join(f"{name}: {spec.summary.rstrip('.')}" for name, spec in HEADS.items()) + ".")
@click.option("--cache", "cache_path", default="cache/feats.h5", show_default=True,
              type=click.Path(dir_okay=False), help="Feature cache written by `tlkit embed`.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Run folder to write [default: runs/<head>-<timestamp>].")
@stacked(_DECORATORS)
@click.option("--seeds", "seeds_spec", default=None, metavar="SPEC", help=SEEDS_HELP + " E.g. --seeds 10.")
@click.option("--grid", "grid_items", multiple=True, metavar="PARAM=V1,V2,...",
              help="Choose hyperparameters by cross-validation on the train split before the final fit: PARAM is "
                   "any hyperparameter of the head (its flag's name, e.g. lr, weight_decay, epochs, depth, C); "
                   "repeat --grid for a cartesian product. The best mean fold accuracy (final epoch) wins, ties "
                   "to the earlier configuration; the chosen one is then fitted for every seed and evaluated. "
                   "E.g. --grid lr=0.001,0.01,0.1 --grid depth=1,6.")
@click.option("--cv", "cv", default=5, show_default=True, type=click.IntRange(min=2),
              help="Folds (stratified, shuffled, seeded by the first seed) of --grid's cross-validation, and of "
                   "logreg's choice of C.")
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share held out for evaluation when the cache has no 'val' split (stratified).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of that hold-out.")
@click.option("--views", "views", default="auto", show_default=True, type=click.Choice(["auto", "on", "off"]),
              help="Train on the cache's augmented views (embed --views K) when it has them: torch heads draw one "
                   "view per image per epoch (seeded), the others train on every view as a row; evaluation always "
                   "uses the centre crops. A --grid's folds train on the views the same way. on: require them; off: ignore them.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal].")
@tracking_options
@click.pass_context
def fit_head(ctx, head, cache_path, out, seeds_spec, grid_items, cv, val_fraction, split_seed, views, progress,
             log_to, mlflow_uri, **values):
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
    Many seeds (--seeds 10, 0-9 or 1,5,9): the torch heads train all seeds
    together in one vectorised pass (each seed equals its own --seed run);
    metrics.json then holds each seed's blocks, their means, and 95%
    intervals across seeds and over the evaluation images.

    \b
    Sweeps (--grid PARAM=V1,V2,..., repeatable; --cv K): every configuration
    x fold x seed is trained on the train split only (one vectorised pass per
    module structure for the torch heads), the best mean fold accuracy is
    chosen, then fitted on the whole train split for each seed and evaluated.
    The run folder adds search.csv; the terminal shows the top five.

    \b
    Examples:
        tlkit fit-head --head linear
        tlkit fit-head --head quantum --seed 1 --out runs/q1
        tlkit fit-head --head quantum --seeds 10 --out runs/q10
        tlkit fit-head --head bottleneck --seeds 10 --out runs/b10
        tlkit fit-head --head quantum --qdevice lightning.qubit --shots 1000
        tlkit fit-head --head logreg --cache other/feats.h5
        tlkit fit-head --head quantum --grid lr=0.001,0.01,0.1 --grid depth=1,6 --cv 5 --seeds 5
        tlkit fit-head --head quantum --seeds 5 --log-to tensorboard --log-to mlflow
        tlkit fit-head --head linear --cache cache/views.h5 --views off
    """
    from tlkit.tracking import check_targets
    from tlkit.tracking.background import background_logging

    log_to = check_targets(log_to)  # an unknown or uninstalled tracker fails before training

    seeds = None
    if seeds_spec is not None:
        if ctx.get_parameter_source("seed") == click.core.ParameterSource.COMMANDLINE:
            raise HeadError(f"--seed and --seeds {seeds_spec} together: give --seed N for one seed, "
                            "or --seeds SPEC for several")
        seeds = parse_seeds(seeds_spec)

    given = [name for name in values if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    ignored = [name for name in given if head not in APPLIES[name]]
    if ignored:
        flags = ", ".join(_flag(ctx, name) for name in ignored)
        click.echo(f"note: {flags} do(es) not apply to --head {head}; ignored", err=True)
    params = {name: value for name, value in values.items() if head in APPLIES[name]}
    if "cv" in {p.name for p in HEADS[head].params}:  # logreg's folds are --cv
        params["cv"] = cv
    grid = parse_grid(HEADS[head], grid_items) if grid_items else None
    both = [name for name in grid or {} if name in given]
    if both:
        raise HeadError(f"{_flag(ctx, both[0])} and --grid {both[0]}=... together: give its values in the grid only")

    # The trackers get ready while the head trains: started before torch and scikit-learn are imported here,
    # the helper warms them on the other core meanwhile.
    with background_logging(log_to, mlflow_uri) as tracking:
        from tlkit.heads.fit import fit_head as run_fit_head
        from tlkit.heads.fit import summary_table

        result = run_fit_head(head, cache_path, out, params=params, seeds=seeds, grid=grid, cv=cv,
                              val_fraction=val_fraction, split_seed=split_seed, progress=progress,
                              echo=lambda msg: click.echo(msg, err=True), views=views)
        if result.search is not None:
            click.echo(result.search.table())
        click.echo(summary_table(result.metrics))
        click.echo(f"run folder: {result.run_dir}")
        from tlkit.health import warning  # one line when a seed did not train, with a next step this head takes

        said = warning(result.metrics.get("health"), [name for name in APPLIES if head in APPLIES[name]])
        if said:
            click.echo(said, err=True)
        tracking.log(result.run_dir, echo=click.echo)  # from the finished files


def _flag(ctx, name: str) -> str:
    param = next(p for p in ctx.command.params if p.name == name and isinstance(p, HParamOption))
    return param.opts[0]
