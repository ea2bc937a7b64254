"""Seeds, the machine a run happened on, and result files that a killed run cannot leave half-written.

Every finished seed of every experiment is one JSON file::

    <out>/<article>/<experiment>/seed<k>.json

holding the metrics, the per-epoch history, the full config, the seed, the backend and library
versions, the device, the wall time, the date and the command line. ``RESULTS.md`` and the folder
READMEs are tables over these files, so they can be regenerated without training again.
"""

import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_UMASK = os.umask(0)
os.umask(_UMASK)


def set_seed(seed):
    """Seed Python, NumPy and the backend (``keras.utils.set_random_seed``) and clear Keras's
    global state, so each seed of an experiment starts from the same place."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(int(seed))


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def devices():
    """The accelerators the current backend sees (e.g. ``["GPU:0"]`` on TensorFlow,
    ``["cuda:0"]`` on JAX, the device name on PyTorch); ``[]`` on a CPU-only machine."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [f"GPU:{i}" for i, _ in enumerate(tf.config.list_physical_devices("GPU"))]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def environment():
    """Versions, backend and machine: what a reader needs to compare a number with theirs."""
    import keras

    backend = keras.backend.backend()
    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__}
    if backend in ("tensorflow", "jax", "torch"):  # the backend's name is its module's name
        versions[backend] = __import__(backend).__version__
    accelerators = devices()
    return {
        "backend": backend,
        "versions": versions,
        "device": ", ".join(accelerators) if accelerators else "CPU",
        "machine": f"{os.cpu_count()} cores {_cpu_name()}, {platform.system()} {platform.machine()}",
    }


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` so that the file is either the old one or the new one whole: write a
    temporary file in the same folder, flush it to disk, then rename it over ``path``. A run killed
    at any moment leaves no half-written file (at most a hidden ``.<name>.*.tmp`` beside it)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path, data):
    """``write_text_atomic`` for bytes (e.g. an ``np.savez`` archive written to a ``BytesIO``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; results are for everyone
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path, obj):
    """``write_text_atomic`` for JSON; an object that cannot be written raises before any file exists."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False, default=_jsonable)
    return write_text_atomic(path, text + "\n")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r}")


def result_path(out, article, experiment, seed):
    return Path(out) / article / experiment / f"seed{seed}.json"


def load_result(path):
    """The record at ``path``, or None if there is none yet."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def reusable(path, config, force=False):
    """The record at ``path`` if a run may reuse it (it exists, ``force`` is off, and it was made with
    ``config`` on the current backend), None if the seed must (re)run. A record made with another
    setup stops the run with a message naming what differs: resuming must not mix setups."""
    import keras

    done = load_result(path)
    if done is None or force:
        return None
    backend = keras.backend.backend()
    if done["config"] != config or done["backend"] != backend:
        changed = {k: (done["config"].get(k), v) for k, v in config.items() if done["config"].get(k) != v}
        if done["backend"] != backend:
            changed["backend"] = (done["backend"], backend)
        raise SystemExit(f"{path} was made with another setup (was, now: {changed}); "
                         "pass --force to replace it, or --out to write elsewhere")
    return done


def save_result(out, article, experiment, seed, *, metrics, config, history=None, headline=None, started=None):
    """Write one seed's record atomically and return its path.

    Args:
        metrics: final numbers, e.g. ``{"test_acc": 0.98}``; NaN/inf are stored as null.
        config: every setting the run used (hyperparameters, data, mode).
        history: per-epoch lists, e.g. Keras's ``History.history``.
        headline: ``{"metric": ..., "label": ..., "blog": value or None, "blog_source": ...}``, the
            number ``RESULTS.md`` shows for this experiment and the article's own number beside it.
        started: ``time.time()`` when the run began (for the wall time).
    """
    now = time.time()
    record = {
        "article": article,
        "experiment": experiment,
        "seed": int(seed),
        "metrics": _finite(metrics),
        "history": _finite(history or {}),
        "headline": headline,
        "config": config,
        **environment(),
        "wall_time_s": round(now - started, 2) if started else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    return write_json_atomic(result_path(out, article, experiment, seed), record)


def _finite(value):
    """NaN and inf are not JSON: store them as null so a diverged run is still recorded."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def load_results(root, article=None):
    """All seed records under ``root`` (optionally one article's), sorted by article, experiment, seed."""
    root = Path(root)
    pattern = f"{article}/*/seed*.json" if article else "*/*/seed*.json"
    records = []
    for path in root.glob(pattern):
        try:
            record = load_result(path)
        except ValueError:  # not JSON (json.JSONDecodeError is a ValueError)
            record = None
        if not isinstance(record, dict) or not {"article", "experiment", "seed", "metrics"} <= set(record):
            warnings.warn(f"skipping {path}: not a result record", stacklevel=2)
            continue
        records.append(record)
    return sorted(records, key=lambda r: (r["article"], r["experiment"], r["seed"]))


def mean_std(values):
    """``(mean, sample std, n)`` of the finite values; std is 0 for one value, mean None for none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std, len(values)


def format_mean_std(values, digits=4):
    mean, std, n = mean_std(values)
    if mean is None:
        return "diverged"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"
