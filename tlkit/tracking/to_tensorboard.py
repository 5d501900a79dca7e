"""TensorBoard: one event folder per run (``LOG_DIR/tb/``, a sweep's runs in ``LOG_DIR/tb/<run>/``).

Scalars per epoch (the mean of many seeds under the plain tag, each seed under
``seed_<n>/``), the final metrics and intervals at the final epoch, the hyperparameters
in the HParams dashboard, the figures as images. Written with torch's ``SummaryWriter``.
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
        """Write ``rec`` as one TensorBoard run in ``folder`` (relative to tb/)."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        where = self.root / folder
        with SummaryWriter(log_dir=str(where)) as writer:
            for tag, step, value in rec.epoch_scalars:
                writer.add_scalar(tag, value, step)
            for tag, value in rec.final_scalars.items():
                writer.add_scalar(tag, value, rec.final_step)
            params = {k: _hparam_value(v) for k, v in {**rec.params, **(extra_params or {})}.items()}
            for summary in hparams(params, {tag: value for tag, value in rec.final_scalars.items()
                                            if tag.startswith(("final/", "interval/"))}):
                writer.file_writer.add_summary(summary)
            for path in figures:
                import numpy as np
                from PIL import Image

                with Image.open(path) as im:
                    writer.add_image(f"figures/{Path(path).stem}", np.asarray(im.convert("RGB")), rec.final_step,
                                     dataformats="HWC")
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
