"""utils/: dataset loaders on the real data folder, clear errors, atomic results, CLI, plots, RESULTS.md."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import BACKEND, REPO, Killed, _norb_arrays, _write_norb

from utils import data, runs

# ---- datasets --------------------------------------------------------------------------------------


@pytest.mark.data
def test_mnist_shapes_and_official_checksums(require_data):
    require_data("mnist/mnist.npz")
    (x, y), (xt, yt) = data.mnist()
    assert (x.shape, y.shape, xt.shape, yt.shape) == ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    assert x.dtype == y.dtype == xt.dtype == yt.dtype == np.uint8
    # The LeCun idx file's md5, recomputed from the array (header + bytes): the data is MNIST's own.
    header = np.array([2051, 10000, 28, 28], ">u4").tobytes()
    assert hashlib.md5(header + xt.tobytes()).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


@pytest.mark.data
def test_imdb_matches_keras_load_data(require_data):
    """Published outputs of keras.datasets.imdb.load_data(): lengths, the first review, labels."""
    require_data("imdb/imdb.npz")
    (x, y), (xt, yt) = data.imdb()
    assert x.shape == y.shape == xt.shape == yt.shape == (25000,)
    assert (len(x[0]), len(x[1])) == (218, 189)
    assert x[0][:30] == [
        1,
        14,
        22,
        16,
        43,
        530,
        973,
        1622,
        1385,
        65,
        458,
        4468,
        66,
        3941,
        4,
        173,
        36,
        256,
        5,
        25,
        100,
        43,
        838,
        112,
        50,
        670,
        22665,
        9,
        35,
        480,
    ]
    assert y[:3].tolist() == [1, 0, 0] and yt[:3].tolist() == [0, 1, 1]
    # Keras's default vocabulary ends below the largest id, so the max ids are 88586 and 88584.
    assert max(max(r) for r in x) == 88586 and max(max(r) for r in xt) == 88584
    (x_no_oov, _), _ = data.imdb(num_words=100, oov_char=None)
    assert all(w < 100 for w in x_no_oov[0]) and x_no_oov[0] == [w for w in x[0] if w < 100]
    (x20k, _), (xt20k, _) = data.imdb(num_words=20000)
    assert max(max(r) for r in x20k) == 19999 and max(max(r) for r in xt20k) < 20000
    assert x20k[0][:30] == [w if w < 20000 else 2 for w in x[0][:30]]
    word_index = data.imdb_word_index()
    assert len(word_index) == 88584 and word_index["the"] == 1


@pytest.mark.data
def test_icwb2_pku_parts_line_up(require_data):
    for part in ("training/pku_training.utf8", "testing/pku_test.utf8", "gold/pku_test_gold.utf8"):
        require_data(f"icwb2/{part}")
    train = data.icwb2("pku", "train")
    assert len(train) == 19484  # the reconstruction has 19,484 lines, none blank
    assert train[0][:4] == ["迈向", "充满", "希望", "的"]
    assert all(words and all(w and not w.isspace() for w in words) for words in train)
    test, gold = data.icwb2("pku", "test"), data.icwb2("pku", "gold")
    assert len(test) == len(gold) == 1945
    assert all("".join(words) == line for words, line in zip(gold, test))  # gold segments the test input
    assert sum(map(len, gold)) == 104372 and sum(len(line) for line in test) == 172733
    assert gold[0] == ["共同", "创造", "美好", "的", "新", "世纪", "——", "二○○一年", "新年", "贺词"]
    words = data.icwb2("pku", "words")
    assert len(words) == 55303 and "世纪" in words


@pytest.mark.data
def test_icwb2_msr_test_and_gold(require_data):
    require_data("icwb2/gold/msr_test_gold.utf8")
    test, gold = data.icwb2("msr", "test"), data.icwb2("msr", "gold")
    assert len(test) == len(gold) == 3985 and test[0] == "扬帆远东做与中国合作的先行"
    assert len(data.icwb2("msr", "words")) == 88119


def test_icwb2_rejects_unknown_corpus_and_part():
    with pytest.raises(ValueError, match="'pku' or 'msr'"):
        data.icwb2("as", "train")
    with pytest.raises(ValueError, match="part must be one of"):
        data.icwb2("pku", "dev")


@pytest.mark.data
def test_tang_poems(require_data):
    require_data("chinese_poetry/poet.tang.zhCN.tar.xz")
    poems = data.tang_poems()
    assert len(poems) == 57591
    assert poems[0]["title"] == "帝京篇十首 一" and poems[0]["paragraphs"][0] == "秦川雄帝宅，函谷壮皇居。"
    assert set(poems[1]) == {"author", "title", "paragraphs", "strains"}


def _offline(monkeypatch, tmp_path):
    """No data folder entry, an empty Keras cache, and a download that fails as it does offline."""
    import keras

    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def no_network(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_network)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="loaders are backend-independent; checked once")
@pytest.mark.parametrize(
    "loader, relpath, url",
    [
        (
            lambda: data.mnist(),
            "mnist/mnist.npz",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
        ),
        (lambda: data.imdb(), "imdb/imdb.npz", "https://storage.googleapis.com/tensorflow/tf-keras-datasets/imdb.npz"),
        (
            lambda: data.icwb2("msr", "train"),
            "icwb2/training/msr_training.utf8",
            "http://sighan.cs.uchicago.edu/bakeoff2005/data/icwb2-data.zip",
        ),
    ],
)
def test_missing_dataset_error_names_variable_path_and_url(monkeypatch, tmp_path, loader, relpath, url):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(data.DatasetNotFoundError) as err:
        loader()
    message = str(err.value)
    assert data.DATA_ENV in message and str(tmp_path / "data" / relpath) in message and url in message
    assert "name resolution" in message  # the download's own reason is kept


@pytest.mark.skipif(BACKEND != "tensorflow", reason="loaders are backend-independent; checked once")
def test_missing_tang_poems_names_the_archive(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.tang_poems()
    message = str(err.value)
    assert str(tmp_path / "data" / "chinese_poetry" / "poet.tang.zhCN.tar.xz") in message
    assert "raw.githubusercontent.com/chinese-poetry/chinese-poetry-zhCN" in message and data.DATA_ENV in message


@pytest.mark.skipif(BACKEND != "tensorflow", reason="loaders are backend-independent; checked once")
def test_missing_dataset_with_variable_unset_says_so(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    monkeypatch.delenv(data.DATA_ENV)
    with pytest.raises(data.DatasetNotFoundError, match=r"\$KEXUE_DATA/mnist/mnist.npz \(variable unset\)"):
        data.mnist()


def test_data_folder_comes_before_the_keras_cache(monkeypatch, tmp_path):
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "keras_home" / "datasets").mkdir(parents=True)
    (tmp_path / "data" / "mnist" / "mnist.npz").write_bytes(b"local")
    (tmp_path / "keras_home" / "datasets" / "mnist.npz").write_bytes(b"cache")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "data"))
    assert data.locate("mnist/mnist.npz", "http://unused").read_bytes() == b"local"
    monkeypatch.delenv(data.DATA_ENV)
    assert data.locate("mnist/mnist.npz", "http://unused").read_bytes() == b"cache"


def test_corpus_lines_tabs_spaces_blank_and_bom(tmp_path, monkeypatch):
    corpus = tmp_path / "icwb2" / "training" / "pku_training.utf8"
    corpus.parent.mkdir(parents=True)
    corpus.write_bytes("\ufeff我们  是\r\n\r\n   \r\n 中国\t人民 \r\n一\n".encode("utf-8"))
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.icwb2("pku", "train") == [["我们", "是"], ["中国", "人民"], ["一"]]


def test_non_utf8_line_names_file_and_line(tmp_path, monkeypatch):
    corpus = tmp_path / "icwb2" / "gold" / "pku_test_gold.utf8"
    corpus.parent.mkdir(parents=True)
    corpus.write_bytes("好  的\r\n".encode() + "坏".encode("gbk") + b"  x\r\n")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(data.CorpusFormatError, match=rf"{corpus}:2: not valid UTF-8 \(bytes .* at column 1\)"):
        data.icwb2("pku", "gold")


# ---- results ---------------------------------------------------------------------------------------


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from utils import runs
    runs.write_json_atomic({target!r}, {{"version": "old"}})
    def die(*args):  # the process is killed at this step of the write
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(os, {hook!r}, die)
    runs.write_json_atomic({target!r}, {{"version": "new", "payload": list(range(100000))}})
""")


@pytest.mark.parametrize("hook", ["fsync", "replace"])
def test_a_killed_write_leaves_the_old_file_whole(tmp_path, hook):
    """SIGKILL the writer after the new JSON is written but before it is flushed (fsync) or before it
    is renamed into place (replace): the result file is still the old, complete one."""
    target = tmp_path / "seed0.json"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER.format(repo=str(REPO), target=str(target), hook=hook)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert json.loads(target.read_text()) == {"version": "old"}
    assert runs.load_results(tmp_path) == []  # the leftover temp file is never read as a result


def test_write_json_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    runs.write_json_atomic(target, {"ok": 1})
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # readable by others, unlike mkstemp's default
    with pytest.raises(TypeError):  # not serializable: fails before any file is touched
        runs.write_json_atomic(target, {"bad": object()})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        runs.write_json_atomic(target, {"ok": 2})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # the temporary file was removed


def _record(article="a", experiment="e", seed=0, **extra):
    return {"article": article, "experiment": experiment, "seed": seed, "metrics": {}, "config": {}, **extra}


def test_load_results_counts_only_seed_files_and_stops_at_bad_or_doubled_records(tmp_path):
    """Only <article>/<experiment>/seed<k>.json counts; an unreadable record, a record outside its
    folder (a backup copy of an experiment folder) or two records of one seed stop the table with an
    error naming every file concerned."""
    runs.write_json_atomic(tmp_path / "a" / "e" / "seed0.json", _record())
    runs.write_json_atomic(tmp_path / "a" / "e" / "seed1.json", _record(seed=1))
    runs.write_json_atomic(tmp_path / "a" / "e" / "seed0 (copy).json", _record())  # not a seed file: ignored
    runs.write_json_atomic(tmp_path / "a" / "e" / "seed2.json.bak", _record(seed=2))
    (tmp_path / "a" / "e" / ".seed3.json.x.tmp").write_text("{half")
    assert [r["seed"] for r in runs.load_results(tmp_path, "a")] == [0, 1]

    copy = tmp_path / "a" / "e (copy)"
    copy.mkdir()
    (copy / "seed1.json").write_bytes((tmp_path / "a" / "e" / "seed1.json").read_bytes())
    with pytest.raises(runs.RecordError) as err:
        runs.load_results(tmp_path)
    assert f"{tmp_path / 'a' / 'e' / 'seed1.json'} and {copy / 'seed1.json'} are both records of a/e seed 1" in str(
        err.value
    )

    (copy / "seed1.json").unlink()
    runs.write_json_atomic(copy / "seed5.json", _record(seed=5))
    with pytest.raises(runs.RecordError, match=r"holds the record of a/e seed 5, which belongs in .*a/e/seed5.json"):
        runs.load_results(tmp_path)

    (copy / "seed5.json").unlink()
    (tmp_path / "a" / "e" / "seed1.json").write_text('{"metrics": {"acc": 0.9')  # truncated
    (tmp_path / "a" / "e" / "seed4.json").write_text('{"something": "else"}')
    with pytest.raises(runs.RecordError) as err:
        runs.load_results(tmp_path, "a")
    assert "seed1.json: not a readable result record (JSONDecodeError" in str(err.value)
    assert "seed4.json: not a result record (no article, config, experiment, metrics, seed)" in str(err.value)


def test_a_corrupt_record_stops_a_run_with_its_name(tmp_path):
    path = tmp_path / "a" / "e" / "seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text("{")
    with pytest.raises(
        SystemExit, match=r"seed0.json: not a readable result record .*\(or pass --force to replace it\)"
    ):
        runs.reusable(path, {})
    assert runs.reusable(path, {}, force=True) is None


def test_code_version_names_the_commit_and_ignores_records(tmp_path):
    """The commit and whether the code differs from it; records and RESULTS.md are not code changes."""
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    sha = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    runs.code_version.cache_clear()
    (tmp_path / "results" / "a").mkdir(parents=True)
    (tmp_path / "results" / "a" / "seed0.json").write_text("{}")
    (tmp_path / "RESULTS.md").write_text("table")
    assert runs.code_version(tmp_path) == {"commit": sha, "dirty": False}
    runs.code_version.cache_clear()
    (tmp_path / "code.py").write_text("x = 2\n")
    assert runs.code_version(tmp_path) == {"commit": sha, "dirty": True}
    assert runs.describe_version(runs.code_version(tmp_path)) == sha[:7] + "+changes"
    runs.code_version.cache_clear()
    assert runs.code_version(tmp_path / "results") == {"commit": sha, "dirty": True}  # inside the checkout
    runs.code_version.cache_clear()
    outside = tmp_path.parent / (tmp_path.name + "-not-git")
    outside.mkdir()
    assert runs.code_version(outside) == {"commit": None, "dirty": None}
    assert runs.describe_version(runs.code_version(outside)) == "unknown"
    runs.code_version.cache_clear()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="backend-independent; checked once")
def test_save_result_records_everything_a_reader_needs(tmp_path):
    started = time.time() - 2
    path = runs.save_result(
        tmp_path,
        "art",
        "exp",
        3,
        metrics={"acc": np.float32(0.5), "loss": float("nan")},
        config={"epochs": 2},
        history={"loss": [1.0, float("inf")]},
        headline={"metric": "acc", "blog": 0.6},
        started=started,
    )
    assert path == tmp_path / "art" / "exp" / "seed3.json"
    record = json.loads(path.read_text())
    assert record["metrics"] == {"acc": 0.5, "loss": None} and record["history"] == {"loss": [1.0, None]}
    assert record["seed"] == 3 and record["config"] == {"epochs": 2} and record["backend"] == BACKEND
    assert {"python", "keras", "numpy", BACKEND} <= set(record["versions"])
    assert record["device"] and "cores" in record["machine"] and record["wall_time_s"] >= 2
    assert len(record["date"]) == 10 and record["command"]
    assert record["code_version"] == runs.code_version() and record["code_version"]["commit"]
    assert record["protocol"] == "full mode"
    assert runs.load_results(tmp_path) == [record]


def test_mean_std_and_format():
    assert runs.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert runs.mean_std([0.5, None, float("nan")]) == (0.5, 0.0, 1)
    assert runs.format_mean_std([0.9, 0.92]) == "0.9100 ± 0.0141"
    assert runs.format_mean_std([None]) == "diverged"


# ---- cli -------------------------------------------------------------------------------------------


def test_cli_defaults_and_errors(tmp_path, capsys):
    from utils import cli

    args = cli.parse(cli.parser("x"), ["--seed", "4", "--seeds", "2", "--out", str(tmp_path)])
    assert cli.seeds(args, 3) == [4, 5] and args.mode == "full" and args.epochs is None and args.out == tmp_path
    assert cli.seeds(cli.parse(cli.parser("x"), ["--quick"]), 1) == [0]
    assert cli.parse(cli.parser("x"), []).out == runs.USER_RUNS  # a user's runs never land in the reference
    assert cli.parse(cli.parser("x"), ["--reference"]).out == runs.REFERENCE
    assert cli.parse(cli.parser("x"), ["--smoke"]).mode == "smoke"
    (tmp_path / "file").write_text("")
    for bad, message in (
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--seed", "-5"], "--seed must be 0 or more, got -5"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--quick", "--smoke"], "not allowed with argument"),
        (["--reference", "--out", str(tmp_path)], "--reference writes to"),
        (["--out", str(tmp_path / "file")], "is a file, not a folder"),
        (["--data-dir", str(tmp_path / "nope")], "is not a folder"),
    ):
        with pytest.raises(SystemExit):
            cli.parse(cli.parser("x"), bad)
        assert message in capsys.readouterr().err


def test_cli_data_dir_sets_the_variable(tmp_path, monkeypatch):
    from utils import cli

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    cli.parse(cli.parser("x"), ["--data-dir", str(tmp_path)])
    assert os.environ[data.DATA_ENV] == str(tmp_path.resolve())


DISTRIBUTED_FIT = textwrap.dedent("""
    import sys; sys.path.insert(0, {repo!r})
    from utils import cli
    args = cli.parse(cli.parser("t"), ["--distribute", "--cpu-devices", "2"])
    import keras, numpy as np
    with cli.distribution(args):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    loss = model.fit(x, x.sum(1), batch_size=16, epochs=2, verbose=0).history["loss"]
    assert all(np.isfinite(loss)) and loss[-1] < loss[0], loss
    print("OK", loss)
""")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs each engine in its own process; checked once")
@pytest.mark.parametrize("engine", ["tensorflow", "jax"])
def test_distribute_trains_on_two_logical_cpus(engine):
    """--distribute with --cpu-devices 2: MirroredStrategy (TensorFlow) or DataParallel (JAX) over two
    logical CPU devices, and the model still learns."""
    pytest.importorskip(engine, reason=f"{engine} is not installed")
    env = {**os.environ, "KERAS_BACKEND": engine, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED_FIT.format(repo=str(REPO))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = "MirroredStrategy over 2 devices" if engine == "tensorflow" else "DataParallel over 2 devices"
    assert expected in done.stdout and "OK" in done.stdout, done.stdout


# ---- plots and RESULTS.md -------------------------------------------------------------------------


def test_plot_curves_writes_a_png_with_ragged_and_missing_values(tmp_path):
    from utils import plots

    path = plots.plot_curves(
        {"a": [[0.5, 0.6, 0.7], [0.55, None]], "b": [[0.1]], "empty": []},
        tmp_path / "f" / "c.png",
        ylabel="acc",
        title="t",
        reference={"blog": [0.6, 0.65]},
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def _fake_record(root, experiment, seed, value, mode="full", command="python activations/train.py"):
    record = {
        "article": "activations",
        "experiment": experiment,
        "seed": seed,
        "metrics": {"test_acc": value},
        "history": {},
        "config": {"mode": mode},
        "protocol": f"{mode}: 20 epochs",
        "headline": {"metric": "test_acc", "label": "MNIST test accuracy", "blog": None, "blog_source": "src"},
        "backend": "tensorflow",
        "versions": {"tensorflow": "2.21.0"},
        "device": "CPU",
        "machine": "2 cores X",
        "wall_time_s": 1.0,
        "date": "2026-11-23",
        "command": command,
        "code_version": {"commit": "abcdef0123456789", "dirty": seed == 1},
    }
    runs.write_json_atomic(runs.result_path(root, "activations", experiment, seed), record)


def _table_only(reference, results_md):
    """`reproduce.py --table-only` over the records in ``reference``, writing ``results_md``."""
    command = [
        sys.executable,
        str(REPO / "reproduce.py"),
        "--table-only",
        "--reference-dir",
        str(reference),
        "--results-md",
        str(results_md),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_results_md_is_a_table_over_the_reference_with_every_command(tmp_path):
    reference = tmp_path / "reference"
    _fake_record(reference, "mlp-relu", 0, 0.97)
    _fake_record(reference, "mlp-relu", 1, 0.99, command="python activations/train.py --seed 1 --seeds 1")
    out = tmp_path / "RESULTS.md"
    done = _table_only(reference, out)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert (
        "| mlp-relu | MNIST test accuracy | none | 0.9800 ± 0.0141 | 2 (0,1) | full: 20 epochs | "
        "`python activations/train.py`<br>`python activations/train.py --seed 1 --seeds 1` | 2026-11-23 | "
        "2 cores X; CPU; tensorflow 2.21.0 | abcdef0, abcdef0+changes |"
    ) in text
    assert "Blog column: src." in text and "No reference records yet." in text  # the other articles

    (reference / "activations" / "mlp-relu" / "seed1.json").write_text('{"article": ')
    done = _table_only(reference, out)
    assert done.returncode != 0 and "mlp-relu/seed1.json: not a readable result record" in done.stderr
    assert "0.9800 ± 0.0141" in out.read_text(encoding="utf-8")  # the table was not rewritten


# --------------------------------------------------------------------------------------------------
# feed: arrays to fit without tf.data's background threads


def test_feed_arrays_gives_every_sample_once_per_epoch_reshuffled_and_trains():
    pytest.importorskip(BACKEND)
    import keras

    from utils import feed

    x = np.arange(50, dtype="float32")[:, None]
    y = (np.arange(50) % 2).astype("float32")
    kwargs = feed.arrays(x, y, batch_size=8, shuffle=True, seed=3)
    if keras.backend.backend() != "tensorflow":
        assert kwargs == {"x": x, "y": y, "batch_size": 8, "shuffle": True}
        return
    assert kwargs["shuffle"] is False and set(kwargs) == {"x", "shuffle"}  # the pipeline shuffles itself
    dataset = kwargs["x"]
    assert dataset.options().autotune.enabled is False
    epochs = []
    for _ in range(2):
        batches = [(bx.numpy()[:, 0], by.numpy()) for bx, by in dataset]
        assert [len(b[0]) for b in batches] == [8] * 6 + [2]
        order = np.concatenate([b[0] for b in batches])
        assert sorted(order) == list(range(50))  # every sample once
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), order % 2)  # pairs kept
        epochs.append(order)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    again = [bx.numpy()[:, 0] for bx, _ in feed.arrays(x, y, batch_size=8, shuffle=True, seed=3)["x"]]
    np.testing.assert_array_equal(np.concatenate(again), epochs[0])  # the seed fixes the order
    in_order = np.concatenate([bx.numpy()[:, 0] for bx, _ in feed.validation(x, y, batch_size=8)])
    np.testing.assert_array_equal(in_order, np.arange(50))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(**kwargs, epochs=2, validation_data=feed.validation(x, y, batch_size=8), verbose=0)
    assert len(history.history["val_loss"]) == 2


def test_feed_arrays_shuffles_several_inputs_as_one_set():
    """Two inputs (a list or tuple of arrays) shuffle together over the whole set: a buffer the size of
    the tuple (2) would leave the order almost sorted."""
    pytest.importorskip(BACKEND)
    import keras

    from utils import feed

    if keras.backend.backend() != "tensorflow":
        pytest.skip("feed.arrays hands the arrays to Keras unchanged on this backend")
    a = np.arange(200, dtype="float32")[:, None]
    for x in ([a, -a], (a, -a)):
        batches = list(feed.arrays(x, a[:, 0], batch_size=50, shuffle=True, seed=0)["x"])
        first = batches[0][0][0].numpy()[:, 0]
        np.testing.assert_array_equal(batches[0][0][1].numpy()[:, 0], -first)  # the inputs stay paired
        assert first.max() > 150  # drawn from the whole set
        assert sorted(np.concatenate([b[0][0].numpy()[:, 0] for b in batches])) == list(range(200))


# --------------------------------------------------------------------------------------------------
# run_jobs and Checkpoint: one way to resume


def _tiny_train(ran):
    """A train function for run_jobs: a small regression fitted for the job's epochs with the
    checkpoint; returns the final kernel as a metric, and appends to ``ran`` how many epochs this
    process trained."""

    def train(job, checkpoint):
        import keras

        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 3)).astype("float32")
        y = x @ np.array([1.0, -2.0, 0.5], "float32")
        model = keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer="adam", loss="mse")
        fitted = model.fit(
            x,
            y,
            batch_size=16,
            epochs=job.config["epochs"],
            shuffle=False,
            verbose=0,
            initial_epoch=checkpoint.restore(model),
            callbacks=[checkpoint],
        )
        ran.append(len(fitted.history["loss"]))
        return {"kernel": keras.ops.convert_to_numpy(model.layers[-1].kernel).ravel().tolist()}, checkpoint.history

    return train


def test_run_jobs_resumes_a_killed_seed_where_it_stopped(tmp_path, capsys, kill_after_epoch):
    """A seed killed after epoch 2 of 4 trains only epochs 3 and 4 when rerun, from the checkpoint
    (weights, optimizer and dropout's random state), and ends exactly where an uninterrupted run ends
    (which it could not with any of those lost); finished seeds are reused."""
    pytest.importorskip(BACKEND)
    from types import SimpleNamespace

    jobs = [runs.Job("e", seed, {"epochs": 4}, {"metric": "kernel"}, "test: 4 epochs") for seed in (0, 1)]
    whole = runs.run_jobs("a", jobs, SimpleNamespace(out=tmp_path / "whole", force=False), _tiny_train([]))
    args = SimpleNamespace(out=tmp_path / "killed", force=False)
    kill_after_epoch(2)
    with pytest.raises(Killed):
        runs.run_jobs("a", jobs, args, _tiny_train([]))
    assert (tmp_path / "killed" / ".checkpoints" / "a" / "e" / "seed0.npz").is_file()
    capsys.readouterr()
    ran = []
    resumed = runs.run_jobs("a", jobs, args, _tiny_train(ran))
    printed = capsys.readouterr().out
    assert "[a 1/2] e seed 0 (test: 4 epochs)" in printed and "resuming after epoch 2" in printed
    assert "about 0:" in printed  # an estimate of what is left, after the first job
    assert ran == [2, 4]  # seed 0 resumed at epoch 3; seed 1 trained whole
    for a, b in zip(whole, resumed):
        assert a["history"]["loss"] == b["history"]["loss"] and len(a["history"]["loss"]) == 4
        np.testing.assert_allclose(a["metrics"]["kernel"], b["metrics"]["kernel"], rtol=1e-6)
    assert not list((tmp_path / "killed" / ".checkpoints").rglob("*.npz"))
    assert runs.run_jobs("a", jobs, args, _tiny_train([])) == resumed
    assert capsys.readouterr().out.count("done already") == 2


def test_checkpoint_early_stopping_keeps_the_best_epoch_and_resumes(tmp_path):
    """Held-out F1 per epoch 0.90, 0.95, 0.94, 0.93 with patience 2: training stops after epoch 4,
    the best file holds epoch 2's weights, and a restarted run knows it has stopped."""
    pytest.importorskip(BACKEND)
    import keras

    from utils.callbacks import Checkpoint

    def np_(v):
        return keras.ops.convert_to_numpy(v)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    make = lambda folder, identity=1: Checkpoint(tmp_path / folder / "seed0.npz", {"a": identity}, "heldout_f1", 2)
    checkpoint = make("a")
    checkpoint.set_model(model)
    kernels = []
    for epoch, f1 in enumerate([0.90, 0.95, 0.94, 0.93]):
        model.layers[0].kernel.assign(np.full((3, 2), float(epoch), "float32"))
        kernels.append(np_(model.layers[0].kernel))
        model.stop_training = False
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "heldout_f1": f1})
        assert model.stop_training == (epoch == 3)
    fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    fresh.compile(optimizer="adam", loss="mse")
    again = make("a")
    assert again.restore(fresh) == 4 and again.stopped and again.history["heldout_f1"] == [0.90, 0.95, 0.94, 0.93]
    np.testing.assert_array_equal(np_(fresh.layers[0].kernel), kernels[3])  # the last epoch, to go on from
    assert again.restore_best(fresh) == 2
    np.testing.assert_array_equal(np_(fresh.layers[0].kernel), kernels[1])  # the best epoch, to score
    with pytest.raises(SystemExit, match="another setup"):
        make("a", identity=2).restore_best(fresh)
    # Killed between writing a new best epoch's checkpoint and the best file: resuming recovers it.
    killed = make("b")
    killed.set_model(model)
    for epoch, f1 in enumerate([0.90, 0.95]):
        model.layers[0].kernel.assign(np.full((3, 2), 10.0 + epoch, "float32"))
        killed.on_epoch_end(epoch, {"loss": 1.0, "heldout_f1": f1})
        if epoch == 0:
            saved_first = killed.best_path.read_bytes()
    killed.best_path.write_bytes(saved_first)  # as if the second write never happened
    resumed = make("b")
    assert resumed.restore(fresh) == 2
    fresh.layers[0].kernel.assign(np.zeros((3, 2), "float32"))
    assert resumed.restore_best(fresh) == 2 and np.all(np_(fresh.layers[0].kernel) == 11.0)
    resumed.remove()
    assert not resumed.path.exists() and not resumed.best_path.exists()
    with pytest.raises(SystemExit, match="weights of the best epoch"):
        resumed.restore_best(fresh)


def test_a_corrupt_or_mismatched_checkpoint_is_named(tmp_path):
    pytest.importorskip(BACKEND)
    import keras

    from utils.callbacks import Checkpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "seed0.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit, match=r"seed0.npz: not a readable checkpoint .* delete it \(or pass --force\)"):
        Checkpoint(path, {}).restore(model)
    saver = Checkpoint(path, {})
    saver.set_model(model)
    saver.on_epoch_end(0, {"loss": 1.0})
    wider = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    wider.compile(optimizer="adam", loss="mse")
    with pytest.raises(
        SystemExit, match=r"model variable 0 .* is \(3, 5\) in this model but \(3, 2\) in the checkpoint"
    ):
        Checkpoint(path, {}).restore(wider)


# --------------------------------------------------------------------------------------------------
# progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_on_stderr_only_in_a_terminal(monkeypatch):
    """Keras's Progbar, drawn on standard error when it is a terminal; nothing in a log; nothing ever
    on standard output (which may carry a segmenter's words). fit's verbosity follows stdout."""
    pytest.importorskip(BACKEND)
    from utils import progress

    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert progress.fit_verbose() == 1
    bar = progress.Bar(300, "segmenting", minimum=100)
    for _ in range(3):
        bar.add(100)
    bar.close()
    assert out.getvalue() == "" and "segmenting" in err.getvalue() and "300/300" in err.getvalue()

    log, err_log = io.StringIO(), io.StringIO()  # not terminals
    monkeypatch.setattr(sys, "stdout", log)
    monkeypatch.setattr(sys, "stderr", err_log)
    assert progress.fit_verbose() == 0
    quiet = progress.Bar(300, "segmenting", minimum=100)
    quiet.add(300)
    quiet.close()
    assert log.getvalue() == err_log.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", err)
    small = progress.Bar(50, "few", minimum=100)  # below the minimum: no bar
    small.add(50)
    assert "few" not in err.getvalue()


# --------------------------------------------------------------------------------------------------
# claims and verdicts


def test_claim_judges_one_run_against_the_reference():
    from utils import report

    claim = report.Claim(
        statement="a beats b",
        criterion="a's score is above b's",
        rows=[
            report.Row("a", "a", "score", "a: score", blog=0.9),
            report.Row("b", "b", "score", "b: score"),
            report.Row("a_first", "a", lambda r: r["history"]["acc"][0], "a: first epoch", digits=2),
        ],
        holds=lambda v: v["a"] > v["b"],
        blog_source="the article",
    )

    def record(experiment, seed, score, version=None):
        return {
            "experiment": experiment,
            "seed": seed,
            "metrics": {"score": score},
            "history": {"acc": [0.5]},
            "protocol": "quick: 1 epoch",
            "code_version": version or runs.code_version(),
        }

    reference = [record("a", 0, 0.8), record("a", 1, 0.9), record("b", 0, 0.1)]
    run = [record("a-quick", 0, 0.7), record("b-quick", 0, 0.2)]
    verdict, lines = claim.judge(run, reference, "quick")
    assert verdict == report.REPRODUCED and lines[-1] == "**Verdict: reproduced**"
    assert "| a: score | 0.9 | 0.8500 ± 0.0707 (2 seeds) | 0.7000 (1 seed) |" in lines
    assert "| a: first epoch | - | 0.50 ± 0.00 (2 seeds) | 0.50 (1 seed) |" in lines
    assert "This run: quick: 1 epoch." in lines and "Blog column: the article." in lines
    assert f"Code of this run's records: {runs.describe_version(runs.code_version())}." in lines
    # the criterion can fail; a missing or diverged number makes the run incomplete, not a pass
    assert claim.verdict([record("a-quick", 0, 0.1), record("b-quick", 0, 0.2)], "quick") == report.NOT_REPRODUCED
    assert claim.verdict(run[:1], "quick") == report.INCOMPLETE
    assert claim.verdict([record("a-quick", 0, None), run[1]], "quick") == report.INCOMPLETE
    assert claim.verdict(reference, "quick") == report.INCOMPLETE  # full records are not a quick run's
    _, lines = claim.judge([record("a-quick", 0, None), run[1]], reference, "quick")
    assert "| a: score | 0.9 | 0.8500 ± 0.0707 (2 seeds) | diverged |" in lines
    short = [{**run[0], "history": {"acc": []}}, run[1]]  # a run with no first epoch: not measured, not diverged
    _, lines = claim.judge(short, reference, "quick")
    assert "| a: first epoch | - | 0.50 ± 0.00 (2 seeds) | not measured |" in lines
    _, lines = claim.judge(run[:1], reference, "quick")
    assert "| b: score | - | 0.1000 (1 seed) | not measured |" in lines
    old = [record("a-quick", 0, 0.7, {"commit": "0" * 40, "dirty": False}), run[1]]
    _, lines = claim.judge(old, reference, "quick")
    assert any(
        line.startswith("Code of this run's records: 0000000, ") and "--force reruns them" in line for line in lines
    )


def test_models_go_beside_their_records_and_never_into_the_reference(tmp_path):
    from utils import runs

    assert runs.models_dir(runs.USER_RUNS, "poetry") == runs.REPO / "runs" / "poetry"
    assert runs.models_dir(runs.REFERENCE, "crf") == runs.REPO / "runs" / "crf-reference"
    assert runs.models_dir(tmp_path, "poetry") == tmp_path / "models"
    assert not str(runs.models_dir(runs.REFERENCE, "crf")).startswith(str(runs.REFERENCE))


# --------------------------------------------------------------------------------------------------
# smallNORB: synthetic files (conftest.py) read back exactly; the damaged files are in
# tests/catalogue/test_bad_data.py


@pytest.mark.parametrize("gzipped", ["none", "all", "dat"])
def test_small_norb_reads_plain_and_gzipped_files_exactly(tmp_path, gzipped):
    arrays = _norb_arrays()
    zipped = {"none": (), "all": tuple(arrays), "dat": (("train", "dat"), ("test", "dat"))}[gzipped]
    _write_norb(tmp_path, arrays, zipped)
    train, test = data.small_norb(tmp_path, with_info=True, expected_count=3)
    for split, got in (("train", train), ("test", test)):
        x, y, info = got
        assert (x.dtype, y.dtype, info.dtype) == (np.uint8, np.int32, np.int32)
        assert (x.shape, y.shape, info.shape) == ((3, 2, 96, 96), (3,), (3, 4))
        assert np.array_equal(x, arrays[split, "dat"]) and np.array_equal(y, arrays[split, "cat"])
        assert np.array_equal(info, arrays[split, "info"])
        assert x.flags.writeable and y.flags.writeable
    (x, y), (xt, yt) = data.small_norb(str(tmp_path), expected_count=3)  # a str; info not read
    assert np.array_equal(xt, arrays["test", "dat"]) and yt.tolist() == [1, 3, 0]


def test_small_norb_round_trip_check_would_catch_swapped_axes(tmp_path):
    """Control: the round-trip comparison above fails for a file (or a reader) with the image's rows
    and columns swapped, or the stereo pair's two images swapped."""
    arrays = _norb_arrays()
    x = arrays["train", "dat"]
    for swapped in (x.transpose(0, 1, 3, 2), x[:, ::-1]):
        _write_norb(tmp_path, {**arrays, ("train", "dat"): np.ascontiguousarray(swapped)})
        (got, _), _ = data.small_norb(tmp_path, expected_count=3)
        assert got.shape == x.shape and np.array_equal(got, swapped) and not np.array_equal(got, x)


def test_small_norb_reads_kexue_data_smallnorb_by_default(tmp_path, monkeypatch):
    arrays = _norb_arrays()
    _write_norb(tmp_path / "smallnorb", arrays)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    (x, y), _ = data.small_norb(expected_count=3)
    assert np.array_equal(x, arrays["train", "dat"]) and y.tolist() == [4, 0, 2]


def test_norb_downsample_standardize_by_hand():
    image = np.array([[0, 2, 4, 4], [2, 0, 4, 4], [6, 6, 8, 10], [6, 6, 10, 8]], np.uint8)
    # 2x2 averages [[1, 4], [6, 9]]; mean 5; deviations [[-4, -1], [1, 4]]; variance 34/4
    expected = np.array([[-4, -1], [1, 4]]) / np.sqrt(34 / 4)
    got = data.norb_downsample_standardize(image, size=2)
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)

    x = np.random.default_rng(0).integers(0, 256, (3, 2, 96, 96), dtype=np.uint8)
    x[2, 1] = 7  # a constant image: zeros, not NaN
    out = data.norb_downsample_standardize(x)
    assert out.shape == (3, 2, 48, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out[:2].mean(axis=(-2, -1)), 0, atol=1e-6)
    np.testing.assert_allclose(out[:2].std(axis=(-2, -1)), 1, rtol=1e-5)
    assert not out[2, 1].any()
    small = x[1, 0].astype(np.float64).reshape(48, 2, 48, 2).mean(axis=(1, 3))  # float64 oracle, one image
    np.testing.assert_allclose(out[1, 0], (small - small.mean()) / small.std(), rtol=1e-5, atol=1e-5)
    assert data.norb_downsample_standardize(x[:, 0]).shape == (3, 48, 48)  # left images only
    with pytest.raises(ValueError, match=r"cannot be averaged down to 40x40"):
        data.norb_downsample_standardize(x, size=40)


# ---- optimizers --------------------------------------------------------------------------------------


TF_ONLY = pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow kernel; elsewhere adam() is Keras's Adam")


@pytest.fixture
def fused_calls(monkeypatch):
    """A list that grows by one at each call of TensorFlow's fused Adam kernel (in a traced step: at tracing)."""
    import tensorflow as tf

    calls = []
    kernel = tf.raw_ops.ResourceApplyAdam
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", lambda **kw: calls.append(1) or kernel(**kw))
    return calls


def _adam_oracle(grads, w, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam in float64 NumPy (Kingma & Ba, Keras's epsilon placement) on dense gradients."""
    w, m, v = w.astype(np.float64), np.zeros(w.shape), np.zeros(w.shape)
    for t, g in enumerate(grads, 1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        w = w - lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (np.sqrt(v) + epsilon)
    return w, m, v


@TF_ONLY
def test_fused_adam_is_adam_on_dense_and_on_row_gradients(fused_calls):
    """Against a float64 oracle: dense gradients, and an embedding's rows with repeated ids (the rows of
    one id add up to its gradient). Keras's own Adam on TensorFlow squares each row before adding the
    rows of one id, so it misses the oracle there: the control that the comparison can fail."""
    import keras
    import tensorflow as tf

    from utils import optimizers

    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 3)).astype("float32")
    dense = [rng.normal(size=(6, 3)).astype("float32") for _ in range(5)]
    ids = [np.array([0, 2, 2, 5]), np.array([1, 1, 1, 3]), np.array([4, 0, 4, 2]), np.array([5]), np.array([2, 2])]
    rows = [rng.normal(size=(len(i), 3)).astype("float32") for i in ids]
    as_dense = [np.stack([r[i == k].sum(0) for k in range(6)]) for i, r in zip(ids, rows)]

    def run(optimizer, grads):
        var = keras.Variable(start)
        for g in grads:
            optimizer.apply([g], [var])
        index = optimizer._get_variable_index(var)
        return [np.array(x) for x in (var, optimizer._momentums[index], optimizer._velocities[index])]

    slices = [tf.IndexedSlices(tf.constant(r), tf.constant(i), tf.constant([6, 3])) for i, r in zip(ids, rows)]
    for grads, oracle_grads in ((dense, dense), (slices, as_dense)):
        fused_calls.clear()
        got = run(optimizers.adam(0.05), grads)
        assert len(fused_calls) == len(grads), "the fused kernel was not used"
        for a, b in zip(got, _adam_oracle(oracle_grads, start, 0.05)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    keras_rows = run(keras.optimizers.Adam(0.05), slices)
    assert not np.allclose(keras_rows[2], _adam_oracle(as_dense, start, 0.05)[2], rtol=1e-5, atol=1e-6)


@TF_ONLY
def test_fused_adam_trains_a_model_and_saves_as_keras_adam(tmp_path, fused_calls):
    import keras

    from utils import optimizers

    x, y = np.random.default_rng(1).normal(size=(16, 4)), np.zeros((16, 1))

    def trained(optimizer):  # the same start, batches and order for both optimizers
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
        return model

    model = trained(optimizers.adam(0.01, beta_2=0.99))
    assert fused_calls, "fit did not use the fused kernel"  # called while fit traces its step
    twin = trained(keras.optimizers.Adam(0.01, beta_2=0.99))
    for a, b in zip(model.weights, twin.weights):  # dense gradients: Keras's Adam is the same Adam
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)
    path = tmp_path / "m.keras"
    model.save(path)
    # a fresh process that knows nothing of utils/ loads it with Keras's Adam and its state
    np.savez(tmp_path / "state.npz", *[np.array(v) for v in model.optimizer.variables])
    script = f"""
import numpy as np, keras
m = keras.saving.load_model({str(path)!r})
assert type(m.optimizer) is keras.optimizers.Adam, type(m.optimizer)
want = np.load({str(tmp_path / "state.npz")!r})
got = [np.array(v) for v in m.optimizer.variables]
assert len(got) == len(want.files)
for i, g in enumerate(got):
    np.testing.assert_array_equal(g, want[f"arr_{{i}}"])
print("loaded", m.optimizer.get_config()["beta_2"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "loaded 0.99" in done.stdout, done.stderr[-2000:]
