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
