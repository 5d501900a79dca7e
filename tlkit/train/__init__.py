"""The training loop shared by the torch heads and the scratch baseline."""

from tlkit.train.loop import EpochRecord, TrainConfig, TrainResult, train_classifier

__all__ = ["EpochRecord", "TrainConfig", "TrainResult", "train_classifier"]
