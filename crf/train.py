"""
Title: Chinese word segmentation with a CNN-CRF (简明条件随机场CRF介绍（附带纯Keras实现）, kexue.fm/archives/5542)
Description: the article's recipe on the SIGHAN 2005 bakeoff, scored like the bakeoff, next to jieba.

The article (and its word_seg.py) tags each character s/b/m/e, embeds characters seen at least twice,
runs three 3-wide convolutions, scores the 4 tags per character and trains a CRF on top; "epochs" are
500 batches of 128 sentences, 10 of them. It printed no numbers. We train the same recipe (variant
``article``) and stronger variants, then score the official test set with the bakeoff's P/R/F and
OOV/IV recall, plus the article's own word-set metric on held-out training sentences, with jieba
scored the same way on the same text.

Data: ``--corpus pku`` (default) or ``msr`` from the icwb2-data layout (utils/data.py). On the
project's offline machines the PKU training set is a reconstruction from the People's Daily 1998-01
corpus, not the bakeoff's file; every result here says so.

Run:  python crf/train.py                       (article recipe, 3 seeds, ~25 min a seed on 2 CPU cores)
      python crf/train.py --variant bmes        (+ BMES rules and start/end scores)
      python crf/train.py --variant strong      (our best: bigrams, wider dilated residual CNN, early stopping)
      python crf/train.py --quick               (a few minutes: 2 x 50 steps, 1 seed)
"""

import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # utils/ sits one folder up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from crf.layers import CRF, ZeroMasked, allowed_transitions  # noqa: E402
from crf.scoring import bakeoff_score, word_set_score  # noqa: E402
from crf.segment import UNKNOWN, Segmenter, build_vocab, features, pad, word_tags  # noqa: E402
from utils import cli, data, runs  # noqa: E402
from utils.callbacks import EpochTimer  # noqa: E402

ARTICLE = "crf"
BMES = allowed_transitions("bmes", "sbme")
VARIANTS = {
    # The article's model: Embedding 128 -> 3 x Conv1D(128, 3, relu) -> Dense(4) -> CRF with a
    # transition matrix only; its decoder only lets a sentence start with s/b and end with s/e.
    "article": {"bigrams": False, "width": 128, "dilations": [1, 1, 1], "dropout": 0.0, "boundary": False,
                "constraints": "start_end"},
    # The same network with the full BMES rules (m and e only after b or m, ...) in training and
    # decoding, and learned start/end scores.
    "bmes": {"bigrams": False, "width": 128, "dilations": [1, 1, 1], "dropout": 0.0, "boundary": True,
             "constraints": "bmes"},
    # Stronger: character-bigram embeddings next to the characters (the usual large gain in Chinese
    # segmentation), five wider convolutions whose dilations see 2 x (1+1+2+4+1) + 1 = 19 characters,
    # residual connections, dropout, and the BMES CRF; batches of similar lengths (``batches``), which
    # makes its steps about 5x cheaper than padding corpus-order batches; padded steps zeroed
    # (``ZeroMasked``), so a sentence is tagged the same in any batch. Its 15M parameters (most in
    # the bigram table) memorise PKU's 19k sentences within 2 epochs, so it holds out 1000 sentences
    # (not 5000: a quarter of PKU's training text) and keeps the epoch with the best held-out F1,
    # stopping after 2 epochs without a better one.
    "strong": {"bigrams": True, "width": 256, "dilations": [1, 1, 2, 4, 1], "dropout": 0.2, "boundary": True,
               "constraints": "bmes", "bucket": True, "zero_padding": True, "heldout": 1000,
               "early_stopping": {"monitor": "heldout_f1", "patience": 2}},
    # ``strong`` with a third of the bigram ids replaced by "unknown" in training: its bigram table
    # helps known words and not new ones (OOV recall no better than the article's), and this makes
    # the characters carry more of the decision.
    "strong_bd": {"bigrams": True, "width": 256, "dilations": [1, 1, 2, 4, 1], "dropout": 0.2, "boundary": True,
                  "constraints": "bmes", "bucket": True, "zero_padding": True, "heldout": 1000,
                  "early_stopping": {"monitor": "heldout_f1", "patience": 2}, "bigram_dropout": 0.33},
}
MODES = {
    "full": {"epochs": 10, "steps_per_epoch": 500},
    "quick": {"epochs": 2, "steps_per_epoch": 50},
}
BATCH_SIZE = 128
HELDOUT = 5000  # the article keeps the last 5000 shuffled training sentences for its metric
HEADLINE = {
    "metric": "test_f1",
    "label": "PKU test F1 (bakeoff scoring; training set reconstructed from People's Daily 1998-01)",
    "blog": None,
    "blog_source": "kexue.fm/archives/5542 published no score; the article's own code run on these "
                   "machines (Keras 2, 10 x 500 steps, same data) reached F1 0.903, OOV recall 0.50",
}


"""## 1. Data: sentences, tags, vocabulary"""


def load_corpus(corpus):
    """Training sentences, the test input, its gold segmentation and the training-word list."""
    return (data.icwb2(corpus, "train"), data.icwb2(corpus, "test"), data.icwb2(corpus, "gold"),
            data.icwb2(corpus, "words"))


def split(sentences, seed, heldout):
    """Shuffle (seeded) and keep the last ``heldout`` sentences aside, as the article does."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    return shuffled[: len(shuffled) - heldout], shuffled[len(shuffled) - heldout :]


def batches(sentences, vocab, start_step=0, bucket=False, seed=0, bigram_dropout=0.0):
    """Endless (char ids, tags) batches of 128 sentences, each padded to its longest sentence (no
    maximum length); ``start_step`` resumes mid-run at exactly the batch it would have reached.

    Without ``bucket``: corpus order, as the article's generator. PKU sentences run from 1 to 1019
    characters, so such a batch is on average 5.6x longer than its mean sentence, and most of the
    convolutions' work is padding. With ``bucket``: each pass over the data is reshuffled (seeded by
    ``seed`` and the pass), cut into pools of 50 batches, each pool sorted by length and cut into
    batches, and the batches of the pass shuffled: the same sentences per pass, about 1.1x padding.
    ``bigram_dropout``: the share of (real) bigram ids replaced by "unknown", seeded by ``seed`` and
    the step, so a model cannot lean on the bigram table alone and learns unseen bigrams' case.
    """
    n = -(-len(sentences) // BATCH_SIZE)
    step, order, order_pass = start_step, None, None
    while True:
        if bucket and order_pass != step // n:
            order_pass = step // n
            order = _bucketed_order(sentences, np.random.default_rng([seed, order_pass]))
        index = step % n
        chunk = ([sentences[i] for i in order[index]] if bucket
                 else sentences[index * BATCH_SIZE : (index + 1) * BATCH_SIZE])
        x = features(["".join(words) for words in chunk], vocab)
        chars = x[0] if isinstance(x, list) else x
        if bigram_dropout and isinstance(x, list):
            drop = np.random.default_rng([seed, step, 1]).random(x[1].shape) < bigram_dropout
            x[1] = np.where(drop & (x[1] > 0), UNKNOWN, x[1]).astype(x[1].dtype)
        yield (tuple(x) if isinstance(x, list) else x), pad([word_tags(words) for words in chunk], length=chars.shape[1])
        step += 1


def _bucketed_order(sentences, rng, pool=50):
    """One pass over ``sentences`` as a list of index batches of similar lengths, in random order."""
    lengths = np.array([sum(len(w) for w in words) for words in sentences])
    order = rng.permutation(len(sentences))
    out = []
    for start in range(0, len(order), pool * BATCH_SIZE):
        chunk = order[start : start + pool * BATCH_SIZE]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i : i + BATCH_SIZE] for i in range(0, len(chunk), BATCH_SIZE)]
    return [out[i] for i in rng.permutation(len(out))]


"""## 2. Model: CNN emissions, CRF on top"""


def build_model(vocab, variant):
    """The training model (emissions for ``crf.loss``), the CRF layer and the tagger (Viterbi tags)."""
    cfg = VARIANTS[variant]
    constraints = BMES if cfg["constraints"] == "bmes" else {
        "allowed_start": BMES["allowed_start"], "allowed_end": BMES["allowed_end"]}
    chars = keras.Input((None,), dtype="int32", name="chars")
    inputs = [chars]
    x = keras.layers.Embedding(len(vocab["chars"]) + 2, 128, name="embedding")(chars)
    if cfg["bigrams"]:
        pairs = keras.Input((None,), dtype="int32", name="bigrams")
        inputs.append(pairs)
        x = keras.layers.Concatenate()([x, keras.layers.Embedding(len(vocab["bigrams"]) + 2, 128, name="bigram_embedding")(pairs)])
    # The article's convolutions see the padding's embedding past each sentence's end, so a
    # sentence's tags depend on its batch; the stronger variant zeroes padded steps before each one.
    edge = (lambda h: ZeroMasked()(h, mask=chars)) if cfg.get("zero_padding") else (lambda h: h)
    x = edge(x)
    if cfg["dropout"]:
        x = keras.layers.Dropout(cfg["dropout"])(x)
    for i, dilation in enumerate(cfg["dilations"]):
        h = keras.layers.Conv1D(cfg["width"], 3, padding="same", dilation_rate=dilation, activation="relu", name=f"conv{i}")(x)
        # Residual connections only in the stronger variant (the article stacks plain convolutions).
        x = edge(keras.layers.Add()([x, h]) if cfg["dropout"] and x.shape[-1] == h.shape[-1] else h)
        if cfg["dropout"]:
            x = keras.layers.Dropout(cfg["dropout"])(x)
    emissions = keras.layers.Dense(4, name="emissions")(x)
    crf = CRF(4, boundary=cfg["boundary"], **constraints, name="crf")
    # The convolutions drop Keras masks, so the CRF gets the char ids as its mask: id 0 is padding.
    inputs = inputs[0] if len(inputs) == 1 else inputs
    model = keras.Model(inputs, crf(emissions, mask=chars), name=f"cws_{variant}")
    tagger = keras.Model(inputs, crf(emissions, mask=chars, decode=True), name=f"tagger_{variant}")
    return model, crf, tagger


"""## 3. Training, resumable epoch by epoch"""


class Checkpoint(keras.callbacks.Callback):
    """After each epoch, one file holds everything needed to go on: the model's variables (dropout's
    random state included), the optimizer's, the logs so far, the config and a fingerprint of the
    vocabulary. It is written to a temporary file and renamed, so a killed run restarts at the next
    epoch, with the same batches, from a consistent state.

    With ``monitor`` (a log key, higher is better), the model's variables at the best epoch so far
    are kept in ``best.npz`` beside it, and training stops once ``patience`` epochs have passed
    without a new best (early stopping; ``restore_best`` loads those variables for scoring)."""

    def __init__(self, path, config, vocab, monitor=None, patience=None):
        super().__init__()
        self.path = Path(path)
        self.best_path = self.path.with_name("best.npz")
        self.identity = json.dumps({"config": config, "vocab": _fingerprint(vocab)}, sort_keys=True)
        self.monitor, self.patience = monitor, patience
        self.history, self.stopped = {}, False

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        variables = {f"model_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self.model.variables)}
        best = self._best_epoch()
        if best is not None and self.patience is not None and epoch + 1 - best >= self.patience:
            self.stopped = self.model.stop_training = True
            print(f"    stopping: no better {self.monitor} for {self.patience} epochs; the best was epoch {best}", flush=True)
        state = json.dumps({"epochs_done": epoch + 1, "history": self.history, "stopped": self.stopped})
        optimizer = {f"optimizer_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self.model.optimizer.variables)}
        _save_npz(self.path, identity=np.array(self.identity), state=np.array(state), **variables, **optimizer)
        # Written after the checkpoint: if a kill falls in between, restore_best finds the best
        # epoch's weights in the checkpoint itself (the best is then its last epoch).
        if best == epoch + 1:
            _save_npz(self.best_path, identity=np.array(self.identity), epoch=np.array(best), **variables)

    def _best_epoch(self):
        """The epoch (1-based) with the highest ``monitor`` so far, or None without one."""
        values = self.history.get(self.monitor) if self.monitor else None
        return int(np.argmax(values)) + 1 if values else None

    def restore(self, model):
        """Epochs already done (0 if no checkpoint); loads the model's and optimizer's variables."""
        if not self.path.is_file():
            return 0
        with np.load(self.path) as saved:
            if str(saved["identity"]) != self.identity:
                raise SystemExit(f"{self.path} is from another config or vocabulary; pass --force to start over")
            state = json.loads(str(saved["state"]))
            model.optimizer.build(model.trainable_variables)
            for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
                for i, variable in enumerate(variables):
                    variable.assign(saved[f"{prefix}_{i}"])
        self.history, self.stopped = state["history"], state.get("stopped", False)
        best = self._best_epoch()
        if best == state["epochs_done"] and self._saved_best() != best:  # killed before best.npz was written
            variables = {f"model_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
            _save_npz(self.best_path, identity=np.array(self.identity), epoch=np.array(best), **variables)
        return state["epochs_done"]

    def _saved_best(self):
        if not self.best_path.is_file():
            return None
        with np.load(self.best_path) as saved:
            return int(saved["epoch"]) if str(saved["identity"]) == self.identity else None

    def restore_best(self, model):
        """Load the best epoch's variables (with ``monitor``); returns that epoch (1-based)."""
        best = self._best_epoch()
        for path in (self.best_path, self.path):
            if not path.is_file():
                continue
            with np.load(path) as saved:
                if str(saved["identity"]) != self.identity:
                    raise SystemExit(f"{path} is from another config or vocabulary; pass --force to start over")
                epoch = int(saved["epoch"]) if "epoch" in saved else json.loads(str(saved["state"]))["epochs_done"]
                if epoch == best:
                    for i, variable in enumerate(model.variables):
                        variable.assign(saved[f"model_{i}"])
                    return best
        raise SystemExit(f"the weights of the best epoch ({best}) are in neither {self.best_path} nor {self.path}; "
                         "pass --force to train again")


def _save_npz(path, **arrays):
    """Write arrays to ``path`` atomically (utils.runs.write_bytes_atomic)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    runs.write_bytes_atomic(path, buffer.getvalue())


def _fingerprint(vocab):
    return hashlib.sha256(json.dumps(vocab, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class HeldOutMetric(keras.callbacks.Callback):
    """The article's per-epoch report, its word-set metric on the held-out sentences, and their
    bakeoff F1 (what early stopping watches)."""

    def __init__(self, segmenter, heldout):
        super().__init__()
        self.segmenter, self.heldout = segmenter, heldout

    def on_epoch_end(self, epoch, logs=None):
        if not self.heldout:
            return
        predicted = self.segmenter.cut_lines(["".join(words) for words in self.heldout])
        logs["heldout_word_set"] = word_set_score(self.heldout, predicted)
        logs["heldout_f1"] = bakeoff_score(self.heldout, predicted, set())["f1"]
        print(f"    epoch {epoch + 1}: loss {logs['loss']:.3f}, held-out word-set score {logs['heldout_word_set']:.4f}, "
              f"held-out F1 {logs['heldout_f1']:.4f}", flush=True)


"""## 4. Evaluation: bakeoff scores on the official test set, and speed"""


def evaluate(cut_lines, test, gold, training_words):
    """Segment the test input with ``cut_lines`` and score it; adds characters per second (after a
    warm-up call, so compiling the graph is not counted)."""
    cut_lines(test)  # warm-up on the same text: every batch shape is compiled before the clock starts
    started = time.perf_counter()
    predicted = cut_lines(test)
    seconds = time.perf_counter() - started
    scores = bakeoff_score(gold, predicted, training_words)
    scores["chars_per_s"] = sum(len(line) for line in test) / seconds
    return scores


def jieba_cut_lines(lines):
    import jieba

    return [[w for w in jieba.lcut(line) if w.strip()] for line in lines]


def jieba_scores(args, corpus, test, gold, training_words):
    """jieba (default mode) on the same test text, scored the same way; recorded once per corpus."""
    import jieba

    experiment = f"jieba-{corpus}"
    path = runs.result_path(args.out, ARTICLE, experiment, 0)
    if runs.load_result(path) and not args.force:
        return runs.load_result(path)["metrics"]
    jieba.setLogLevel(60)
    jieba.initialize()  # loads its dictionary: not counted in the speed
    started = time.time()
    scores = evaluate(jieba_cut_lines, test, gold, training_words)
    runs.save_result(args.out, ARTICLE, experiment, 0, metrics=scores,
                     config={"mode": "reference", "tool": f"jieba {jieba.__version__} lcut (default mode)", "corpus": corpus},
                     headline={**HEADLINE, "metric": "f1", "label": f"jieba default mode (a reference, not ours): {corpus.upper()} test F1"},
                     started=started)
    return scores


"""## 5. One seed of one variant"""


def run_seed(variant, seed, args, mode, corpus_data):
    train_all, test, gold, training_words = corpus_data
    cfg = MODES[mode]
    epochs = args.epochs or cfg["epochs"]
    heldout_size = args.heldout if args.heldout is not None else VARIANTS[variant].get("heldout", HELDOUT)
    stopping = VARIANTS[variant].get("early_stopping") or {}
    experiment = f"{variant}-{args.corpus}" + ("-quick" if mode == "quick" else "")
    config = {"mode": mode, "variant": variant, **VARIANTS[variant], "corpus": args.corpus, "epochs": epochs,
              "steps_per_epoch": cfg["steps_per_epoch"], "batch_size": BATCH_SIZE, "optimizer": "adam",
              "heldout": heldout_size, "min_count": 2}
    path = runs.result_path(args.out, ARTICLE, experiment, seed)
    done = runs.load_result(path)
    if done is not None and not args.force:
        if done["config"] != config or done["backend"] != keras.backend.backend():
            raise SystemExit(f"{path} was made with another setup; pass --force to replace it, or --out elsewhere")
        print(f"  {experiment} seed {seed}: done already ({path})")
        return done

    started = time.time()
    runs.set_seed(seed)
    train, heldout = split(train_all, seed, heldout_size)
    vocab = build_vocab(train, min_count=2, with_bigrams=VARIANTS[variant]["bigrams"])
    model, crf, tagger = build_model(vocab, variant)
    model.compile(optimizer="adam", loss=crf.loss, metrics=[crf.accuracy])
    segmenter = Segmenter(tagger, vocab)
    run_dir = args.save / f"{experiment}-seed{seed}"
    checkpoint = Checkpoint(run_dir / "checkpoint.npz", config, vocab, stopping.get("monitor") if heldout else None,
                            stopping.get("patience"))
    if args.force:
        checkpoint.path.unlink(missing_ok=True)
        checkpoint.best_path.unlink(missing_ok=True)
    initial_epoch = checkpoint.restore(model)
    if initial_epoch:
        print(f"  resuming {experiment} seed {seed} after epoch {initial_epoch}")
    print(f"  {experiment} seed {seed}: {len(train)} training sentences, {len(heldout)} held out, "
          f"{len(vocab['chars'])} characters, {model.count_params()} parameters", flush=True)
    if initial_epoch < epochs and not checkpoint.stopped:
        model.fit(
            batches(train, vocab, start_step=initial_epoch * cfg["steps_per_epoch"],
                    bucket=VARIANTS[variant].get("bucket", False), seed=seed,
                    bigram_dropout=VARIANTS[variant].get("bigram_dropout", 0.0)),
            steps_per_epoch=cfg["steps_per_epoch"], epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
            callbacks=[EpochTimer(), HeldOutMetric(segmenter, heldout), checkpoint],
        )
    history = checkpoint.history
    best_epoch = checkpoint.restore_best(model) if checkpoint.monitor else len(history.get("loss", [])) or None
    if checkpoint.monitor:
        print(f"  {experiment} seed {seed}: scoring the weights of epoch {best_epoch} (best held-out F1)")
    segmenter.save(run_dir)
    scores = evaluate(segmenter.cut_lines, test, gold, training_words)
    metrics = {f"test_{k}": v for k, v in scores.items()}
    at = (best_epoch or 0) - 1  # the epoch whose weights are scored: the last, or the best with early stopping
    metrics["heldout_word_set"] = history["heldout_word_set"][at] if history.get("heldout_word_set") else None
    metrics["heldout_f1"] = history["heldout_f1"][at] if history.get("heldout_f1") else None
    metrics["epochs_trained"], metrics["scored_epoch"] = len(history.get("loss", [])), best_epoch
    metrics["epoch_time_s"] = float(np.median(history["epoch_time_s"])) if history.get("epoch_time_s") else None
    metrics["params"] = model.count_params()
    runs.save_result(args.out, ARTICLE, experiment, seed, metrics=metrics, config=config, history=history,
                     headline=HEADLINE, started=started)
    print(f"  {experiment} seed {seed}: test F1 {scores['f1']:.4f} (P {scores['precision']:.4f}, R {scores['recall']:.4f}, "
          f"OOV recall {scores['oov_recall']:.4f}), {scores['chars_per_s']:.0f} chars/s; model in {run_dir}", flush=True)
    return runs.load_result(path)


"""## 6. Table"""


def report(records, jieba):
    print("\n| model | seeds | test F1 | precision | recall | OOV recall | IV recall | held-out word-set | s/epoch | chars/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for experiment in sorted({r["experiment"] for r in records}):
        rs = [r for r in records if r["experiment"] == experiment]
        col = lambda key, d=4, rs=rs: runs.format_mean_std([r["metrics"][key] for r in rs], d)
        print(f"| {experiment} | {len(rs)} | {col('test_f1')} | {col('test_precision')} | {col('test_recall')} "
              f"| {col('test_oov_recall')} | {col('test_iv_recall')} | {col('heldout_word_set')} | {col('epoch_time_s', 0)} "
              f"| {col('test_chars_per_s', 0)} |")
    print(f"| jieba (default mode) | - | {jieba['f1']:.4f} | {jieba['precision']:.4f} | {jieba['recall']:.4f} | "
          f"{jieba['oov_recall']:.4f} | {jieba['iv_recall']:.4f} | - | - | {jieba['chars_per_s']:.0f} |")


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--variant", choices=sorted(VARIANTS), nargs="+", default=["article"], help="model variants to train")
    p.add_argument("--corpus", choices=["pku", "msr"], default="pku", help="bakeoff corpus (default pku)")
    p.add_argument("--heldout", type=int, default=None,
                   help=f"training sentences held out (default {HELDOUT}; the strong variant's own default 1000)")
    p.add_argument("--save", type=Path, default=runs.REPO / "runs" / "crf", help="where trained models go (default runs/crf/)")
    args = cli.parse(p, argv)
    if args.heldout is not None and args.heldout < 0:
        p.error(f"--heldout must be 0 or more, got {args.heldout}")
    mode = "quick" if args.quick else "full"
    seeds = cli.seeds(args)[:1] if args.quick and args.seeds == 3 else cli.seeds(args)
    print(f"backend {keras.backend.backend()}, mode {mode}, corpus {args.corpus}, variants {args.variant}, seeds {seeds}")
    corpus_data = load_corpus(args.corpus)
    jieba = jieba_scores(args, args.corpus, *corpus_data[1:])
    records = [run_seed(v, s, args, mode, corpus_data) for v in args.variant for s in seeds]
    report(records, jieba)
    return records


if __name__ == "__main__":
    main()
