"""Keras callbacks the train scripts share."""

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_time_s`` (wall seconds of the epoch, validation and earlier callbacks included)
    to the epoch's logs, so it lands in the history next to the loss."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_time_s"] = time.perf_counter() - self.start


class PrintEpoch(keras.callbacks.Callback):
    """One line per epoch: the logged metrics, an optional reference value beside ``val_accuracy``
    (e.g. the article's log, one value per epoch), and ``epoch_time_s`` when EpochTimer runs first."""

    def __init__(self, reference=None, keys=("loss", "accuracy", "val_loss", "val_accuracy")):
        super().__init__()
        self.reference = list(reference or [])
        self.keys = keys

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{key} {logs[key]:.4f}" for key in self.keys if key in logs]
        if epoch < len(self.reference):
            parts[-1] += f" (article {self.reference[epoch]:.4f})"
        if "epoch_time_s" in logs:
            parts.append(f"{logs['epoch_time_s']:.1f} s")
        print(f"    epoch {epoch + 1}: " + "  ".join(parts), flush=True)
