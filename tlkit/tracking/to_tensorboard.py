"""TensorBoard: one event folder per run (``LOG_DIR/tb/``, a sweep's runs in ``LOG_DIR/tb/<run>/``).

Scalars per epoch (the mean of many seeds under the plain tag, each seed under
``seed_<n>/``), the final metrics and intervals at the final epoch, the hyperparameters
in the HParams dashboard, the figures as images. Written with TensorBoard's own event writer and HParams
protos (``tensorboard.summary.writer``, ``tensorboard.plugins.hparams.summary_v2``), not torch's
``SummaryWriter``: that one imports torch, 3-4 s of a logging helper's start on a 2-core machine, for the
same events (``tlkit/tracking/background.py``).
"""

from __future__ import annotations

from pathlib import Path

from tlkit.extras import require
from tlkit.tracking.record import RunRecord

TB_DIR = "tb"


def _hparam_value(value):
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def _hparams(params: dict, metrics) -> list:
    """The HParams dashboard's summaries: the experiment (each parameter with its type, the metric tags), the
    session's values, and its end as a success (what torch's ``hparams()`` writes, in TensorBoard's own API)."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.plugins.hparams.api_pb2 import STATUS_SUCCESS
    from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.summary_v2 import (Discrete, HParam, Metric, _summary_pb, hparams_config_pb,
                                                        hparams_pb)

    params = {k: _hparam_value(v) for k, v in params.items()}
    config = hparams_config_pb([HParam(k, Discrete([v])) for k, v in params.items()], [Metric(t) for t in metrics])
    end = _summary_pb(SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=STATUS_SUCCESS)))
    return [config, hparams_pb(params), end]


def _write(where: Path, steps: dict[int, list]) -> None:
    """Each step's summaries as events, in step order, in a new event file in ``where``."""
    import time

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(where))
    try:
        for step in sorted(steps):
            for summary in steps[step]:
                writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
    finally:
        writer.close()


def warm(scratch: Path) -> None:
    """Import the writer and the protos and write one small event file in ``scratch`` (the logging helper)."""
    _write(Path(scratch) / TB_DIR, {0: _hparams({"warm": 1.0}, ["final/accuracy"])})


class TensorBoardLog:
    def __init__(self, log_dir: Path):
        require("tensorboard", "track", "--log-to tensorboard")
        self.root = Path(log_dir) / TB_DIR

    def log(self, rec: RunRecord, folder: Path, extra_params: dict | None = None, figures=()) -> None:
        """``rec`` as one TensorBoard run in ``folder`` (relative to tb/), in a new event file: its scalars and
        hyperparameters, and the figures at the final step as the PNG bytes already drawn (an image summary of
        the encoded file: nothing is decoded and encoded again). One event per step carries all of that step's
        scalars."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        steps: dict[int, list] = {}
        for tag, step, value in rec.epoch_scalars:
            steps.setdefault(step, []).append(Summary.Value(tag=tag, simple_value=value))
        steps.setdefault(rec.final_step, []).extend(
            Summary.Value(tag=tag, simple_value=value) for tag, value in rec.final_scalars.items())
        # Each value list becomes one summary: rebuild them so that a step's scalars share one event.
        steps = {step: [Summary(value=values)] for step, values in steps.items()}
        metrics = [tag for tag in rec.final_scalars if tag.startswith(("final/", "interval/"))]
        steps.setdefault(0, []).extend(_hparams({**rec.params, **(extra_params or {})}, metrics))
        if figures:
            steps[rec.final_step].append(Summary(value=[Summary.Value(
                tag=f"figures/{figure.name}", image=Summary.Image(
                    height=figure.height, width=figure.width, colorspace=4,  # RGBA, as Agg writes it
                    encoded_image_string=figure.png)) for figure in figures]))
        _write(self.root / folder, steps)

    def log_child(self, folder: Path, params: dict, scalars: dict[str, float]) -> None:
        """One configuration of a sweep: its settings (HParams) and scores, at step 0."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        _write(self.root / folder, {0: [Summary(value=values), *_hparams(params, list(scalars))]})
