"""Seeds, records, and the loop every train.py runs its seeds through.

Every finished seed of every experiment is one JSON file, written atomically::

    <out>/<article>/<experiment>/seed<k>.json

holding the metrics, the per-epoch history, the full config, what the run was (its protocol), the
seed, the backend and library versions, the device, the code version (commit, and whether the tree
had uncommitted changes), the wall time, the date and the command line.

Two folders hold records:

- ``results/`` (``REFERENCE``), committed: the project's reference, the full protocol behind every
  README number and ``RESULTS.md``. Only ``--reference`` (or ``--out results``) writes there.
- ``runs/results/`` (``USER_RUNS``), not committed: where a user's runs go by default. A killed run
  resumes there: finished seeds are kept, and an unfinished seed restarts from its last epoch
  (``utils.callbacks.Checkpoint``, in ``<out>/.checkpoints/``, removed once the seed's record is written).

``run_jobs`` is the loop: for each (experiment, seed) it reuses a finished record made with the same
setup, refuses one made with another, or seeds everything, trains, and writes the record; it says
which job it is on, the time spent and an estimate of what remains.
"""

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results"
USER_RUNS = REPO / "runs" / "results"
_UMASK = os.umask(0)
os.umask(_UMASK)
_SEED_FILE = re.compile(r"seed(\d+)\.json")


class RecordError(ValueError):
    """Result records that cannot make a table: unreadable, misplaced or duplicated. The message
    names every file concerned."""


def set_seed(seed):
    """Seed Python, NumPy and the backend (``keras.utils.set_random_seed``) and clear Keras's
    global state, so each seed of an experiment starts from the same place."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(int(seed))


def experiment_name(base, mode):
    """The folder of an experiment's records: ``base`` for the full protocol, ``base-quick`` for the
    quick mode (so the two never mix, and a quick record is never taken for a full one)."""
    return base if mode == "full" else f"{base}-{mode}"


# --------------------------------------------------------------------------------------------------
# The machine and the code


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


def machine():
    return f"{os.cpu_count()} cores {_cpu_name()}, {platform.system()} {platform.machine()}"


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
        "machine": machine(),
    }


@functools.cache
def code_version(repo=REPO):
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout the code runs from. Records
    and the reference do not count as changes (writing a seed's record must not make the next seed's
    code look edited); anything else that git sees as changed or new does. None when the code is not
    in a git checkout or git is missing. Read once per process: the code that runs is the code at
    start."""

    def git(*argv):
        done = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changes = git("status", "--porcelain", "--", ".", ":(exclude)results", ":(exclude)RESULTS.md")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changes.strip())}


def describe_version(version):
    """``abc1234`` or ``abc1234+changes``; ``unknown`` outside a git checkout; ``not recorded`` for a
    record written before records carried their code version."""
    if version is None:
        return "not recorded"
    if not version.get("commit"):
        return "unknown"
    return version["commit"][:7] + ("+changes" if version.get("dirty") else "")


# --------------------------------------------------------------------------------------------------
# Atomic files


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


def save_model_atomic(model, path):
    """``model.save(path)`` through a temporary file beside it, so that a kill mid-write leaves the
    old file (or none), never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


class ModelFileError(ValueError):
    """A saved model's file (``.keras``, vocabulary) that exists but cannot be read; the message
    names it and what to do."""


def load_model_file(path, remedy):
    """``keras.saving.load_model(path, compile=False)``, or a ``ModelFileError`` that names the file,
    says what is wrong with it and ``remedy`` (what to do). Keras reports a truncated ``.keras`` file
    as "File not found"; here a file that is there is never called missing."""
    import zipfile

    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {remedy}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path}: not a readable Keras model: the file is corrupt (not a zip archive, as a .keras "
            f"file is; truncated?); {remedy}"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # a damaged archive member, a foreign zip, an unknown layer: Keras's errors name no file
        raise ModelFileError(
            f"{path}: not a readable Keras model: the file is corrupt or not a model "
            f"({type(err).__name__}: {str(err)[:300]}); {remedy}"
        ) from None


def model_folder(path, names, remedy, writer):
    """``path`` as a ``Path`` once it is a folder holding the files ``names`` (a trained model, as
    ``writer`` saves it): an empty path (it would mean the current folder) raises ``ValueError``, a
    file ``NotADirectoryError``, a folder where one of the files belongs ``IsADirectoryError`` and a
    missing one ``FileNotFoundError``; each message names the path, and the last two ``remedy``."""
    holds = " and ".join(names)
    if not os.fspath(path).strip():
        raise ValueError(f"the model folder is an empty path: give the folder {writer} wrote ({holds})")
    path = Path(path)
    if path.is_file():
        raise NotADirectoryError(f"{path} is a file, not a model folder: give the folder that holds {holds} ({writer})")
    for name in names:
        if (path / name).is_dir():
            raise IsADirectoryError(
                f"{path / name} is a folder, not the model's file: the model folder is damaged; {remedy}"
            )
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found: a model folder holds {holds}; {remedy}")
    return path


def model_folder_argument(writer):
    """An argparse ``type`` for a model folder: a ``Path``, never an empty one (the current folder)."""

    def folder(value):
        if not value.strip():
            raise argparse.ArgumentTypeError(f"an empty model folder: give the folder {writer} wrote")
        return Path(value)

    return folder


def load_json_file(path, remedy, object_pairs_hook=None):
    """The JSON in ``path`` (a byte-order mark at the start is accepted), or a ``ModelFileError``
    naming the file, the problem (not JSON, nested too deeply to read, a number too long) and
    ``remedy``. ``object_pairs_hook`` goes to ``json.load`` and may raise ``ModelFileError`` itself."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f, object_pairs_hook=object_pairs_hook)
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; {remedy}") from None
    except (OSError, ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = "nested too deeply to read" if isinstance(err, RecursionError) else f"{type(err).__name__}: {err}"
        why = why.split("; use sys.set_int_max_str_digits")[0]  # a number too long to read: no limit to raise
        raise ModelFileError(f"{path}: corrupt, not readable JSON ({why}); {remedy}") from None


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r}")


# --------------------------------------------------------------------------------------------------
# Records


def result_path(out, article, experiment, seed):
    return Path(out) / article / experiment / f"seed{seed}.json"


_REQUIRED = {"article", "experiment", "seed", "metrics", "config"}


def load_result(path):
    """The record at ``path``, or None if there is none yet. A file that is not a record raises
    ``RecordError`` naming it (and what to do), rather than a JSON traceback."""
    path = Path(path)
    if path.is_dir():
        raise RecordError(f"{path} is a folder, not a result record; move it out of the results folder")
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (ValueError, OSError) as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RecordError(
            f"{path}: not a readable result record ({type(err).__name__}: {err}); "
            "delete it to run that seed again, or restore it from git"
        ) from None
    missing = _REQUIRED - set(record) if isinstance(record, dict) else _REQUIRED
    if missing:
        raise RecordError(
            f"{path}: not a result record (no {', '.join(sorted(missing))}); "
            "delete it to run that seed again, or restore it from git"
        )
    return record


def reusable(path, config, force=False):
    """The record at ``path`` if a run may reuse it (it exists, ``force`` is off, and it was made with
    ``config`` on the current backend), None if the seed must (re)run. A record made with another
    setup stops the run with a message naming what differs: resuming must not mix setups."""
    import keras

    if Path(path).is_dir():  # not even --force can write a record there
        raise SystemExit(f"{path} is a folder where the record of this seed goes; move it away")
    if force:  # a record that cannot be read is replaced too
        return None
    try:
        done = load_result(path)
    except RecordError as err:
        raise SystemExit(f"{err} (or pass --force to replace it)") from None
    if done is None:
        return None
    backend = keras.backend.backend()
    if done["config"] != config or done.get("backend") != backend:
        keys = sorted(set(config) | set(done["config"]))
        changed = {k: (done["config"].get(k), config.get(k)) for k in keys if done["config"].get(k) != config.get(k)}
        if done.get("backend") != backend:
            changed["backend"] = (done.get("backend"), backend)
        raise SystemExit(
            f"{path} was made with another setup (was, now: {changed}); "
            "pass --force to replace it, or --out to write elsewhere"
        )
    return done


def save_result(
    out, article, experiment, seed, *, metrics, config, history=None, headline=None, started=None, protocol=None
):
    """Write one seed's record atomically and return its path.

    Args:
        metrics: final numbers, e.g. ``{"test_acc": 0.98}``; NaN/inf are stored as null.
        config: every setting the run used (hyperparameters, data, mode).
        history: per-epoch lists, e.g. Keras's ``History.history``.
        headline: ``{"metric": ..., "label": ..., "blog": value or None, "blog_source": ...}``, the
            number ``RESULTS.md`` shows for this experiment and the article's own number beside it.
        started: ``time.time()`` when the run began (for the wall time).
        protocol: what ran, in words (``"quick: 2 epochs on 6,000 images"``); tables show it.
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
        "protocol": protocol or f"{config.get('mode', 'full')} mode",
        **environment(),
        "code_version": code_version(),
        "wall_time_s": round(now - started, 2) if started else None,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
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
    """All seed records under ``root`` (optionally one article's), sorted by article, experiment, seed.

    Only ``<root>/<article>/<experiment>/seed<k>.json`` counts (a ``seed0 (copy).json`` or a
    temporary file does not). A record that cannot be read, that sits in a folder other than the one
    its own article, experiment and seed name (a backup copy of a folder), or two records of the same
    experiment and seed raise ``RecordError`` naming every such file: a table must not silently drop
    or double a seed.
    """
    root = Path(root)
    problems, seen = [], {}
    for path in sorted(root.glob(f"{article or '*'}/*/seed*.json")):
        match = _SEED_FILE.fullmatch(path.name)
        if not match:
            continue
        try:
            record = load_result(path)
        except RecordError as err:
            problems.append(str(err))
            continue
        key = (record["article"], record["experiment"], record["seed"])
        where = (path.parent.parent.name, path.parent.name, int(match.group(1)))
        if key in seen:
            problems.append(
                f"{seen[key][0]} and {path} are both records of {key[0]}/{key[1]} seed {key[2]}; "
                "keep one (move the other out of the results folder)"
            )
        elif key != where:
            problems.append(
                f"{path} holds the record of {key[0]}/{key[1]} seed {key[2]}, which belongs in "
                f"{result_path(root, *key)}; move it there or out of the results folder"
            )
        seen.setdefault(key, (path, record))
    if problems:
        raise RecordError("cannot use the records under " + str(root) + ":\n  " + "\n  ".join(problems))
    return [seen[key][1] for key in sorted(seen)]


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


# --------------------------------------------------------------------------------------------------
# The loop over seeds


@dataclass
class Job:
    """One seed of one experiment: what ``run_jobs`` trains and records.

    Attributes:
        experiment: the records' folder name (``experiment_name(base, mode)``).
        seed: the seed.
        config: every setting; a finished record is reused only if its config is equal.
        headline: the metric tables show for this experiment, and the blog's number.
        protocol: what runs, in words, for tables and reports.
        spec: anything the train function needs that is not part of the record.
    """

    experiment: str
    seed: int
    config: dict
    headline: dict
    protocol: str
    spec: dict = field(default_factory=dict)


def models_dir(out, article):
    """Where an article's trained models go; models are never committed. A user's (``runs/results/``)
    go to ``runs/<article>/`` (where the articles' examples look), the reference's to
    ``runs/<article>-reference/``, those of any other records folder to ``<out>/models/``."""
    if Path(out) == USER_RUNS:
        return REPO / "runs" / article
    if Path(out) == REFERENCE:
        return REPO / "runs" / f"{article}-reference"
    return Path(out) / "models"


def checkpoint_path(out, article, experiment, seed):
    """Where an unfinished seed's checkpoint lives: beside the records, in a hidden folder that no
    table reads (and git ignores)."""
    return Path(out) / ".checkpoints" / article / experiment / f"seed{seed}.npz"


def run_jobs(article, jobs, args, train):
    """Run every job not already done, in order; return every job's record.

    ``train(job, checkpoint)`` trains one seed and returns ``(metrics, history)``; it passes
    ``checkpoint`` (a ``utils.callbacks.Checkpoint``) to ``fit`` and calls ``checkpoint.restore(model)``
    before it, so a seed killed mid-way resumes at its last finished epoch, and takes the history from
    ``checkpoint.history`` (all epochs, across restarts). The record is written, then the checkpoint
    removed. ``args`` is what ``utils.cli.parse`` returns (``out``, ``force``).
    """
    from utils.callbacks import Checkpoint

    if Path(args.out).resolve() != REFERENCE:
        # the run ends by judging its records against the reference: a reference record that cannot
        # be read would stop it there, after all the training, so it stops now
        try:
            load_results(REFERENCE, article)
        except RecordError as err:
            raise SystemExit(f"{err}\n(the run is judged against these at its end: fix them first)") from None
    started_all, trained_s, trained, records = time.time(), 0.0, 0, []
    for index, job in enumerate(jobs):
        path = result_path(args.out, article, job.experiment, job.seed)
        done = reusable(path, job.config, args.force)
        tag = f"[{article} {index + 1}/{len(jobs)}] {job.experiment} seed {job.seed}"
        if done is not None:
            print(f"{tag}: done already ({relative(path)})", flush=True)
            records.append(done)
            continue
        left = sum(
            1 for j in jobs[index:] if args.force or not result_path(args.out, article, j.experiment, j.seed).is_file()
        )
        estimate = f", about {duration(trained_s / trained * left)} left" if trained else ""
        print(f"{tag} ({job.protocol}): {duration(time.time() - started_all)} so far{estimate}", flush=True)
        started = time.time()
        set_seed(job.seed)
        checkpoint = Checkpoint(
            checkpoint_path(args.out, article, job.experiment, job.seed),
            identity={"config": job.config, "seed": job.seed, "backend": _backend()},
        )
        if args.force:
            checkpoint.remove()
        metrics, history = train(job, checkpoint)
        save_result(
            args.out,
            article,
            job.experiment,
            job.seed,
            metrics=metrics,
            config=job.config,
            history=history,
            headline=job.headline,
            started=started,
            protocol=job.protocol,
        )
        checkpoint.remove()
        trained_s, trained = trained_s + time.time() - started, trained + 1
        records.append(load_result(path))
    return records


def _backend():
    import keras

    return keras.backend.backend()


def relative(path):
    """``path`` relative to the repository when it is inside it (for messages), else as it is."""
    try:
        return Path(path).resolve().relative_to(REPO)
    except ValueError:
        return path


def duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}"
