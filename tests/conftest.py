"""Shared test setup: the backend in the header, the data folder, a backend-neutral gradient, and
synthetic smallNORB files (for tests/test_utils.py, tests/test_capsule.py and the data catalogue)."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _configured_backend():
    """The backend Keras will load, found as Keras finds it (variable, then keras.json), without
    importing Keras: that import fails when the backend is not installed."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


BACKEND = _configured_backend()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_report_header(config):
    try:
        import keras

        module = __import__(BACKEND)
    except ImportError as err:
        return f"keras backend: {BACKEND} (NOT INSTALLED: the tests that need Keras skip; {err})"
    return f"keras backend: {keras.backend.backend()} ({BACKEND} {module.__version__}, keras {keras.__version__})"


@pytest.fixture(scope="session")
def data_dir():
    """The data folder: $KEXUE_DATA, else the folder CI puts beside the clone (``shared/data``; tests
    and CI only: a user sets KEXUE_DATA or lets the loaders download)."""
    from utils.data import DATA_ENV

    path = Path(os.environ.get(DATA_ENV) or REPO.parent / "shared" / "data")
    os.environ[DATA_ENV] = str(path)
    return path


@pytest.fixture
def require_data(data_dir):
    """``require_data("mnist/mnist.npz")`` returns the file's path, or skips with the reason; with
    KEXUE_REQUIRE_DATA=1 (CI) a missing file fails the test instead."""

    def need(relpath):
        path = data_dir / relpath
        if not path.is_file():
            message = f"dataset file {path} not found (set KEXUE_DATA to the data folder)"
            if os.environ.get("KEXUE_REQUIRE_DATA") == "1":
                pytest.fail(message + "; KEXUE_REQUIRE_DATA=1 makes this a failure")
            pytest.skip(message)
        return path

    return need


def grad(f, x):
    """d sum(f(x)) / dx with the current backend's autodiff; x a NumPy array, result a NumPy array."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(f(x))
        return tape.gradient(y, x).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda v: jnp.sum(f(v)))(jnp.asarray(x)))
    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        f(x).sum().backward()
        return x.grad.detach().numpy()
    raise NotImplementedError(backend)


def run_copied_alone(source, script, tmp_path):
    """Check that ``source`` (a layers.py) imports nothing but keras and numpy, copy it alone into
    ``tmp_path`` as ``layers.py`` and run ``script`` there in a fresh interpreter that cannot see the
    repository. Returns the script's last line of output."""
    imported = set()
    for node in ast.walk(ast.parse(Path(source).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"keras", "numpy"}, f"{source} imports {sorted(imported - {'keras', 'numpy'})}"
    shutil.copy(source, tmp_path / "layers.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


class Killed(BaseException):
    """Stands in for a SIGKILL in the middle of training (a BaseException, so nothing catches it)."""


@pytest.fixture
def kill_after_epoch(monkeypatch):
    """``kill_after_epoch(k)``: the next training run dies right after its checkpoint of epoch ``k``
    (1-based) is written, as a run killed then would; call with None to stop killing."""
    from utils.callbacks import Checkpoint

    original = Checkpoint.on_epoch_end
    state = {"epoch": None}

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if state["epoch"] is not None and epoch + 1 == state["epoch"]:
            state["epoch"] = None
            raise Killed(f"killed after epoch {epoch + 1}")

    monkeypatch.setattr(Checkpoint, "on_epoch_end", on_epoch_end)
    return lambda epoch: state.update(epoch=epoch)


def check_smoke_run(train, argv, tmp_path, capsys, experiments):
    """A ``--smoke`` run of a train.py on the current backend: it ends, writes one record per
    experiment named, each carrying the backend, the protocol and the code version, prints the
    claim's verdict; a rerun reuses every record, and other settings are refused."""
    import keras

    from utils import runs

    out = tmp_path / "records"
    records = train.main(["--smoke", "--out", str(out), *argv])
    assert sorted({r["experiment"] for r in records}) == sorted(experiments)
    version = runs.code_version()
    for record in records:
        assert record["backend"] == keras.backend.backend() and record["protocol"].startswith(("smoke", "jieba"))
        assert record["code_version"] == version and (version["commit"] is None or len(version["commit"]) == 40)
    printed = capsys.readouterr().out
    assert "Claim: " in printed and "**Verdict: " in printed
    assert runs.load_results(out) == sorted(records, key=lambda r: (r["article"], r["experiment"], r["seed"]))
    assert train.main(["--smoke", "--out", str(out), *argv]) == records
    assert printed.count("done already") == 0 and capsys.readouterr().out.count("done already") == len(records)
    assert not list(out.glob(".checkpoints/*/*/*.npz"))  # removed once the records were written
    return records


# --------------------------------------------------------------------------------------------------
# smallNORB: synthetic files in NYU's binary-matrix format (3 pairs a split, never the real data)

_NORB_UINT8, _NORB_INT32, _NORB_FLOAT32 = 0x1E3D4C55, 0x1E3D4C54, 0x1E3D4C51


def _norb_matrix(array, magic=None, shape=None):
    """``array`` as a binary matrix: int32 magic, ndim, max(3, ndim) dims (unused = 1), the elements;
    ``magic`` and ``shape`` override what the header says."""
    import numpy as np

    array = np.asarray(array)
    magic = magic or {np.dtype("uint8"): _NORB_UINT8, np.dtype("int32"): _NORB_INT32}[array.dtype]
    dims = list(shape or array.shape)
    header = np.array([magic, len(dims), *dims, *[1] * (3 - len(dims))], "<i4")
    return header.tobytes() + array.astype(array.dtype.newbyteorder("<")).tobytes()


def _norb_arrays():
    """{(split, part): array}: 3 stereo pairs a split, with their labels and -info rows."""
    import numpy as np

    rng = np.random.default_rng(5)
    return {
        ("train", "dat"): rng.integers(0, 256, (3, 2, 96, 96), dtype=np.uint8),
        ("train", "cat"): np.array([4, 0, 2], np.int32),
        ("train", "info"): np.array([[4, 0, 0, 0], [6, 8, 34, 5], [9, 3, 18, 2]], np.int32),
        ("test", "dat"): rng.integers(0, 256, (3, 2, 96, 96), dtype=np.uint8),
        ("test", "cat"): np.array([1, 3, 0], np.int32),
        ("test", "info"): np.array([[0, 1, 2, 3], [5, 7, 30, 0], [2, 2, 4, 1]], np.int32),
    }


def _norb_name(split, part):
    number = "46789" if split == "train" else "01235"
    return f"smallnorb-5x{number}x9x18x6x2x96x96-{'training' if split == 'train' else 'testing'}-{part}.mat"


def _write_norb(folder, arrays, gzipped=()):
    """Write each array of ``arrays`` as its smallNORB file in ``folder`` (gzipped for the keys in
    ``gzipped``); returns {key: path}."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, array in arrays.items():
        content = array if isinstance(array, bytes) else _norb_matrix(array)
        path = folder / (_norb_name(*key) + ".gz" * (key in gzipped))
        path.write_bytes(gzip.compress(content) if key in gzipped else content)
        paths[key] = path
    return paths
