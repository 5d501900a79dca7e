"""TensorBoard: one event folder per run (``LOG_DIR/tb/``, a sweep's runs in ``LOG_DIR/tb/<run>/``).

Scalars per epoch (the mean of many seeds under the plain tag, each seed under
``seed_<n>/``), the final metrics and intervals at the final epoch, the hyperparameters
in the HParams dashboard, the figures as images. Written with torch's ``SummaryWriter``'s event file.
"""

from __future__ import annotations

from pathlib import Path

from tlkit.extras import require
from tlkit.tracking.record import RunRecord

TB_DIR = "tb"


def _hparam_value(value):
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class TensorBoardLog:
    def __init__(self, log_dir: Path):
        require("tensorboard", "track", "--log-to tensorboard")
        self.root = Path(log_dir) / TB_DIR

    def log(self, rec: RunRecord, folder: Path, extra_params: dict | None = None, figures=()) -> Path:
        """Write ``rec`` as one TensorBoard run in ``folder`` (relative to tb/).

        One event per step carries all of that step's scalars (``add_scalar`` writes one event per
        value), and the figures go in as the PNG bytes already drawn (``add_image`` would decode them
        and encode them again).
        """
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        steps: dict[int, list] = {}
        for tag, step, value in rec.epoch_scalars:
            steps.setdefault(step, []).append(Summary.Value(tag=tag, simple_value=value))
        for tag, value in rec.final_scalars.items():
            steps.setdefault(rec.final_step, []).append(Summary.Value(tag=tag, simple_value=value))
        for figure in figures:
            image = Summary.Image(height=figure.height, width=figure.width, colorspace=4,  # RGBA, as Agg writes it
                                  encoded_image_string=figure.png)
            steps.setdefault(rec.final_step, []).append(Summary.Value(tag=f"figures/{figure.name}", image=image))
        where = self.root / folder
        with SummaryWriter(log_dir=str(where)) as writer:
            events = writer.file_writer
            for step in sorted(steps):
                events.add_summary(Summary(value=steps[step]), step)
            params = {k: _hparam_value(v) for k, v in {**rec.params, **(extra_params or {})}.items()}
            for summary in hparams(params, {tag: value for tag, value in rec.final_scalars.items()
                                            if tag.startswith(("final/", "interval/"))}):
                events.add_summary(summary)
        return where

    def log_child(self, folder: Path, params: dict, scalars: dict[str, float]) -> None:
        """One configuration of a sweep: its settings (HParams) and scores, at step 0."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        with SummaryWriter(log_dir=str(self.root / folder)) as writer:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, 0)
            for summary in hparams({k: _hparam_value(v) for k, v in params.items()}, scalars):
                writer.file_writer.add_summary(summary)
