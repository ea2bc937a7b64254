"""The reliability catalogue, scripts and command lines: every train.py, reproduce.py, crf/segment.py,
crf/evaluate.py and poetry/generate.py answer a bad option, a bad input or a damaged file with one
error that names it and what to do, before any work or any write; never a traceback from argparse,
json, zipfile or Keras, and never an input silently ignored.

Argparse errors are checked as ``SystemExit(2)`` plus the message on standard error; a run that stops
later, as ``SystemExit`` with its message. Model folders are tiny untrained models saved the way the
train scripts save them; a control in each group shows the good input goes through.
"""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO

from utils import cli, runs

TRAIN_SCRIPTS = ("activations", "attention", "capsule", "crf", "poetry", "vae")


def refused(capsys, call, *fragments):
    """``call()`` stops as argparse does (exit code 2) with every fragment in its error message."""
    with pytest.raises(SystemExit) as stop:
        call()
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# ---- every train.py: options checked before anything is read or written ------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-5"], "--seed must be 0 or more, got -5"),
        (["--seed", str(2**32)], f"--seed {2**32} is past the largest seed, {2**32 - 1}"),
        (["--seed", str(2**32 - 2), "--seeds", "3"], "with 3 seeds (the last 4294967296) is past the largest seed"),
        (["--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["--seeds", "-2"], "--seeds must be at least 1, got -2"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--cpu-devices", "0"], "--cpu-devices must be at least 1, got 0"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--seeds"], "argument --seeds: expected one argument"),
    ],
    ids=[
        "seed-negative",
        "seed-past-2**32",
        "last-seed-past-2**32",
        "seeds-0",
        "seeds-negative",
        "epochs-0",
        "cpu-devices-0",
        "epochs-not-a-number",
        "seeds-without-value",
    ],
)
@pytest.mark.parametrize("article", TRAIN_SCRIPTS)
def test_every_train_script_refuses_a_bad_shared_option(article, argv, message):
    """A bad shared option -> the message of the train.py's own parser (what it stops with); a good
    command line -> no message (the control)."""
    import importlib

    parser = importlib.import_module(f"{article}.train").parser
    assert cli.check(parser(), ["--smoke"]) is None
    assert message in cli.check(parser(), ["--smoke", *argv])


def test_the_modes_default_seed_count_past_2_to_the_32_stops_before_any_job():
    """--seed 2**32 - 2 in full mode (3 seeds by default) -> SystemExit naming the last seed, not
    NumPy's ValueError after the first seed's record; 2**32 - 3 is fine (the control)."""
    args = cli.parse(cli.parser("x"), ["--seed", str(2**32 - 2)])
    with pytest.raises(SystemExit, match=r"--seed 4294967294 with 3 seeds \(the last 4294967296\) is past"):
        cli.seeds(args, 3)
    assert cli.seeds(cli.parse(cli.parser("x"), ["--seed", str(2**32 - 3)]), 3)[-1] == 2**32 - 1


@pytest.fixture
def pku(tmp_path, monkeypatch):
    """A data folder whose PKU training set has 3 sentences, and no other bakeoff file (so a run that
    reads further fails on a missing file, not on the option checked); no network."""
    import keras

    def no_network(*args, **kwargs):
        raise OSError("no network in the catalogue tests")

    train = tmp_path / "data" / "icwb2" / "training" / "pku_training.utf8"
    train.parent.mkdir(parents=True)
    train.write_text("我  爱  北京\n天安门  在  北京\n我  爱  天安门\n", encoding="utf-8")
    monkeypatch.setenv("KEXUE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(keras.utils, "get_file", no_network)
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-5"], "--seed must be 0 or more, got -5"),
        (["--heldout", "-1"], "argument --heldout: must be 0 or more, got -1"),
        (["--heldout", "3"], "--heldout 3 leaves nothing to train on: the pku training set has 3 sentences"),
        (["--variant", "nope"], "argument --variant: invalid choice: 'nope'"),
        (["--ensembles", "strong"], "--ensembles strong needs trained models that are not there"),
    ],
    ids=["seed-negative", "heldout-negative", "heldout-whole-training-set", "unknown-variant", "ensemble-untrained"],
)
def test_crf_train_stops_before_writing_anything(pku, capsys, argv, message):
    """crf/train.py with a bad option -> its message (a held-out count with both numbers), exit 2,
    and no records folder, no model folder: nothing written, no file read past the training set."""
    from crf import train

    out, save = pku / "records", pku / "models"
    refused(capsys, lambda: train.main(["--smoke", "--out", str(out), "--save", str(save), *argv]), message)
    assert not out.exists() and not save.exists()


def test_crf_train_control_reads_on_past_the_checks(pku, capsys):
    """Control for the test above: --heldout 2 of 3 passes the checks, and the run goes on to read the
    test set, which this data folder lacks (so the checks are what stopped those runs)."""
    from crf import train

    with pytest.raises(FileNotFoundError, match=r"'icwb2/testing/pku_test\.utf8' not found"):
        train.main(["--smoke", "--out", str(pku / "records"), "--heldout", "2"])


def test_crf_train_save_onto_a_file(pku, capsys):
    """--save FILE -> "is a file, not a folder", before the corpus is read (not after the first seed)."""
    from crf import train

    (pku / "file").write_text("")
    refused(capsys, lambda: train.main(["--smoke", "--save", str(pku / "file")]), f"--save {pku / 'file'} is a file")


# ---- records and checkpoints ------------------------------------------------------------------------


def _train(calls):
    """A tiny run_jobs train function: one epoch of a Dense layer, through the checkpoint."""

    def train(job, checkpoint):
        import keras

        calls.append(job.seed)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        x = np.ones((8, 2), "float32")
        model.fit(x, x[:, :1], epochs=1, verbose=0, initial_epoch=checkpoint.restore(model), callbacks=[checkpoint])
        return {"loss": checkpoint.history["loss"][-1]}, checkpoint.history

    return train


JOBS = [runs.Job("e", 0, {"epochs": 1}, {"metric": "loss"}, "test: 1 epoch")]


def test_a_corrupt_record_names_the_file_and_force_replaces_it(tmp_path):
    """A truncated seed0.json -> SystemExit naming it, "delete it" and "--force", and nothing trained;
    with --force the seed runs and the record is rewritten whole."""
    pytest.importorskip("keras")
    path = runs.result_path(tmp_path, "a", "e", 0)
    path.parent.mkdir(parents=True)
    path.write_text('{"metrics": {"loss": 0.')
    calls = []
    with pytest.raises(SystemExit, match=re.escape(str(path)) + r": not a readable result record .*delete it.*--force"):
        runs.run_jobs("a", JOBS, SimpleNamespace(out=tmp_path, force=False), _train(calls))
    assert calls == []
    (record,) = runs.run_jobs("a", JOBS, SimpleNamespace(out=tmp_path, force=True), _train(calls))
    assert calls == [0] and runs.load_result(path) == record and np.isfinite(record["metrics"]["loss"])


def test_a_folder_where_a_record_goes_is_named_even_with_force(tmp_path):
    """A folder at seed0.json -> SystemExit naming it, before training (not IsADirectoryError after)."""
    path = runs.result_path(tmp_path, "a", "e", 0)
    path.mkdir(parents=True)
    calls = []
    for force in (False, True):
        with pytest.raises(SystemExit, match=re.escape(str(path)) + " is a folder where the record of this seed goes"):
            runs.run_jobs("a", JOBS, SimpleNamespace(out=tmp_path, force=force), _train(calls))
    assert calls == []
    with pytest.raises(runs.RecordError, match=re.escape(str(path)) + " is a folder, not a result record"):
        runs.load_results(tmp_path)


def test_a_corrupt_checkpoint_names_the_file_and_force_restarts_the_seed(tmp_path, capsys):
    """A truncated checkpoint -> SystemExit naming it, saying it is corrupt and that deleting it or
    --force restarts the seed; with --force the seed trains from the start and the record is written."""
    pytest.importorskip("keras")
    checkpoint = runs.checkpoint_path(tmp_path, "a", "e", 0)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 cut short")
    message = re.escape(str(checkpoint)) + r": not a readable checkpoint \(corrupt: .*delete it \(or pass --force\)"
    with pytest.raises(SystemExit, match=message):
        runs.run_jobs("a", JOBS, SimpleNamespace(out=tmp_path, force=False), _train([]))
    runs.run_jobs("a", JOBS, SimpleNamespace(out=tmp_path, force=True), _train([]))
    assert runs.load_result(runs.result_path(tmp_path, "a", "e", 0))["history"]["loss"]
    assert not checkpoint.exists() and "resuming" not in capsys.readouterr().out


def test_a_checkpoint_without_its_state_names_the_file(tmp_path):
    """A readable .npz of the right run but without its training state -> SystemExit naming it as a
    corrupt checkpoint (not a KeyError from NumPy)."""
    import keras

    from utils.callbacks import Checkpoint

    path = tmp_path / "seed0.npz"
    np.savez(path, identity=np.array(json.dumps({}, sort_keys=True)))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(SystemExit, match=re.escape(str(path)) + r": not a readable checkpoint \(corrupt: KeyError"):
        Checkpoint(path, {}).restore(model)


def test_a_corrupt_reference_record_stops_a_train_run_before_it_trains(tmp_path, monkeypatch):
    """A truncated record in results/ -> SystemExit naming it before any seed trains (the run is judged
    against the reference at its end, which would otherwise fail after all the training)."""
    reference = tmp_path / "results"
    monkeypatch.setattr(runs, "REFERENCE", reference)
    bad = runs.result_path(reference, "a", "e", 0)
    bad.parent.mkdir(parents=True)
    bad.write_text("{")
    calls = []
    with pytest.raises(SystemExit, match=re.escape(str(bad)) + r": not a readable result record .*restore it from git"):
        runs.run_jobs("a", JOBS, SimpleNamespace(out=tmp_path / "runs", force=False), _train(calls))
    assert calls == []


# ---- reproduce.py ----------------------------------------------------------------------------------


@pytest.fixture
def reproduce(tmp_path, monkeypatch):
    """reproduce.main with run_article replaced by a stub that records which articles would run."""
    import reproduce as module

    ran = []
    monkeypatch.setattr(module, "run_article", lambda name, *a: ran.append(name) or 0)
    base = ["--only", "crf", "--out", str(tmp_path / "out"), "--report", str(tmp_path / "report.md")]
    return SimpleNamespace(main=lambda *argv: module.main([*base, *argv]), ran=ran, report=tmp_path / "report.md")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-5"], "crf/train.py would refuse its command line (--seed must be 0 or more, got -5)"),
        (["--heldout", "-1"], "crf/train.py would refuse its command line (argument --heldout: must be 0 or more"),
        (["--variant", "nope"], "crf/train.py would refuse its command line (argument --variant: invalid choice"),
        (["--onyl", "vae"], "crf/train.py would refuse its command line (unrecognized arguments: --onyl vae)"),
        (["--only", "nope"], "argument --only: invalid choice: 'nope'"),
        (["--report-only", "--seeds", "2"], "--seeds 2: not an option of reproduce.py, and --report-only runs no"),
    ],
    ids=["seed-negative", "heldout-negative", "unknown-variant", "misspelt-option", "unknown-article", "extra-unused"],
)
def test_reproduce_checks_every_command_line_before_running_any(reproduce, capsys, argv, message):
    """A bad option for a train.py (or one that nothing would use) -> exit 2 naming the script and the
    reason, nothing run, no report written."""
    refused(capsys, lambda: reproduce.main("--smoke", *argv), message)
    assert reproduce.ran == [] and not reproduce.report.exists()


def test_reproduce_control_runs_a_good_command_line(reproduce):
    """Control for the test above: --seeds 1 passes the checks; crf 'runs' and the report is written."""
    reproduce.main("--smoke", "--seeds", "1")
    assert reproduce.ran == ["crf"] and "- crf: incomplete" in reproduce.report.read_text(encoding="utf-8")


@pytest.mark.parametrize("where", ["reference", "out"])
def test_reproduce_with_a_corrupt_record_stops_before_training(reproduce, tmp_path, capsys, where):
    """A truncated record in results/ (--reference-dir) or runs/results/ (--out) -> exit naming the
    file and the fix, before any article runs and without a report."""
    folder = tmp_path / where
    bad = runs.result_path(folder, "crf", "article-pku", 0)
    bad.parent.mkdir(parents=True)
    bad.write_text('{"article": "crf",')
    argv = ["--smoke", "--reference-dir", str(folder if where == "reference" else runs.REFERENCE)]
    with pytest.raises(SystemExit, match=re.escape(str(bad)) + r": not a readable result record .*delete it"):
        reproduce.main(*argv, *(["--out", str(folder)] if where == "out" else []))
    assert reproduce.ran == [] and not reproduce.report.exists()


def test_reproduce_force_gets_past_a_corrupt_record_of_its_own(reproduce, tmp_path, monkeypatch):
    """With --force, a corrupt record in the run's folder is left to train.py (which replaces it):
    the article runs (the stub rewrites the record as train.py would) and the report is written."""
    import reproduce as module

    bad = runs.result_path(tmp_path / "out", "crf", "article-pku-smoke", 0)
    bad.parent.mkdir(parents=True)
    bad.write_text("{")
    good = {"article": "crf", "experiment": "article-pku-smoke", "seed": 0, "metrics": {}, "config": {}}
    monkeypatch.setattr(module, "run_article", lambda name, *a: runs.write_json_atomic(bad, good) and 0)
    reproduce.main("--smoke", "--force")
    assert runs.load_result(bad) == good and reproduce.report.is_file()


def test_reproduce_report_onto_a_folder_or_a_missing_reference(reproduce, tmp_path, capsys):
    """--report FOLDER -> "is a folder"; --reference-dir that does not exist -> "is not a folder" (not
    a report whose reference column is silently empty); both before anything runs."""
    refused(capsys, lambda: reproduce.main("--smoke", "--report", str(tmp_path)), f"--report {tmp_path} is a folder")
    refused(capsys, lambda: reproduce.main("--smoke", "--reference-dir", str(tmp_path / "no")), "is not a folder")
    assert reproduce.ran == []


# ---- crf/segment.py and crf/evaluate.py -------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A tiny untrained bigram tagger saved as crf/train.py saves one; returns (folder, Segmenter)."""
    from crf.segment import Segmenter, build_vocab
    from crf.train import build_model

    vocab = build_vocab([list("我爱北京天安门") * 2], min_count=2, with_bigrams=True)
    segmenter = Segmenter(build_model(vocab, "strong")[2], vocab)
    folder = tmp_path_factory.mktemp("models") / "seg"
    segmenter.save(folder)
    return folder, segmenter


@pytest.fixture
def model(segmenter, tmp_path):
    """A fresh copy of the tiny model folder, to damage."""
    import shutil

    return shutil.copytree(segmenter[0], tmp_path / "model")


def segment(*argv):
    from crf.segment import main

    main([str(a) for a in argv])


def test_segment_options_in_any_order(segmenter, capsys):
    """MODEL --batch-size 1 TEXT TEXT and MODEL TEXT --batch-size 1 TEXT -> the segmenter's own words for
    each text (not "unrecognized arguments")."""
    folder, seg = segmenter
    expected = "".join(" ".join(words) + "\n" for words in seg.cut_lines(["我爱北京", "天安门"]))
    segment(folder, "--batch-size", "1", "我爱北京", "天安门")
    assert capsys.readouterr().out == expected
    segment(folder, "我爱北京", "--batch-size", "1", "天安门")
    assert capsys.readouterr().out == expected


def test_segment_text_and_input_together(segmenter, tmp_path, capsys):
    """Text arguments and --input -> exit 2 naming both inputs (the text was silently ignored)."""
    (tmp_path / "in.txt").write_text("北京\n", encoding="utf-8")
    refused(capsys, lambda: segment(segmenter[0], "我爱", "--input", tmp_path / "in.txt"), "two inputs: give one")


def test_segment_text_argument_not_utf8(segmenter, tmp_path, capsys):
    """A text argument with a byte that is not UTF-8 (argv's surrogate escape) -> exit 2 naming the
    argument and the byte; no --output file (it crashed with UnicodeEncodeError)."""
    out = tmp_path / "out.txt"
    bad = os.fsdecode(b"\xff") + "北京"
    refused(
        capsys,
        lambda: segment(segmenter[0], "我爱", bad, "--output", out),
        r"text argument 2 is not valid UTF-8 (bytes b'\xff' at character 1)",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "--input {p}: no such file"),
        (lambda d: d, "--input {p} is a folder, not a file"),
        (
            lambda d: (d / "gbk.txt").write_bytes("北京\n".encode() + "天".encode("gbk") + b"\n") and d / "gbk.txt",
            "{p}:2: not valid UTF-8",
        ),
    ],
    ids=["missing", "folder", "not-utf8-line-2"],
)
def test_segment_bad_input_file(segmenter, tmp_path, capsys, make, message):
    """--input missing / a folder / not UTF-8 on line 2 -> exit 2 naming the file (and line)."""
    path = make(tmp_path)
    refused(capsys, lambda: segment(segmenter[0], "--input", path), message.format(p=path))


def test_segment_empty_input_gives_empty_output(segmenter, tmp_path):
    """An empty --input file -> an empty --output file (nothing in, nothing out), not an error."""
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "out.txt").write_text("old", encoding="utf-8")
    segment(segmenter[0], "--input", tmp_path / "empty.txt", "--output", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_bytes() == b""


@pytest.mark.parametrize(
    "where, message", [("missing/out.txt", "the folder {d}/missing does not exist"), (".", "is a folder")]
)
def test_segment_bad_output(segmenter, tmp_path, capsys, where, message):
    """--output in a missing folder / onto a folder -> exit 2 naming it, before the model loads (the
    missing folder was created silently; the folder gave IsADirectoryError after segmenting)."""
    refused(capsys, lambda: segment(segmenter[0], "我爱", "--output", tmp_path / where), message.format(d=tmp_path))
    assert not (tmp_path / "missing").exists()


def test_segment_batch_size_zero_after_the_text(segmenter, capsys):
    """--batch-size 0 after the text -> its own message (it said "unrecognized arguments")."""
    refused(capsys, lambda: segment(segmenter[0], "我", "--batch-size", "0"), "--batch-size must be at least 1, got 0")


CORRUPT_MODEL_FILES = [
    ("tagger.keras", lambda p: p.write_bytes(p.read_bytes()[:2000]), "not a readable Keras model: the file is corrupt"),
    ("vocab.json", lambda p: p.write_text('{"chars": {"我": 2,', encoding="utf-8"), "corrupt, not readable JSON"),
    ("vocab.json", lambda p: p.write_text('["我", "爱"]', encoding="utf-8"), "not a segmenter's vocabulary"),
    (
        "vocab.json",
        lambda p: p.write_text(json.dumps({"chars": {"我": 2, "爱": 99999}, "bigrams": {"我爱": 2}}), encoding="utf-8"),
        "does not fit",
    ),
    (
        "vocab.json",
        lambda p: p.write_text(json.dumps({"chars": {"我": 2}, "bigrams": None}), encoding="utf-8"),
        "the model reads 2 input(s), the vocabulary makes 1",
    ),
]
CORRUPT_IDS = ["tagger-truncated", "vocab-truncated", "vocab-a-list", "vocab-ids-past-the-table", "vocab-no-bigrams"]


def _edit_vocab(change):
    """A damage function: the model folder's vocab.json rewritten with ``change(vocab)``."""

    def damage(path):
        vocab = json.loads(path.read_text(encoding="utf-8"))
        change(vocab)
        path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")

    return damage


DAMAGED_VOCABULARIES = [
    (_edit_vocab(lambda v: v["chars"].update(爱=v["chars"]["我"])), r'"chars" entries .* have the same id, \d+'),
    (_edit_vocab(lambda v: v["bigrams"].update(爱北=v["bigrams"]["我爱"])), r'"bigrams" entries .* have the same id'),
    (_edit_vocab(lambda v: v["chars"].update({"北京": 3})), "\"chars\" entry '北京' is not one character"),
    (_edit_vocab(lambda v: v["chars"].update({"": 3})), "\"chars\" entry '' is not one character"),
    (_edit_vocab(lambda v: v["bigrams"].update({"北": 3})), "\"bigrams\" entry '北' is not two characters"),
    (_edit_vocab(lambda v: v["bigrams"].update({"北京天": 3})), "\"bigrams\" entry '北京天' is not two characters"),
    (
        lambda p: p.write_text('{"chars": {"我": 2, "我": 3}, "bigrams": null}', encoding="utf-8"),
        "the key '我' appears twice",
    ),
    (lambda p: p.write_bytes(b"[" * 200000 + b"]" * 200000), r"corrupt, not readable JSON \(nested too deeply"),
]


@pytest.mark.parametrize(
    "damage, message",
    DAMAGED_VOCABULARIES,
    ids=[
        "two-chars-one-id",
        "two-bigrams-one-id",
        "two-character-char",
        "empty-char",
        "one-character-bigram",
        "three-character-bigram",
        "a-key-twice",
        "nested-200000-deep",
    ],
)
def test_segment_damaged_vocabulary(model, capsys, damage, message):
    """A vocab.json with two units under one id, a "character" of 0 or 2 characters, a bigram of 1 or
    3, a key written twice, or JSON nested 200,000 deep -> exit 2 naming the file and the entry, saying
    the folder is damaged (train again) (before: segmented with the damaged table, exit 0; the deep
    one ended in a RecursionError traceback). The undamaged folder segments (the control)."""
    segment(model, "我爱")
    assert capsys.readouterr().out.strip()
    damage(model / "vocab.json")
    err = refused(capsys, lambda: segment(model, "我爱"), f"{model / 'vocab.json'}: ", "train the model again")
    assert re.search(message, err), err


def test_segment_vocabulary_with_a_byte_order_mark(model, capsys):
    """A vocab.json starting with a UTF-8 BOM (an editor's save) -> the same words as without it
    (before: "corrupt, not readable JSON")."""
    segment(model, "我爱北京天安门")
    expected = capsys.readouterr().out
    path = model / "vocab.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    segment(model, "我爱北京天安门")
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("name, damage, message", CORRUPT_MODEL_FILES, ids=CORRUPT_IDS)
def test_segment_corrupt_model_file(model, capsys, name, damage, message):
    """A truncated tagger.keras or a bad vocab.json -> exit 2 naming the file, saying what is wrong
    (corrupt, never "not found") and to train the model again."""
    damage(model / name)
    err = refused(capsys, lambda: segment(model, "我爱"), f"{model / name}", message, "train the model again")
    assert "not found" not in err


def test_segment_corrupt_ensemble_member(segmenter, model, capsys):
    """--ensemble with a member whose tagger.keras is truncated -> exit 2 naming that member's file."""
    (model / "tagger.keras").write_bytes(b"PK\x03\x04")
    refused(capsys, lambda: segment(segmenter[0], "我爱", "--ensemble", model), f"{model / 'tagger.keras'}: not a")


def test_segment_text_after_ensemble(segmenter, capsys):
    """MODEL --ensemble MODEL2 TEXT -> exit 2 saying --ensemble took the text as a model folder."""
    refused(capsys, lambda: segment(segmenter[0], "--ensemble", segmenter[0], "我爱"), "--ensemble 我爱: no such model")


def test_evaluate_corrupt_model_and_bad_name(model, capsys):
    """crf/evaluate.py with a truncated tagger.keras -> exit 2 naming it (before the test set is read);
    --name with a path -> exit 2 (its record would land outside the records layout)."""
    from crf.evaluate import main

    (model / "tagger.keras").write_bytes(b"not a zip")
    refused(capsys, lambda: main([str(model)]), f"{model / 'tagger.keras'}: not a readable Keras model")
    refused(capsys, lambda: main([str(model), "--name", "a/b"]), "--name 'a/b' must be a plain name")


# ---- poetry/generate.py -----------------------------------------------------------------------------


@pytest.fixture
def poet(tmp_path):
    """A tiny untrained generator (z -> 10 positions x 5 characters) saved as poetry/train.py does."""
    import keras

    from poetry.generate import Poet

    z = keras.Input((4,))
    logits = keras.layers.Reshape((10, 5))(keras.layers.Dense(50)(z))
    Poet(keras.Model(z, logits), ["<unk>", "山", "水", "风", "月"]).save(tmp_path / "poet")
    return tmp_path / "poet"


def generate(*argv):
    from poetry.generate import main

    main([str(a) for a in argv])


def test_generate_options_in_any_order(poet, capsys):
    """-n 2 MODEL --seed 3 -> the same couplets as MODEL -n 2 --seed 3."""
    generate(poet, "-n", "2", "--seed", "3")
    first = capsys.readouterr().out
    generate("-n", "2", poet, "--seed", "3")
    assert capsys.readouterr().out == first and len(first.splitlines()) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-n", "0"], "the number of poems must be 1 or more, got 0"),
        (["-n", "-3"], "the number of poems must be 1 or more, got -3"),
        (["--seed", "-1"], "--seed must be 0 or more, got -1"),
        (["--temperature", "1", "--top-k", "0"], "top-k must be 1 or more, got 0"),
    ],
    ids=["n-0", "n-negative", "seed-negative", "top-k-0"],
)
def test_generate_bad_counts(poet, capsys, argv, message):
    """-n 0 / negative counts -> exit 2 with the option's message."""
    refused(capsys, lambda: generate(poet, *argv), message)


@pytest.mark.parametrize(
    "name, damage, message",
    [
        (
            "generator.keras",
            lambda p: p.write_bytes(p.read_bytes()[:1000]),
            "not a readable Keras model: the file is corrupt",
        ),
        ("vocab.json", lambda p: p.write_text('["<unk>", "山",', encoding="utf-8"), "corrupt, not readable JSON"),
        ("vocab.json", lambda p: p.write_text('{"山": 1}', encoding="utf-8"), "not a poem generator's vocabulary"),
    ],
    ids=["generator-truncated", "vocab-truncated", "vocab-not-a-list"],
)
def test_generate_corrupt_model_file(poet, capsys, name, damage, message):
    """A truncated generator.keras or a bad vocab.json -> exit 2 naming the file, saying it is corrupt
    (never "not found") and to train the model again."""
    damage(poet / name)
    err = refused(capsys, lambda: generate(poet), f"{poet / name}", message, "train the model again")
    assert "not found" not in err


@pytest.mark.parametrize(
    "vocab, message",
    [
        (["<unk>", "", "水", "风", "月"], "entry 1 ('') is not one character"),
        (["<unk>", "山", "水水", "风", "月"], "entry 2 ('水水') is not one character"),
        (["<unk>", "山", "水", "山", "月"], "entries 1 and 3 are both '山'"),
        (["山", "<unk>", "水", "风", "月"], "entry 0 is '山', not '<unk>'"),
    ],
    ids=["empty-entry", "two-character-entry", "a-character-twice", "unk-not-first"],
)
def test_generate_damaged_vocabulary(poet, capsys, vocab, message):
    """A vocab.json (of the generator's size) with an empty or two-character entry, a character twice,
    or <unk> moved -> exit 2 naming the file and the entry, saying the folder is damaged (before: poems
    with missing or doubled characters, exit 0). The undamaged folder writes poems (the control)."""
    generate(poet, "-n", "1")
    assert len(capsys.readouterr().out.strip()) == 12
    (poet / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    refused(capsys, lambda: generate(poet), f"{poet / 'vocab.json'}: {message}: the model folder is damaged", "train")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[" * 200000 + b"]" * 200000, "corrupt, not readable JSON (nested too deeply to read)"),
        (b"[" + b"9" * 5000 + b"]", "corrupt, not readable JSON (ValueError: Exceeds the limit (4300 digits)"),
    ],
    ids=["nested-200000-deep", "5000-digit-integer"],
)
def test_generate_vocabulary_json_that_python_cannot_parse(poet, capsys, content, message):
    """vocab.json nested 200,000 deep or holding a 5000-digit integer -> exit 2 naming the file (before:
    a RecursionError traceback; the integer's message advised sys.set_int_max_str_digits)."""
    (poet / "vocab.json").write_bytes(content)
    err = refused(capsys, lambda: generate(poet), f"{poet / 'vocab.json'}: {message}", "train the model again")
    assert "set_int_max_str_digits" not in err


def test_generate_vocabulary_with_a_byte_order_mark(poet, capsys):
    """A vocab.json starting with a UTF-8 BOM -> the same poems as without it (before: "corrupt")."""
    generate(poet, "-n", "3")
    expected = capsys.readouterr().out
    (poet / "vocab.json").write_bytes(b"\xef\xbb\xbf" + (poet / "vocab.json").read_bytes())
    generate(poet, "-n", "3")
    assert capsys.readouterr().out == expected


def test_generate_any_number_of_poems_streams_in_bounded_chunks(poet):
    """-n 99999999999999 (before: numpy _ArrayMemoryError for 2.84 PiB, drawing every z at once) ->
    poems made 250 at a time: the first 600 of a 10**14-poem stream come at once and are the poems
    that write(600) gives (the same z and the same order)."""
    import itertools

    from poetry.generate import Poet

    loaded = Poet.load(poet)
    assert list(itertools.islice(loaded.poems(10**14, seed=2), 600)) == loaded.write(600, seed=2)


def test_generate_tiny_temperature_warns_nothing(poet):
    """--temperature 1e-320 (the division overflows) -> the greedy poems and no RuntimeWarning (before:
    "overflow encountered in divide"); the control: that division does overflow in NumPy."""
    import warnings

    from poetry.generate import Poet

    loaded = Poet.load(poet)
    with pytest.warns(RuntimeWarning, match="overflow"):
        np.float64(-1.0) / 1e-320
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # (Keras on PyTorch may add a DeprecationWarning of its own)
        assert loaded.write(20, seed=1, temperature=1e-320) == loaded.write(20, seed=1)


def test_a_train_script_meeting_a_corrupt_dataset_ends_with_its_message_not_a_traceback(tmp_path):
    """Run as a command, a train.py that finds a damaged dataset file stops with the loader's message
    (the file and what to do) and exit status 1; no traceback through the loader."""
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.npz").write_bytes(b"PK\x03\x04 truncated")
    env = {**os.environ, "KEXUE_DATA": str(tmp_path), "KERAS_HOME": str(tmp_path / "keras-home")}
    done = subprocess.run(
        [sys.executable, "vae/train.py", "--smoke", "--out", str(tmp_path / "records")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "DatasetError: " in done.stderr and str(tmp_path / "mnist" / "mnist.npz") in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("cli, keras_file", [("segment", "tagger.keras"), ("generate", "generator.keras")])
@pytest.mark.parametrize(
    "argument, message",
    [
        (lambda m: m / "vocab.json", "{m}/vocab.json is a file, not a model folder: give the folder that holds"),
        (lambda m: m, "{m}/{keras_file} is a folder, not the model's file: the model folder is damaged"),
        (lambda m: "", "argument model: an empty model folder"),
    ],
    ids=["a-file", "keras-file-a-folder", "empty-argument"],
)
def test_model_argument_that_is_not_a_model_folder(request, capsys, cli, keras_file, argument, message):
    """segment.py and generate.py given a file as the model folder, a folder where the .keras file
    belongs, an empty argument -> exit 2 saying so (before: ".../vocab.json/tagger.keras not found",
    "not found" for files that are there, and the current folder used)."""
    folder = request.getfixturevalue("model" if cli == "segment" else "poet")
    if "folder, not the model" in message:
        (folder / keras_file).unlink()
        (folder / keras_file).mkdir()
    run = (lambda: segment(argument(folder), "我爱")) if cli == "segment" else (lambda: generate(argument(folder)))
    err = refused(capsys, run, message.format(m=folder, keras_file=keras_file))
    assert "not found" not in err
