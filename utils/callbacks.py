"""Keras callbacks the train scripts share: epoch times, the one line per epoch, and the checkpoint
that lets a killed seed resume at its last finished epoch."""

import contextlib
import io
import json
import time
from pathlib import Path

import keras
import numpy as np

from utils.runs import write_bytes_atomic


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_time_s`` (wall seconds of the epoch, validation and earlier callbacks included)
    and ``train_time_s`` (the training part alone: up to the validation pass) to the epoch's logs, so
    they land in the history next to the loss."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.train_s = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if getattr(self, "train_s", 0) is None:  # the epoch's validation pass starts: training is over
            self.train_s = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_time_s"] = time.perf_counter() - self.start
        logs["train_time_s"] = logs["epoch_time_s"] if self.train_s is None else self.train_s


class PrintEpoch(keras.callbacks.Callback):
    """One line per epoch: the logged metrics, an optional reference value beside the last key
    (e.g. the article's log, one value per epoch), and ``epoch_time_s`` when EpochTimer runs first."""

    def __init__(self, reference=None, keys=("loss", "accuracy", "val_loss", "val_accuracy")):
        super().__init__()
        self.reference = list(reference or [])
        self.keys = keys

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{key} {logs[key]:.4f}" for key in self.keys if key in logs]
        if epoch < len(self.reference) and parts:
            parts[-1] += f" (article {self.reference[epoch]:.4f})"
        if "epoch_time_s" in logs:
            parts.append(f"{logs['epoch_time_s']:.1f} s")
        print(f"    epoch {epoch + 1}: " + "  ".join(parts), flush=True)


class Checkpoint(keras.callbacks.Callback):
    """Resumable training, one file per seed: after each epoch it writes the model's variables (random
    generator states included), the optimizer's, the logs of every epoch so far and an identity (the
    run's config), atomically, so a run killed at any moment restarts at its last finished epoch
    from a consistent state. ``restore(model)`` before ``fit`` loads it and returns the epoch to pass
    as ``initial_epoch``; ``history`` holds every epoch's logs, across restarts.

    Keras's ``BackupAndRestore`` restores weights and the epoch, but neither the logs of the epochs
    before a restart (so a resumed seed's record would lose them) nor a best epoch, and it writes its
    files in place; this callback keeps all three.

    With ``monitor`` (a log key, higher is better) the variables of the best epoch so far are kept
    beside the checkpoint, and with ``patience`` training stops once that many epochs passed without
    a new best (early stopping); ``restore_best(model)`` loads the best epoch's variables.

    Args:
        path: the checkpoint file (``.npz``); the best epoch goes to ``<stem>.best.npz`` beside it.
        identity: anything JSON can hold that names the run (config, seed, backend); a checkpoint
            made with another identity stops the run with a message rather than being loaded.
    """

    def __init__(self, path, identity, monitor=None, patience=None):
        super().__init__()
        self.path = Path(path)
        self.best_path = self.path.with_name(self.path.stem + ".best.npz")
        self.identity = json.dumps(identity, sort_keys=True, default=str)
        self.monitor, self.patience = monitor, patience
        self.history, self.stopped = {}, False

    # -- writing -----------------------------------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        best = self.best_epoch()
        if best is not None and self.patience is not None and epoch + 1 - best >= self.patience:
            self.stopped = self.model.stop_training = True
            print(
                f"    stopping: no better {self.monitor} for {self.patience} epochs; the best was epoch {best}",
                flush=True,
            )
        variables = _arrays("model", self.model.variables)
        state = json.dumps({"epochs_done": epoch + 1, "history": self.history, "stopped": self.stopped})
        self._save(
            self.path, state=np.array(state), **variables, **_arrays("optimizer", self.model.optimizer.variables)
        )
        # Written after the checkpoint: if a kill falls in between, the best epoch is the checkpoint's
        # own last epoch, and restore() writes it again.
        if best == epoch + 1:
            self._save(self.best_path, epoch=np.array(best), **variables)

    def _save(self, path, **arrays):
        buffer = io.BytesIO()
        np.savez(buffer, identity=np.array(self.identity), **arrays)
        write_bytes_atomic(path, buffer.getvalue())

    def best_epoch(self):
        """The epoch (1-based) with the highest ``monitor`` so far, or None without one."""
        values = self.history.get(self.monitor) if self.monitor else None
        return int(np.argmax(values)) + 1 if values else None

    # -- reading -----------------------------------------------------------------------------------

    def restore(self, model):
        """Epochs already done (0 without a checkpoint); loads the model's and optimizer's variables.
        Call after ``compile`` and before ``fit(..., initial_epoch=...)``."""
        if not self.path.is_file():
            return 0
        with self._open(self.path) as saved, _unreadable(self.path):
            state = json.loads(str(saved["state"]))
            epochs_done, history = int(state["epochs_done"]), dict(state["history"])
            model.optimizer.build(model.trainable_variables)
            _assign(self.path, "model", model.variables, saved)
            _assign(self.path, "optimizer", model.optimizer.variables, saved)
        self.history, self.stopped = history, state.get("stopped", False)
        best = self.best_epoch()
        if best is not None and best == epochs_done and self._saved_best() != best:
            self._save(self.best_path, epoch=np.array(best), **_arrays("model", model.variables))
        print(f"    resuming after epoch {epochs_done} ({self.path})", flush=True)
        return epochs_done

    def restore_best(self, model):
        """Load the best epoch's variables (needs ``monitor``); returns that epoch (1-based)."""
        best = self.best_epoch()
        for path in (self.best_path, self.path):
            if not path.is_file():
                continue
            with self._open(path) as saved, _unreadable(path):
                epoch = int(saved["epoch"]) if "epoch" in saved else json.loads(str(saved["state"]))["epochs_done"]
                if epoch == best:
                    _assign(path, "model", model.variables, saved)
                    return best
        raise SystemExit(
            f"the weights of the best epoch ({best}) are in neither {self.best_path} nor {self.path}; "
            "pass --force to train again"
        )

    def _saved_best(self):
        if not self.best_path.is_file():
            return None
        with self._open(self.best_path) as saved, _unreadable(self.best_path):
            return int(saved["epoch"])

    def _open(self, path):
        try:
            saved = np.load(path)
            identity = str(saved["identity"])
        except Exception as err:  # a truncated or foreign file: zipfile, pickle, key or OS errors
            raise _unreadable_error(path, err) from None
        if identity != self.identity:
            saved.close()
            raise SystemExit(f"{path} is from another setup of this run; pass --force to start over")
        return saved

    def remove(self):
        """Delete the checkpoint and the best epoch's file (the seed is finished, or restarts)."""
        self.path.unlink(missing_ok=True)
        self.best_path.unlink(missing_ok=True)


def _unreadable_error(path, err):
    return SystemExit(
        f"{path}: not a readable checkpoint (corrupt: {type(err).__name__}: {err}); "
        "delete it (or pass --force) to train this seed from the start"
    )


@contextlib.contextmanager
def _unreadable(path):
    """Reading a checkpoint's contents: a damaged member or a missing key stops the run naming the file."""
    try:
        yield
    except SystemExit:
        raise
    except Exception as err:
        raise _unreadable_error(path, err) from None


def _arrays(prefix, variables):
    return {f"{prefix}_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}


def _assign(path, prefix, variables, saved):
    for i, variable in enumerate(variables):
        key = f"{prefix}_{i}"
        if key not in saved or tuple(saved[key].shape) != tuple(variable.shape):
            found = tuple(saved[key].shape) if key in saved else "nothing"
            raise SystemExit(
                f"{path}: {prefix} variable {i} ({variable.path}) is {tuple(variable.shape)} in this "
                f"model but {found} in the checkpoint; delete it (or pass --force) to start over"
            )
        variable.assign(saved[key])
