"""``tlkit train-scratch``: the command line of the scratch / fine-tuning baseline."""

from __future__ import annotations

import os
import sys

import click

from tlkit.tracking.options import tracking_options
from tlkit.train.config import TrainConfig
from tlkit.train.hparams import SectionedCommand, options


def _default_workers() -> int:
    # With the decoded images in memory, an epoch's data work is only crop, flip and normalise. On two
    # cores a worker process just competes with the training threads (measured: 9.5 s per hymenoptera
    # epoch with 0 workers, 10.7 s with 1); with more cores it runs beside them.
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(4, cpus // 2)


@click.command("train-scratch", cls=SectionedCommand)
@click.argument("data_dir", type=click.Path(path_type=str))
@click.option("--out", "-o", default=None, type=click.Path(path_type=str),
              help="Run folder to write [default: runs/scratch-<timestamp> or runs/finetune-<timestamp>].")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out from its last finished epoch (same settings required); "
                   "the result equals an uninterrupted run.")
@click.option("--finetune", is_flag=True,
              help="Start from the --weights backbone instead of random initialisation and train every layer "
                   "(the tutorial's fine-tuning variant). The fc layer is always new.")
@click.option("--weights", default="imagenet", show_default=True,
              help="With --finetune: 'imagenet', 'random' or a ResNet-18 state_dict file (as for `tlkit embed`).")
@click.option("--weights-seed", default=0, show_default=True, help="With --finetune --weights random: its seed.")
@options(TrainConfig.hparams(), help={"seed": "Seed of the initialisation, the data order and the augmentation."})
@click.option("--train-split", default="train", show_default=True, help="Split to train on.")
@click.option("--eval-split", default="val", show_default=True, help="Split to evaluate on after every epoch.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto picks CUDA when torch sees a GPU.")
@click.option("--workers", default=_default_workers, show_default="0 on up to 2 CPUs, else min(4, CPUs/2)", type=click.IntRange(0),
              help="Processes preparing augmented batches beside training.")
@click.option("--memory-mb", default=1024, show_default=True, type=click.IntRange(0),
              help="Decoded images and evaluation tensors held in memory (MiB); the rest is read from disk each epoch.")
@click.option("--max-pixels", default=None, type=click.IntRange(1),
              help="Treat larger images as decompression bombs [default: PIL's limit, about 89 megapixels].")
@click.option("--progress/--no-progress", default=None, help="Show progress bars [default: on a terminal].")
@tracking_options
def train_scratch(data_dir, out, resume, finetune, weights, weights_seed, train_split, eval_split, device, workers,
                  memory_mb, max_pixels, progress, log_to, mlflow_uri, **training):
    """Train ResNet-18 end to end on the images in DATA_DIR (the seed paper's Model 1).

    \b
    DATA_DIR is laid out as DATA_DIR/train/<class>/<image> and
    DATA_DIR/val/<class>/<image>. The network starts from random weights
    (--finetune: from the embed weights), trains on the train split with the
    PyTorch tutorial's augmentation (random resized crop 224 + horizontal
    flip) and is evaluated on val after every epoch with the embed transform
    (resize 256, center crop 224). Defaults are the seed paper's: 30 epochs,
    batch 4, SGD lr 0.001 momentum 0.9, lr x0.1 every 7 epochs.

    \b
    The run folder (config.json, history, metrics.json with 'final' and
    'best' blocks, predictions.npz, model.pt) is the one `tlkit fit-head`
    writes, so `tlkit report` compares them. A checkpoint is written after
    every epoch; after an interruption, add --resume to the same command.
    Unreadable images are skipped and listed.

    \b
    Examples:
        tlkit train-scratch data/hymenoptera_data --out runs/scratch
        tlkit train-scratch data/hymenoptera_data --out runs/scratch --resume
        tlkit train-scratch data/hymenoptera_data --finetune --weights imagenet
        tlkit train-scratch data/hymenoptera_data --log-to tensorboard
    """
    from tlkit.baseline.trainer import Interrupted
    from tlkit.baseline.trainer import train_scratch as run
    from tlkit.data.decode import DEFAULT_MAX_PIXELS
    from tlkit.signals import exit_status
    from tlkit.tracking import check_targets
    from tlkit.tracking.background import background_logging

    log_to = check_targets(log_to)  # an unknown or uninstalled tracker fails before training
    cfg = TrainConfig(**training)
    show = progress if progress is not None else sys.stderr.isatty()
    with background_logging(log_to, mlflow_uri) as tracking:  # the trackers get ready while the network trains
        try:
            run_dir = run(
                data_dir, out=out, cfg=cfg, finetune=finetune, weights=weights, weights_seed=weights_seed,
                train_split=train_split, eval_split=eval_split, device=device, workers=workers, memory_mb=memory_mb,
                max_pixels=max_pixels or DEFAULT_MAX_PIXELS, resume=resume, progress=show,
                echo=lambda msg: click.echo(msg, err=True),
            )
        except Interrupted as stop:
            resume = "--resume" if out else f"--out {stop.run_dir} --resume"
            click.echo(f"interrupted: finished epochs are kept in {stop.run_dir}; continue with the same command plus "
                       f"{resume}", err=True)
            sys.exit(exit_status(stop))
        except KeyboardInterrupt as stop:
            click.echo("interrupted before training started: nothing was written", err=True)
            sys.exit(exit_status(stop))
        from tlkit.runs import load_run

        metrics = load_run(run_dir).metrics
        f, b = metrics["final"], metrics["best"]
        click.echo(f"final (epoch {f['epoch']}): accuracy {f['accuracy']:.4f}, ROC AUC {_fmt(f['roc_auc'])}; "
                   f"best (epoch {b['epoch']}): accuracy {b['accuracy']:.4f}; "
                   f"{metrics['training_seconds']:.1f} s -> {run_dir}")
        tracking.log(run_dir, echo=click.echo)  # from the finished files


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
