"""The command line every ``<article>/train.py`` shares.

--quick            the quick mode: minutes on 2 CPU cores, and still the direction of the article's claim
--smoke            seconds on a sliver of the data: checks that the script runs end to end on this
                   machine and backend (the tests use it); its numbers mean nothing
--epochs N         override the epochs of the chosen mode
--seed S           first seed (default 0; seeds run from 0 to 2**32 - 1, NumPy's range)
--seeds N          how many seeds: S, S+1, ..., S+N-1 (default: the mode's)
--data-dir DIR     the data folder (sets $KEXUE_DATA for this run)
--out DIR          where <article>/<experiment>/seed<k>.json go (default: runs/results/, not committed)
--reference        write to results/, the committed reference (refreshing it; same as --out results)
--force            rerun seeds whose record already exists (default: reuse them, so a killed run
                   resumes where it stopped; an unfinished seed resumes at its last epoch)
--distribute       data-parallel training on every visible device with Keras's own engines:
                   tf.distribute.MirroredStrategy on TensorFlow, keras.distribution.DataParallel on JAX
--cpu-devices N    split the CPU into N logical devices (to try --distribute on a CPU-only machine)

Every check runs in ``parse``, before a script writes or loads anything; ``check`` runs the same
checks without applying anything (reproduce.py checks every article's command line before it runs any).
"""

import argparse
import contextlib
import os
from pathlib import Path

from utils.data import DATA_ENV
from utils.runs import REFERENCE, USER_RUNS, code_version


def parser(description):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores; still shows the article's claim")
    modes.add_argument("--smoke", action="store_true", help="seconds on a sliver of the data: checks the pipeline only")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of the chosen mode")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the mode's)")
    p.add_argument("--data-dir", type=Path, default=None, help=f"data folder (default: ${DATA_ENV}, then download)")
    p.add_argument("--out", type=Path, default=None, help="records folder (default: runs/results/)")
    p.add_argument("--reference", action="store_true", help="write to results/, the committed reference")
    p.add_argument("--force", action="store_true", help="rerun seeds that already have a record")
    p.add_argument("--distribute", action="store_true", help="data-parallel training on all visible devices")
    p.add_argument("--cpu-devices", type=int, default=None, help="split the CPU into N logical devices")
    return p


MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed seeds NumPy's legacy generator, which takes 0 to 2**32 - 1


class OptionError(ValueError):
    """What ``check`` finds wrong with a command line (the message ``parse`` would stop with)."""


def parse(p, argv=None):
    """Parse, check and apply the shared options (data folder, logical CPUs). Call before any model
    is built: splitting the CPU must happen before the backend's runtime starts. Every check runs
    before anything is written or loaded, so a bad option costs no work."""
    args = p.parse_args(argv)
    _check(p, args)
    args.out = REFERENCE if args.reference else (args.out or USER_RUNS).resolve()
    if args.data_dir is not None:
        os.environ[DATA_ENV] = str(args.data_dir.resolve())
    if args.cpu_devices:
        split_cpu(args.cpu_devices)
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    code_version()  # read now: the code that runs is the code at start
    return args


def check(p, argv):
    """The message with which ``parse(p, argv)`` would stop, or None; applies nothing. reproduce.py
    checks every article's command line with it before it runs any."""

    def refuse(message):
        raise OptionError(message)

    p.error = refuse  # argparse reports every problem through error(): raise instead of exiting
    try:
        _check(p, p.parse_args(argv))
    except OptionError as err:
        return str(err)
    return None


def _check(p, args):
    if args.seed < 0 or args.seed > MAX_SEED:
        p.error(f"--seed must be 0 or more, got {args.seed}" if args.seed < 0 else _past_max(args.seed, 1))
    if args.seeds is not None and args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.seeds is not None and args.seed + args.seeds - 1 > MAX_SEED:
        p.error(_past_max(args.seed, args.seeds))
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        p.error(f"--cpu-devices must be at least 1, got {args.cpu_devices}")
    if args.reference and (args.quick or args.smoke):
        p.error("--reference holds the full protocol; drop --quick / --smoke, or drop --reference")
    if args.reference and args.out is not None and args.out.resolve() != REFERENCE:
        p.error(f"--reference writes to {REFERENCE}; drop --out {args.out}, or drop --reference")
    out = REFERENCE if args.reference else (args.out or USER_RUNS).resolve()
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file, not a folder")
    if args.data_dir is not None and not args.data_dir.is_dir():
        p.error(f"--data-dir {args.data_dir} is not a folder")
    if args.distribute or args.cpu_devices:
        import keras

        if keras.backend.backend() not in ("tensorflow", "jax"):
            p.error(f"--distribute and --cpu-devices need the tensorflow or jax backend, not {keras.backend.backend()}")


def _past_max(seed, count):
    seeds = f"--seed {seed}" if count == 1 else f"--seed {seed} with {count} seeds (the last {seed + count - 1})"
    return f"{seeds} is past the largest seed, {MAX_SEED} (2**32 - 1, NumPy's limit); pass a smaller --seed"


def at_least(minimum):
    """An argparse ``type``: an integer of at least ``minimum``; anything else is refused with the
    option's name (``argument --heldout: must be 0 or more, got -1``)."""

    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be {minimum} or more, got {value}"
                if minimum == 0
                else f"must be at least {minimum}, got {value}"
            )
        return value

    return integer


def run(main):
    """Run a script's ``main()``. A dataset that cannot be found or read, or a result record that
    cannot be, ends the script with its message (which names the file and what to do) and exit
    status 1, not with a traceback through the loader."""
    from utils.data import DatasetError, DatasetNotFoundError
    from utils.runs import RecordError

    try:
        return main()
    except (DatasetError, DatasetNotFoundError, RecordError) as err:
        raise SystemExit(f"{type(err).__name__}: {err}") from None


def seeds(args, default):
    """The seeds to run: ``--seed`` and ``--seeds``, else ``default`` seeds from ``--seed``."""
    count = args.seeds or default
    if args.seed + count - 1 > MAX_SEED:  # parse checked --seeds; the mode's default is known only here
        raise SystemExit(_past_max(args.seed, count))
    return list(range(args.seed, args.seed + count))


def steps_per_execution(n):
    """``n`` batches per call into the compiled train step, where the backend allows it: PyTorch's
    trainer takes only 1. The updates are the same; only Python's per-batch overhead changes."""
    import keras

    return 1 if keras.backend.backend() == "torch" else n


def split_cpu(n):
    """Expose the CPU as ``n`` logical devices on the TensorFlow and JAX backends."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    elif backend == "jax":
        import jax

        jax.config.update("jax_num_cpu_devices", n)
    else:
        raise ValueError(f"split_cpu: the {backend} backend has no logical CPU devices (tensorflow or jax only)")


def distribution(args):
    """A context to build and compile the model in: data-parallel over every visible device when
    ``--distribute`` is given, a no-op otherwise. The batch size stays the global batch size."""
    if not args.distribute:
        return contextlib.nullcontext()
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        names = names or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(names)
        print(f"--distribute: tf.distribute.MirroredStrategy over {strategy.num_replicas_in_sync} devices {names}")
        return strategy.scope()
    if backend == "jax":
        names = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=names))
        print(f"--distribute: keras.distribution.DataParallel over {len(names)} devices {names}")
        return contextlib.nullcontext()
    raise SystemExit(
        f"--distribute: Keras has no data-parallel engine for the {backend} backend; use tensorflow or jax"
    )
