"""utils/: dataset loaders on the real data folder, clear errors, atomic results, CLI, plots, RESULTS.md."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import BACKEND, REPO

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
    assert x[0][:30] == [1, 14, 22, 16, 43, 530, 973, 1622, 1385, 65, 458, 4468, 66, 3941, 4, 173, 36, 256,
                         5, 25, 100, 43, 838, 112, 50, 670, 22665, 9, 35, 480]
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
@pytest.mark.parametrize("loader, relpath, url", [
    (lambda: data.mnist(), "mnist/mnist.npz", "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"),
    (lambda: data.imdb(), "imdb/imdb.npz", "https://storage.googleapis.com/tensorflow/tf-keras-datasets/imdb.npz"),
    (lambda: data.icwb2("msr", "train"), "icwb2/training/msr_training.utf8", "http://sighan.cs.uchicago.edu/bakeoff2005/data/icwb2-data.zip"),
])
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


def test_empty_corpus_file_gives_empty_lists(tmp_path, monkeypatch):
    for member in ("training/pku_training.utf8", "testing/pku_test.utf8"):
        (tmp_path / "icwb2" / member).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "icwb2" / member).write_bytes(b"")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.icwb2("pku", "train") == [] and data.icwb2("pku", "test") == []


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
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(repo=str(REPO), target=str(target), hook=hook)],
                          capture_output=True, text=True, timeout=120)
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


def test_load_results_skips_files_that_are_not_records(tmp_path):
    runs.write_json_atomic(tmp_path / "a" / "e" / "seed0.json", {"article": "a", "experiment": "e", "seed": 0, "metrics": {}})
    (tmp_path / "a" / "e" / "seed1.json").write_text("{not json")
    (tmp_path / "a" / "e" / "seed2.json").write_text('{"something": "else"}')
    with pytest.warns(UserWarning, match="not a result record"):
        records = runs.load_results(tmp_path, "a")
    assert [r["seed"] for r in records] == [0]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="backend-independent; checked once")
def test_save_result_records_everything_a_reader_needs(tmp_path):
    started = time.time() - 2
    path = runs.save_result(tmp_path, "art", "exp", 3, metrics={"acc": np.float32(0.5), "loss": float("nan")},
                            config={"epochs": 2}, history={"loss": [1.0, float("inf")]},
                            headline={"metric": "acc", "blog": 0.6}, started=started)
    assert path == tmp_path / "art" / "exp" / "seed3.json"
    record = json.loads(path.read_text())
    assert record["metrics"] == {"acc": 0.5, "loss": None} and record["history"] == {"loss": [1.0, None]}
    assert record["seed"] == 3 and record["config"] == {"epochs": 2} and record["backend"] == BACKEND
    assert {"python", "keras", "numpy", BACKEND} <= set(record["versions"])
    assert record["device"] and "cores" in record["machine"] and record["wall_time_s"] >= 2
    assert len(record["date"]) == 10 and record["command"]
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
    assert cli.seeds(args) == [4, 5] and not args.quick and args.epochs is None and args.out == tmp_path
    for bad, message in ((["--seeds", "0"], "--seeds must be at least 1"),
                         (["--epochs", "0"], "--epochs must be at least 1"),
                         (["--data-dir", str(tmp_path / "nope")], "is not a folder")):
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
    done = subprocess.run([sys.executable, "-c", DISTRIBUTED_FIT.format(repo=str(REPO))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = "MirroredStrategy over 2 devices" if engine == "tensorflow" else "DataParallel over 2 devices"
    assert expected in done.stdout and "OK" in done.stdout, done.stdout


# ---- plots and RESULTS.md -------------------------------------------------------------------------


def test_plot_curves_writes_a_png_with_ragged_and_missing_values(tmp_path):
    from utils import plots

    path = plots.plot_curves({"a": [[0.5, 0.6, 0.7], [0.55, None]], "b": [[0.1]], "empty": []}, tmp_path / "f" / "c.png",
                             ylabel="acc", title="t", reference={"blog": [0.6, 0.65]})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def _fake_record(tmp_path, experiment, seed, value, mode="full", blog=None):
    record = {"article": "activations", "experiment": experiment, "seed": seed, "metrics": {"test_acc": value},
              "history": {}, "config": {"mode": mode},
              "headline": {"metric": "test_acc", "label": "MNIST test accuracy", "blog": blog, "blog_source": "src"},
              "backend": "tensorflow", "versions": {"tensorflow": "2.21.0"}, "device": "CPU",
              "machine": "2 cores X", "wall_time_s": 1.0, "date": "2026-11-23",
              "command": "python activations/train.py"}
    runs.write_json_atomic(runs.result_path(tmp_path, "activations", experiment, seed), record)


def test_results_md_is_a_table_over_the_result_files(tmp_path):
    _fake_record(tmp_path, "mlp-relu", 0, 0.97)
    _fake_record(tmp_path, "mlp-relu", 1, 0.99)
    _fake_record(tmp_path, "mlp-relu-quick", 0, 0.90, mode="quick")
    out = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, str(REPO / "reproduce.py"), "--table-only", "--out", str(tmp_path),
                           "--results-md", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    full, quick = text.split("### Quick mode")
    assert "| mlp-relu | MNIST test accuracy | none | 0.9800 ± 0.0141 | 2 (0,1) |" in full
    assert "| mlp-relu-quick | MNIST test accuracy | none | 0.9000 | 1 (0) |" in quick
    assert "Blog column: src." in full
    assert "2 cores X; CPU; tensorflow 2.21.0" in full and text in done.stdout


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
