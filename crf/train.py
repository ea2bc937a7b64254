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

Run:  python crf/train.py                       (article recipe, 3 seeds, ~18 min a seed on 2 CPU cores)
      python crf/train.py --variant bmes        (+ BMES rules and start/end scores)
      python crf/train.py --variant strong      (bigrams, wider dilated residual CNN, early stopping)
      python crf/train.py --variant strong_ema  (strong on a moving average of its weights)
      python crf/train.py --variant fast        (smaller network, strong_ema's training)
      python crf/train.py --variant fast_deep_refit  (fast + a convolution, retrained on all sentences: F1 0.950,
          crf/README.md, Goals)
      python crf/train.py --quick               (article network, 2 x 150 length-bucketed steps, 1 seed)
      python crf/train.py --variant article bmes strong strong_bd strong_ema fast fast_deep fast_fine fast_e32 \
          fast_deep_d3 fast_deep_cos fast_deep_cos2 fast_deep_d1 fast_deep_w160 fast_pre fast_lstm fast_latest \
          fast_deep_latest fast_small fast_tiny fast_refit fast_deep_refit fast_small_refit --ensembles strong all
          (crf/README.md)
      python crf/train.py --smoke               (seconds of training: checks that the script runs)
Records go to runs/results/ (the committed reference: results/, written only with --reference);
trained segmenters to runs/crf/<experiment>-seed<k>/ (crf/segment.py loads them).
"""

import hashlib
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
from crf.segment import (  # noqa: E402
    UNKNOWN,
    Ensemble,
    Segmenter,
    build_vocab,
    features,
    pad,
    padded_length,
    word_tags,
)
from utils import cli, data, progress, report, runs  # noqa: E402
from utils.callbacks import EpochTimer, PrintEpoch  # noqa: E402

ARTICLE = "crf"
BMES = allowed_transitions("bmes", "sbme")
VARIANTS = {
    # The article's model: Embedding 128 -> 3 x Conv1D(128, 3, relu) -> Dense(4) -> CRF with a
    # transition matrix only; its decoder only lets a sentence start with s/b and end with s/e.
    "article": {
        "bigrams": False,
        "width": 128,
        "dilations": [1, 1, 1],
        "dropout": 0.0,
        "boundary": False,
        "constraints": "start_end",
    },
    # The same network with the full BMES rules (m and e only after b or m, ...) in training and
    # decoding, and learned start/end scores.
    "bmes": {
        "bigrams": False,
        "width": 128,
        "dilations": [1, 1, 1],
        "dropout": 0.0,
        "boundary": True,
        "constraints": "bmes",
    },
    # Stronger: character-bigram embeddings next to the characters (the usual large gain in Chinese
    # segmentation), five wider convolutions whose dilations see 2 x (1+1+2+4+1) + 1 = 19 characters,
    # residual connections, dropout, and the BMES CRF; batches of similar lengths (``batches``), which
    # makes its steps about 5x cheaper than padding corpus-order batches; padded steps zeroed
    # (``ZeroMasked``), so a sentence is tagged the same in any batch. Its 18M parameters (most in
    # the bigram table) memorise PKU's 19k sentences within 2 epochs, so it holds out 1000 sentences
    # (not 5000: a quarter of PKU's training text) and keeps the epoch with the best held-out F1,
    # stopping after 2 epochs without a better one.
    "strong": {
        "bigrams": True,
        "width": 256,
        "dilations": [1, 1, 2, 4, 1],
        "dropout": 0.2,
        "boundary": True,
        "constraints": "bmes",
        "bucket": True,
        "zero_padding": True,
        "heldout": 1000,
        "early_stopping": {"monitor": "heldout_f1", "patience": 2},
    },
}
# ``strong`` with a third of the bigram ids replaced by "unknown" in training: its bigram table helps
# known words and not new ones (OOV recall no better than the article's), and this makes the
# characters carry more of the decision.
VARIANTS["strong_bd"] = {**VARIANTS["strong"], "bigram_dropout": 0.33}
# ``strong`` trained on a moving average of its weights: every step the optimizer also keeps
# ``average = 0.99 average + 0.01 weights`` (about the last 100 steps), and at the end of each epoch
# the weights become that average, which is what the held-out F1 sees, early stopping keeps and the
# next epoch starts from. ``strong`` peaks after 1-2 epochs, while Adam's steps are still large: the
# average is a cheap ensemble of the last steps' weights in one network.
VARIANTS["strong_ema"] = {**VARIANTS["strong"], "ema": 0.99}
# Smaller: 64-wide character and bigram embeddings, three 128-wide residual convolutions with
# dilations 1, 2, 1 (9 characters seen), the rest as strong_ema. About a seventh of strong's
# multiplications per character; better than strong_ema on held-out and test text (crf/README.md).
VARIANTS["fast"] = {**VARIANTS["strong_ema"], "embedding": 64, "width": 128, "dilations": [1, 2, 1]}
# Tried against fast on one seed each, chosen between by held-out F1 (crf/README.md): held-out checks
# every 100 steps (and the average written into the weights as often), stopping after 500 steps
# without a better one; a fourth convolution (dilation 4: 17 characters seen); 32-wide embeddings; and
# (changing fast_deep) dropout 0.3.
VARIANTS["fast_fine"] = {**VARIANTS["fast"], "checks": 5, "early_stopping": {"monitor": "heldout_f1", "patience": 5}}
VARIANTS["fast_deep"] = {**VARIANTS["fast"], "dilations": [1, 2, 4, 1]}
VARIANTS["fast_e32"] = {**VARIANTS["fast"], "embedding": 32}
VARIANTS["fast_deep_d3"] = {**VARIANTS["fast_deep"], "dropout": 0.3}
# For speed (fast is slower than jieba: crf/README.md, Segmenters compared): 48-wide embeddings,
# 96-wide convolutions, about half of fast's multiplications per character.
VARIANTS["fast_small"] = {**VARIANTS["fast"], "embedding": 48, "width": 96}
# Faster still, for the Pareto goal (F1 >= 0.945 at jieba's speed or more): 64-wide convolutions, about
# half of fast_small's multiplications per character (the first convolution has no residual: 96 in, 64 out).
VARIANTS["fast_tiny"] = {**VARIANTS["fast"], "embedding": 48, "width": 64}
# Refits: once held-out text has chosen a variant's settings and its length of training, the same
# training on every training sentence, none held out (5% more text, and nothing left to check or stop
# on). ``epochs`` caps the mode's epochs: held-out early stopping kept the first epoch in every seed of
# fast, fast_deep and fast_small (results/crf/), so their refits train that one 500-step epoch and end on
# its moving average.
REFIT = {"heldout": 0, "early_stopping": None, "epochs": 1}
VARIANTS.update({f"{name}_refit": {**VARIANTS[name], **REFIT} for name in ("fast", "fast_deep", "fast_small")})
# More changes to fast_deep, tried on seed 0 and compared on held-out F1 like fast_fine above
# (crf/README.md): Adam's rate falling from its default 0.001 to zero along a cosine over the whole run
# (``decay``; ``epochs`` caps the mode's: one 500-step epoch, or two), dropout 0.1, 160-wide convolutions.
VARIANTS["fast_deep_cos"] = {**VARIANTS["fast_deep"], "decay": "cosine", "epochs": 1}
VARIANTS["fast_deep_cos2"] = {**VARIANTS["fast_deep"], "decay": "cosine", "epochs": 2}
VARIANTS["fast_deep_d1"] = {**VARIANTS["fast_deep"], "dropout": 0.1}
VARIANTS["fast_deep_w160"] = {**VARIANTS["fast_deep"], "width": 160}
# fast with its character and bigram embeddings pretrained on the raw text of its training sentences
# (``pretrain_embeddings``: no segmentation used; ``pretrain``: passes over the text) before the CRF
# training starts, meant to give a bigram seen a few times a vector from its neighbours, not only from
# its few tagged occurrences.
VARIANTS["fast_pre"] = {**VARIANTS["fast"], "pretrain": 1}
# fast and fast_deep (the two best on held-out text, within its noise) compared again on a held-out set
# more like the test text: PKU's test text is from 2001, its training text from January 1998 in date
# order, so the last 2000 sentences (the dates they name are mostly 25-30 January) are held out instead of 1000
# random ones. Their words are new to the rest 3.7% of the time (random 1000: 2.7%; test: 5.8%). The
# rule, fixed before these runs: the variant with the higher held-out F1 over 3 seeds is chosen, and
# its refit (trained for the epochs early stopping keeps here) is the single model.
LATEST = {"heldout": 2000, "heldout_latest": True}
VARIANTS.update({f"{name}_latest": {**VARIANTS[name], **LATEST} for name in ("fast", "fast_deep")})
# fast with a bidirectional LSTM (64 units each way) added over its convolutions: about half of fast's misses
# on held-out text are single characters joined to a neighbour, choices a 9-character window may not settle.
VARIANTS["fast_lstm"] = {**VARIANTS["fast"], "lstm": 64}
# Teachers for distillation (``fast_deep_kd`` below): three members of ``fast_deep`` on each seed's split,
# each trained for the one epoch that early stopping kept in every seed of ``fast_deep``. ``member`` m > 0
# reseeds the initial weights and dropout with seed + 1000 m (the split and the batches stay the seed's);
# member 0 is ``fast_deep`` itself.
for member in range(3):
    VARIANTS[f"fast_deep_m{member}"] = {**VARIANTS["fast_deep"], "epochs": 1, "member": member}
# Distillation: fast_deep trained on each sentence's gold path mixed half and half with what the three
# members expect of it (``soft_targets``: the distribution over tag paths of their mean CRF scores,
# trained on with ``CRF.soft_loss``). The ensemble's knowledge in one network of fast_deep's size.
# ``teachers``: (variant, seed) pairs, seed None for the student's own (the same split).
VARIANTS["fast_deep_kd"] = {
    **VARIANTS["fast_deep"],
    "teachers": [[f"fast_deep_m{member}", None] for member in range(3)],
    "soft": 0.5,
}
# The same on the teachers' expectations alone (no gold path), as born-again networks train. Its seed 0
# had the highest held-out F1 of any candidate's seed 0 then (0.9721; fast 0.9716). The rule, fixed before
# its seeds 1 and 2 ran and before its test F1 was read: it is chosen over fast if its mean held-out F1
# over seeds 0-2 (this split of 1000 random sentences) is higher than fast's (0.9713), and then its
# refit (taught by the three fast_deep_refit seeds, trained for the median of the epochs its seeds
# kept) is the single model.
VARIANTS["fast_deep_kd1"] = {**VARIANTS["fast_deep_kd"], "soft": 1.0}
# The rule chose it (held-out F1 0.9721, 0.9718, 0.9723 against fast's 0.9716, 0.9713, 0.9710), so its
# refit: every training sentence, taught by the three fast_deep_refit seeds, for 6 epochs (the median
# of the epochs its seeds kept: 6, 4 and 7), ending on the moving average.
VARIANTS["fast_deep_kd1_refit"] = {
    **VARIANTS["fast_deep_kd1"],
    **REFIT,
    "epochs": 6,
    "teachers": [["fast_deep_refit", seed] for seed in range(3)],
}
# Out-of-fold teachers. fast_deep_kd1's teachers had trained on the very sentences they labelled, and
# there they are nearly certain (the three members of seed 0 on 1000 of its training sentences: a mean
# tag entropy of 0.019 nats and argmax tags 99.7% right, against 0.041 and 97.7% on its held-out
# sentences), so their targets teach little of how a new word is met, and the student's OOV recall fell
# (0.749 against fast_deep's 0.763). Here each training sentence is labelled by a teacher that did not
# see it: fold f of 3 (the sentences whose index in the seed's shuffled training list is f mod 3) by
# ``fast_deep_f{f}``, trained for one epoch on the other two folds; the student mixes those targets half
# and half with the gold path (so each step's most likely tag stays the gold one), as fast_deep_kd did.
# The rule, fixed before any of it ran: it goes on to seeds 1 and 2 only if its seed-0 held-out F1 is
# above fast_deep_kd1's (0.9721, the best seed 0); it is then chosen over fast_deep_kd1 if its mean
# held-out F1 over seeds 0-2 is higher (0.9721), and its refit is the single model.
for fold in range(3):
    VARIANTS[f"fast_deep_f{fold}"] = {**VARIANTS["fast_deep"], "epochs": 1, "fold": [fold, 3]}
VARIANTS["fast_deep_oof"] = {
    **VARIANTS["fast_deep_kd"],
    "teachers": [[f"fast_deep_f{fold}", None] for fold in range(3)],
    "out_of_fold": 3,
}
# It did not: its seed 0 kept epoch 3 at held-out F1 0.9685 (test F1 0.9474; crf/NOTES.md), so seeds 1
# and 2 were not run here (``reproduce.py --full`` trains 3 seeds of it, as of every candidate).
# Swapped words. The test text is from 2001 and 5.8% of its words are new to the training text (the
# held-out sentences': 2.7%), and what distillation's students lost against their teachers was OOV
# recall. ``swap``: each training sentence gets one copy in which each word, with that probability, is
# replaced by a word drawn uniformly from the distinct words of the training sentences (mostly rare
# ones: names, numbers, compounds), and the model trains on the originals and the copies together
# (``swap_words``). In a copy, words meet neighbours they never met, as a new word does in new text,
# and the bigrams across those edges are unknown to the vocabulary (built from the originals only);
# the copy's segmentation is known. ``fast_deep_swap`` trains on their gold paths; ``fast_deep_kd1_swap``
# is fast_deep_kd1 with the copies labelled by the same teachers mixed half and half with their gold
# paths (``swap_soft``: the teachers are least sure where the copies are new, and the gold path there is
# exact). The rule, committed before either ran: each goes on to seeds 1 and 2 only if its seed-0
# held-out F1 is above fast_deep_kd1's 0.9721 (the best seed 0); one is chosen over fast_deep_kd1 if its
# mean held-out F1 over seeds 0-2 is above fast_deep_kd1's (0.9721; the higher of the two if both are),
# and then its refit, made as fast_deep_kd1_refit was (every sentence; fast_deep_refit's seeds as
# teachers where it has teachers; the median of the epochs its seeds kept), is the single model.
VARIANTS["fast_deep_swap"] = {**VARIANTS["fast_deep"], "swap": 0.1}
VARIANTS["fast_deep_kd1_swap"] = {**VARIANTS["fast_deep_kd1"], "swap": 0.1, "swap_soft": 0.5}
# fast_deep_swap stopped after seed 0 (held-out F1 0.9707). fast_deep_kd1_swap went on (seed 0: 0.9726)
# and was chosen: held-out F1 0.9732 ± 0.0005 (0.9726, 0.9733, 0.9736) against fast_deep_kd1's 0.9721
# (crf/NOTES.md). So its refit: every training sentence and its swapped copy, taught by the three
# fast_deep_refit seeds, for 3 epochs (the median of the epochs its seeds kept: 3, 3 and 3), ending on
# the moving average.
VARIANTS["fast_deep_kd1_swap_refit"] = {
    **VARIANTS["fast_deep_kd1_swap"],
    **REFIT,
    "epochs": 3,
    "teachers": [["fast_deep_refit", seed] for seed in range(3)],
}
# It scores test F1 0.9507 ± 0.0002 (0.9505, 0.9509, 0.9507): the accuracy goal (crf/README.md, Goals).
MODES = {
    "full": {"epochs": 10, "steps_per_epoch": 500, "seeds": 3},
    # The article's network on fewer, length-bucketed batches (about 5x less padding than corpus
    # order): enough to pass jieba on the test set, in about two minutes here.
    "quick": {"epochs": 2, "steps_per_epoch": 150, "seeds": 1, "bucket": True, "heldout": 1000},
    # Seconds: the pipeline end to end, scored on the first 300 lines of the test set.
    "smoke": {"epochs": 1, "steps_per_epoch": 5, "seeds": 1, "bucket": True, "heldout": 100, "test_lines": 300},
}
# Variants trained on packed batches (``pack``): the same sums, without most of the padding's work.
# (Not in the variants' configs: the records name what is computed, and packing computes the same.)
PACKED = {"article", "bmes"}
# On JAX each new batch shape compiles the training step anew (about 2 s and 360 memory maps each for
# the article's network here; a quick run's hundred-odd lengths reached Linux's limit of 65,530 maps
# and crashed), so there batches are padded to a few lengths (``batches``: ``few_shapes``) and packed
# batches to a multiple of ``ROW_STEP`` rows. For the article's network that adds padding embeddings
# past the longest sentence's end too (as every shorter sentence has), a small change of the sums.
FEW_SHAPES = keras.backend.backend() == "jax"
ROW_STEP = 8
# Ensembles of trained seeds (crf/segment.py: Ensemble), scored on the test set after the variants.
ENSEMBLES = {
    "strong": ["strong"],
    "all": ["strong", "article"],
    "fast_deep_m": ["fast_deep_m0", "fast_deep_m1", "fast_deep_m2"],
}
# Ensembles scored once per seed, of that seed's models only (the distillation teachers of each split).
PER_SEED = {"fast_deep_m"}
BATCH_SIZE = 128
HELDOUT = 5000  # the article keeps the last 5000 shuffled training sentences for its metric
HEADLINE = {
    "metric": "test_f1",
    "label": "PKU test F1 (bakeoff scoring; training set reconstructed from People's Daily 1998-01)",
    "blog": None,
    "blog_source": "kexue.fm/archives/5542 published no score; the article's own code run on these "
    "machines (Keras 2, 10 x 500 steps, same data) reached F1 0.903, OOV recall 0.50 (ANCHORS.md)",
}


def claim(corpus):
    """The claim on one bakeoff corpus (the reference has PKU)."""
    name = corpus.upper()
    return report.Claim(
        statement="a CNN with a CRF on top, trained on the bakeoff's segmented text, segments Chinese; the article "
        "published no score, so the bar is jieba's dictionary-based segmenter on the same test text",
        criterion=f"the article's recipe beats jieba's F1 on the {name} test set (bakeoff scoring)",
        rows=[
            report.Row("crf", f"article-{corpus}", "test_f1", f"CNN-CRF, article recipe: {name} test F1"),
            report.Row("jieba", f"jieba-{corpus}", "f1", f"jieba 0.42.1, default mode: {name} test F1"),
            report.Row("crf_oov", f"article-{corpus}", "test_oov_recall", "CNN-CRF, article recipe: OOV recall"),
        ],
        holds=lambda v: v["crf"] > v["jieba"],
        blog_source="no score in kexue.fm/archives/5542",
    )


CLAIM = claim("pku")


"""## 1. Data: sentences, tags, vocabulary"""


def load_corpus(corpus):
    """Training sentences, the test input, its gold segmentation and the training-word list."""
    return (
        data.icwb2(corpus, "train"),
        data.icwb2(corpus, "test"),
        data.icwb2(corpus, "gold"),
        data.icwb2(corpus, "words"),
    )


def split(sentences, seed, heldout, latest=False):
    """Shuffle (seeded) and keep the last ``heldout`` sentences aside, as the article does. With
    ``latest``: the last ``heldout`` sentences of the file itself (PKU's is in date order, so its latest
    days) are held out, and only the rest is shuffled."""
    kept = len(sentences) - heldout
    rng = np.random.default_rng(seed)
    order = (
        np.concatenate([rng.permutation(kept), np.arange(kept, len(sentences))])
        if latest
        else rng.permutation(len(sentences))
    )
    shuffled = [sentences[i] for i in order]
    return shuffled[:kept], shuffled[kept:]


def batches(sentences, vocab, start_step=0, bucket=False, seed=0, bigram_dropout=0.0, few_shapes=False, targets=None):
    """Endless (char ids, tags) batches of 128 sentences, each padded to its longest sentence (no
    maximum length); ``start_step`` resumes mid-run at exactly the batch it would have reached.

    Without ``bucket``: corpus order, as the article's generator. PKU sentences run from 1 to 1019
    characters, so such a batch is on average 5.6x longer than its mean sentence, and most of the
    convolutions' work is padding. With ``bucket``: each pass over the data is reshuffled (seeded by
    ``seed`` and the pass), cut into pools of 50 batches, each pool sorted by length and cut into
    batches, and the batches of the pass shuffled: the same sentences per pass, about 1.1x padding.
    ``bigram_dropout``: the share of (real) bigram ids replaced by "unknown", seeded by ``seed`` and
    the step, so a model cannot lean on the bigram table alone and learns unseen bigrams' case.
    ``few_shapes``: each batch padded to ``segment.padded_length`` of its longest sentence, not to
    that sentence (at most 25% more padding from 32 characters on), so a pass brings a few dozen
    shapes, not a hundred (``FEW_SHAPES``). ``targets``: one (length, 4 + 16) array per sentence (``soft_targets``),
    yielded padded with zeros in place of the tags, for ``CRF.soft_loss``.
    """
    n = -(-len(sentences) // BATCH_SIZE)
    step, order, order_pass = start_step, None, None
    while True:
        if bucket and order_pass != step // n:
            order_pass = step // n
            order = _bucketed_order(sentences, np.random.default_rng([seed, order_pass]))
        index = step % n
        rows = order[index] if bucket else range(index * BATCH_SIZE, min((index + 1) * BATCH_SIZE, len(sentences)))
        chunk = [sentences[i] for i in rows]
        texts = ["".join(words) for words in chunk]
        x = features(texts, vocab, length=padded_length(max(map(len, texts))) if few_shapes else None)
        x = x if isinstance(x, list) else [x]
        if bigram_dropout and len(x) > 1:
            drop = np.random.default_rng([seed, step, 1]).random(x[1].shape) < bigram_dropout
            x[1] = np.where(drop & (x[1] > 0), UNKNOWN, x[1]).astype(x[1].dtype)
        if targets is None:
            y = pad([word_tags(words) for words in chunk], length=x[0].shape[1])
        else:
            y = np.zeros((len(chunk), x[0].shape[1], targets[0].shape[1]), dtype="float32")
            for row, i in enumerate(rows):
                y[row, : len(targets[i])] = targets[i]
        yield (tuple(x) if len(x) > 1 else x[0]), y
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


def pack(chars, reach=3, row_step=1):
    """The same convolutions over a batch without most of its padding: a corpus-order batch of 128
    sentences is on average 5.6x longer than its mean sentence, and the article's convolutions spend
    most of their time on padding. ``chars`` (batch, T), right-padded with 0; ``reach``: how many
    steps past each end the stacked 3-wide convolutions look (one per layer).

    The sentences are laid end to end in fewer rows of T + 1 steps, each followed by what it sees in
    its padded row, so every real step's result is the one the padded batch gives:
    - up to ``reach`` padding ids (as many as its row in the batch had: the longest sentence has
      none), which go through the layers like padding does;
    - then one step that is zeroed before every convolution (``keep`` 0): what the convolution's own
      zero padding gives past the end of the row, and before the next sentence's start.
    Returns (packed ids (rows, T + 1), keep (rows, T + 1) float32, index (batch, T) int32: where each
    step of each sentence went in the packed rows, flattened; padded steps point at step 0). The
    number of rows is rounded up to a multiple of ``row_step`` with empty rows (ids 0, ``keep`` 0),
    which no step of ``index`` reads.
    """
    chars = np.asarray(chars)
    batch, steps = chars.shape
    lengths = (chars != 0).sum(axis=1)
    if np.any(chars[np.arange(steps)[None, :] >= lengths[:, None]] != 0):
        raise ValueError("pack: every row must be its characters then padding (0), with no 0 among the characters")
    spans = lengths + np.minimum(reach, steps - lengths) + 1  # characters, padding ids, the zeroed step
    width = steps + 1
    rows, starts = [], np.zeros(batch, dtype="int64")
    for i in np.argsort(-spans, kind="stable"):  # longest first, each into the first row it fits
        row = next((r for r, used in enumerate(rows) if used + spans[i] <= width), len(rows))
        if row == len(rows):
            rows.append(0)
        starts[i], rows[row] = row * width + rows[row], rows[row] + spans[i]
    count = -(-len(rows) // row_step) * row_step
    packed = np.zeros(count * width, dtype=chars.dtype)
    keep = np.zeros(count * width, dtype="float32")
    index = np.zeros((batch, steps), dtype="int32")
    for i in range(batch):
        n, start = lengths[i], starts[i]
        packed[start : start + n] = chars[i, :n]
        keep[start : start + spans[i] - 1] = 1.0  # the characters and the padding ids; the last step stays 0
        index[i, :n] = np.arange(start, start + n)
    return packed.reshape(count, width), keep.reshape(count, width), index


def packed_batches(batches, reach=3, row_step=1):
    """``batches`` with each batch's char ids packed (``pack``), for the packed training model: the
    padded ids first (Keras weighs each batch in the epoch's mean loss by the first input's rows,
    which must stay the batch's 128 sentences), then the packed ids, ``keep`` and ``index``."""
    for chars, tags in batches:
        yield (chars, *pack(chars, reach, row_step)), tags


def path_indicators(tags, num_tags=4):
    """A tag path's one-hot indicators in ``CRF.soft_loss``'s layout: (len(tags), K + K * K), each step's
    tag, then the pair (previous tag, tag) (none at step 0)."""
    tags = np.asarray(tags, dtype="int64")
    out = np.zeros((len(tags), num_tags + num_tags * num_tags), dtype="float32")
    out[np.arange(len(tags)), tags] = 1.0
    out[np.arange(1, len(tags)), num_tags + tags[:-1] * num_tags + tags[1:]] = 1.0
    return out


def model_name(args, variant, seed):
    """The folder (in ``--save``) where ``train_seed`` saves ``variant``'s ``seed`` in this mode and corpus."""
    return f"{runs.experiment_name(f'{variant}-{args.corpus}', args.mode)}-seed{seed}"


def teacher_folders(args, variant, seed):
    """The model folders of ``variant``'s teachers for ``seed`` (in ``--save``)."""
    return [
        args.save / model_name(args, name, seed if fixed is None else fixed)
        for name, fixed in VARIANTS[variant].get("teachers") or []
    ]


def out_of_fold(sentences, fold, folds):
    """The sentences a teacher of ``fold`` (of ``folds``) trains on: every one whose index is not
    ``fold`` mod ``folds``; those whose index is, it labels for its student (``soft_targets``)."""
    return [s for i, s in enumerate(sentences) if i % folds != fold]


def swap_words(sentences, rate, seed):
    """A copy of ``sentences`` (lists of words) in which each word, with probability ``rate``, is
    replaced by one drawn uniformly from the distinct words of ``sentences``, seeded by ``seed`` (the
    same copy whenever a run starts or resumes): text whose segmentation is known, where words stand
    beside neighbours they never had (the ``swap`` variants)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"swap_words: rate must be a probability in [0, 1], got {rate}")
    kinds = sorted({word for words in sentences for word in words})
    # (the key [seed, 2] is also that of ``batches``' second bucketed pass: the two draws share a stream,
    # which changes neither; kept, as the records were made with it)
    rng = np.random.default_rng([seed, 2])
    copies = []
    for words in sentences:
        swapped, drawn = rng.random(len(words)) < rate, rng.integers(len(kinds), size=len(words))
        copies.append([kinds[d] if s else word for word, s, d in zip(words, swapped, drawn)])
    return copies


TRAINED_ON = "trained_on.json"  # beside tagger.keras and vocab.json in a model folder that train_seed saves


def trained_on(sentences):
    """What ``TRAINED_ON`` holds: the number of training sentences and a SHA-256 of them (their words
    joined by spaces, so the segmentation counts), sorted first: the same sentences in any order give
    the same digest, one sentence more, fewer or segmented otherwise another. ``train_seed`` writes it
    for the sentences of its split (a ``swap`` variant's copies aside, named by ``swapped_copies``:
    their rate); ``soft_targets`` compares these two keys."""
    lines = sorted(" ".join(words) for words in sentences)
    return {"sentences": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()}


def soft_targets(folders, sentences, vocab, weight, folds=None, min_count=2, seen=None):
    """Each sentence's target for ``CRF.soft_loss``: ``weight`` x what the teachers in ``folders`` expect
    of its tag paths, their CRF scores averaged (``Segmenter.path_marginals`` of their ``Ensemble`` at
    the temperature of their number), plus 1 - ``weight`` x its gold path's indicators (``weight``: one
    number, or one a sentence). Every teacher
    must have been trained on ``seen`` (by default these sentences): its ``TRAINED_ON`` must name
    them, and its vocabulary must hold the same characters and bigrams (a folder saved before
    ``TRAINED_ON`` existed is checked by its vocabulary alone, which a teacher trained on one sentence
    more or fewer can pass, and says so). With ``folds``: teacher f alone labels the sentences whose
    index is f mod ``folds``, and must have been trained on the others of ``seen`` (``out_of_fold``;
    its vocabulary, with ``min_count``, is theirs)."""
    seen = sentences if seen is None else seen
    if folds and list(sentences) != list(seen):
        raise SystemExit(
            f"out-of-fold targets label the very sentences the folds were cut from, and these {len(sentences)} "
            f"are not the {len(seen)} seen (swapped copies and folds do not go together)"
        )
    if folds and len(folders) != folds:
        raise SystemExit(f"out-of-fold targets need one teacher a fold: {folds} folds, {len(folders)} teachers")
    remedy = "train the teachers with the student's seeds and mode (crf/train.py --variant <teachers> <student>)"
    teachers = []
    for f, folder in enumerate(folders):
        teacher = Segmenter.load(folder)
        taught, known, whose = seen, vocab, "this seed's training sentences"
        if folds:
            taught = out_of_fold(seen, f, folds)
            known = build_vocab(taught, min_count=min_count, with_bigrams=bool(vocab.get("bigrams")))
            whose += f" outside fold {f} of {folds}"
        record = Path(folder) / TRAINED_ON
        if record.is_file():
            got, expected = runs.load_json_file(record, remedy), trained_on(taught)
            got = {k: got.get(k) for k in expected} if isinstance(got, dict) else {}
            if got != expected:
                raise SystemExit(
                    f"{record}: the teacher was trained on {got.get('sentences')} sentences of digest "
                    f"{str(got.get('sha256'))[:12]}, not on the {expected['sentences']} of {whose} "
                    f"({expected['sha256'][:12]}): another seed, fold or held-out size; {remedy}"
                )
        else:
            print(f"    {folder}: no {TRAINED_ON} (saved before it was written): checked by its vocabulary only")
        for table in ("chars", "bigrams"):
            if set(teacher.vocab.get(table) or ()) != set(known.get(table) or ()):
                raise SystemExit(
                    f"{folder}: its vocabulary's {table} are not those of {whose}, so it was trained on other "
                    f"sentences (another seed, fold or held-out size); {remedy}"
                )
        teachers.append(teacher)
    texts = ["".join(words) for words in sentences]
    if folds:
        expected = [None] * len(texts)
        for f, teacher in enumerate(teachers):
            labelled = range(f, len(texts), folds)
            for i, soft in zip(labelled, teacher.path_marginals([texts[i] for i in labelled])):
                expected[i] = soft
    else:
        expected = Ensemble(teachers).path_marginals(texts, temperature=len(teachers))
    weights = np.broadcast_to(np.asarray(weight, dtype="float64"), (len(sentences),))
    return [
        w * soft + (1.0 - w) * path_indicators(word_tags(words)) for words, soft, w in zip(sentences, expected, weights)
    ]


"""## 2. Model: CNN emissions, CRF on top"""


def skipgram_examples(sentences, vocab, contexts):
    """``pretrain_embeddings``'s examples, one per character of ``sentences``: its char id, the id of
    the bigram starting there, and four target classes: the characters just before and just after
    it, then those just before and just after the bigram (0: outside the sentence; a class is a char
    id, and every id from ``contexts`` - 1 up, the rarer characters, is class ``contexts`` - 1)."""
    if not vocab.get("bigrams"):
        raise ValueError("pretrain_embeddings: the vocabulary has no bigrams; pretraining is for variants with bigrams")
    chars, pairs, targets = [], [], [[], [], [], []]
    for words in sentences:
        c, b = (ids[0] for ids in features(["".join(words)], vocab))
        edge = np.concatenate([[0], c, [0, 0]])  # character ids with "outside" around them
        chars.append(c)
        pairs.append(b)
        n = len(c)
        for k, offset in enumerate((0, 2, 0, 3)):  # char: before, after; bigram: before, after the pair
            targets[k].append(edge[offset : offset + n])
    targets = [np.minimum(np.concatenate(t), contexts - 1) for t in targets]  # ids run by frequency
    return np.concatenate(chars), np.concatenate(pairs), targets


def pretrain_embeddings(sentences, vocab, size, epochs=1, batch_size=1024, contexts=1024):
    """Character and bigram embeddings learnt from the raw text of ``sentences`` (their characters
    only; the segmentation is not used): each character's vector predicts the character before it and
    the one after it, each bigram's the character before the pair and the one after it (skip-gram with
    a full softmax over ``contexts`` classes: outside the sentence, unknown, the ``contexts`` - 3 most
    frequent characters, and the rest as one). Returns the two tables, one row
    per id of ``vocab`` as ``build_model``'s embeddings have them (0 padding, 1 unknown), each scaled
    to the spread of Keras's default initialisation (uniform in +-0.05) so that training starts at
    the same scale as without pretraining."""
    chars, pairs, targets = skipgram_examples(sentences, vocab, contexts)
    n_chars, n_pairs = len(vocab["chars"]) + 2, len(vocab["bigrams"]) + 2
    char_in, pair_in = keras.Input((), dtype="int32"), keras.Input((), dtype="int32")
    char_vec = keras.layers.Embedding(n_chars, size, name="embedding")(char_in)
    pair_vec = keras.layers.Embedding(n_pairs, size, name="bigram_embedding")(pair_in)
    heads = [
        keras.layers.Dense(contexts, name=f"{unit}_{side}")(vec)
        for unit, vec in (("char", char_vec), ("pair", pair_vec))
        for side in ("before", "after")
    ]
    model = keras.Model([char_in, pair_in], heads)
    model.compile(optimizer="adam", loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 4)
    model.fit(
        [chars, pairs], targets, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=progress.fit_verbose()
    )
    spread = 0.05 / np.sqrt(3)  # standard deviation of uniform(-0.05, 0.05)
    tables = [
        keras.ops.convert_to_numpy(model.get_layer(name).embeddings) for name in ("embedding", "bigram_embedding")
    ]
    return [t * (spread / t.std()) for t in tables]


def build_model(vocab, variant):
    """The training model (emissions for ``crf.loss``), the CRF layer and the tagger (Viterbi tags)."""
    cfg = VARIANTS[variant]
    constraints = (
        BMES
        if cfg["constraints"] == "bmes"
        else {"allowed_start": BMES["allowed_start"], "allowed_end": BMES["allowed_end"]}
    )
    chars = keras.Input((None,), dtype="int32", name="chars")
    inputs = [chars]
    size = cfg.get("embedding", 128)
    x = keras.layers.Embedding(len(vocab["chars"]) + 2, size, name="embedding")(chars)
    if cfg["bigrams"]:
        pairs = keras.Input((None,), dtype="int32", name="bigrams")
        inputs.append(pairs)
        x = keras.layers.Concatenate()(
            [x, keras.layers.Embedding(len(vocab["bigrams"]) + 2, size, name="bigram_embedding")(pairs)]
        )
    # The article's convolutions see the padding's embedding past each sentence's end, so a
    # sentence's tags depend on its batch; the stronger variant zeroes padded steps before each one.
    edge = (lambda h: ZeroMasked()(h, mask=chars)) if cfg.get("zero_padding") else (lambda h: h)
    x = edge(x)
    if cfg["dropout"]:
        x = keras.layers.Dropout(cfg["dropout"])(x)

    def after(x, h, residual):  # a block's output h: added to its input x where the widths allow
        x = edge(keras.layers.Add()([x, h]) if residual and x.shape[-1] == h.shape[-1] else h)
        return keras.layers.Dropout(cfg["dropout"])(x) if cfg["dropout"] else x

    for i, dilation in enumerate(cfg["dilations"]):
        h = keras.layers.Conv1D(
            cfg["width"], 3, padding="same", dilation_rate=dilation, activation="relu", name=f"conv{i}"
        )(x)
        # Residual connections only in the stronger variant (the article stacks plain convolutions).
        x = after(x, h, residual=cfg["dropout"])
    if cfg.get("lstm"):
        # A bidirectional LSTM over the convolutions' features (``lstm`` units each way), added to them:
        # each tag then sees the whole sentence, not only the convolutions' window. It reads the char
        # ids' mask, so the backward pass starts at each sentence's own end, not in its padding.
        h = keras.layers.Bidirectional(keras.layers.LSTM(cfg["lstm"], return_sequences=True), name="bilstm")(
            x, mask=keras.ops.not_equal(chars, 0)
        )
        x = after(x, h, residual=True)
    emissions = keras.layers.Dense(4, name="emissions")(x)
    crf = CRF(4, boundary=cfg["boundary"], **constraints, name="crf")
    # The convolutions drop Keras masks, so the CRF gets the char ids as its mask: id 0 is padding.
    inputs = inputs[0] if len(inputs) == 1 else inputs
    model = keras.Model(inputs, crf(emissions, mask=chars), name=f"cws_{variant}")
    tagger = keras.Model(inputs, crf(emissions, mask=chars, decode=True), name=f"tagger_{variant}")
    return model, crf, tagger


def packed_model(model, crf, variant):
    """``model`` (from ``build_model``: same layers, same weights) reading packed batches: the batch's
    char ids (the CRF's mask), then the ids, ``keep`` and ``index`` that ``pack`` makes."""
    chars = keras.Input((None,), dtype="int32", name="padded_chars")
    network = packed_emissions(model, variant)
    outputs = crf(network.outputs[0], mask=chars)
    return keras.Model([chars, *network.inputs], outputs, name=f"cws_{variant}_packed")


def packed_emissions(model, variant):
    """The emissions of ``model``'s network from a packed batch (ids, ``keep``, ``index``), in the
    batch's (batch, T, 4) layout: the convolutions run over the packed rows, with the steps ``keep``
    marks zeroed before each, and the results are gathered back by ``index``."""
    cfg = VARIANTS[variant]
    if cfg["bigrams"] or cfg["dropout"] or cfg.get("zero_padding") or cfg.get("lstm") or set(cfg["dilations"]) != {1}:
        raise ValueError(
            f"packed training: the {variant} variant is not the article's plain network; train it unpacked"
        )
    ids = keras.Input((None,), dtype="int32", name="packed_chars")
    keep = keras.Input((None,), dtype="float32", name="keep")
    index = keras.Input((None,), dtype="int32", name="index")
    x = model.get_layer("embedding")(ids) * keras.ops.expand_dims(keep, -1)
    for i in range(len(cfg["dilations"])):
        x = model.get_layer(f"conv{i}")(x) * keras.ops.expand_dims(keep, -1)
    emissions = model.get_layer("emissions")(x)
    emissions = keras.ops.take(keras.ops.reshape(emissions, (-1, emissions.shape[-1])), index, axis=0)
    return keras.Model([ids, keep, index], emissions, name=f"emissions_{variant}_packed")


"""## 3. Training: the held-out metric after each epoch"""


def optimizer(variant, steps_per_epoch, epochs):
    """Adam with Keras's defaults (the article's ``optimizer='adam'``); with ``ema`` in the variant, a
    moving average of the weights that replaces them on the last step of every epoch; with ``decay``,
    a learning rate falling from 0.001 to zero along a cosine over the ``epochs`` x ``steps_per_epoch``
    steps of the run."""
    decay, ema = variant.get("decay"), variant.get("ema")
    if decay and decay != "cosine":
        raise ValueError(f"decay {decay!r}: the variants know only 'cosine' (or no decay)")
    if not decay and not ema:
        return "adam"
    rate = keras.optimizers.schedules.CosineDecay(0.001, decay_steps=epochs * steps_per_epoch) if decay else 0.001
    averaging = {"use_ema": True, "ema_momentum": ema, "ema_overwrite_frequency": steps_per_epoch} if ema else {}
    return keras.optimizers.Adam(rate, **averaging)


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


"""## 4. Evaluation: bakeoff scores on the official test set, and speed"""


def evaluate(cut_lines, test, gold, training_words, progress=None):
    """Segment the test input with ``cut_lines`` and score it; adds characters per second (after a
    warm-up call, so compiling the graph is not counted). ``progress``: a label for a progress bar
    during the warm-up (``cut_lines`` must then take ``progress=``)."""
    # warm-up on the same text: every batch shape is compiled before the clock starts
    cut_lines(test, progress=progress) if progress else cut_lines(test)
    started = time.perf_counter()
    predicted = cut_lines(test)
    seconds = time.perf_counter() - started
    scores = bakeoff_score(gold, predicted, training_words)
    scores["chars_per_s"] = sum(len(line) for line in test) / seconds
    return scores


def jieba_cut_lines(lines):
    import jieba

    return [[w for w in jieba.lcut(line) if w.strip()] for line in lines]


def run_jieba(job, checkpoint):
    """jieba (default mode) on the same test text, scored the same way: the bar the claim uses."""
    import jieba

    jieba.setLogLevel(60)
    jieba.initialize()  # loads its dictionary: not counted in the speed
    _, test, gold, training_words = job.spec["corpus_data"]
    scores = evaluate(jieba_cut_lines, test, gold, training_words)
    print(f"    jieba: test F1 {scores['f1']:.4f}, OOV recall {scores['oov_recall']:.4f}", flush=True)
    return scores, {}


"""## 5. One seed of one variant, and ensembles of seeds"""


def train_seed(job, checkpoint):
    """Train one variant with one seed, keep the best (or last) epoch's weights, save the segmenter in
    ``--save`` and score it on the test set. ``utils.runs.run_jobs`` seeds, resumes and records it."""
    cfg, seed, args = job.config, job.seed, job.spec["args"]
    train_all, test, gold, training_words = job.spec["corpus_data"]
    variant = VARIANTS[cfg["variant"]]
    train, heldout = split(train_all, seed, cfg["heldout"], latest=variant.get("heldout_latest", False))
    if variant.get("fold"):  # a teacher of one fold: it trains on the others (``out_of_fold``)
        train = out_of_fold(train, *variant["fold"])
    vocab = build_vocab(train, min_count=cfg["min_count"], with_bigrams=variant["bigrams"])
    stopping = variant.get("early_stopping") or {}
    if heldout:  # early stopping watches the held-out F1
        checkpoint.monitor, checkpoint.patience = stopping.get("monitor"), stopping.get("patience")
    if variant.get("member"):  # another model on the same split: its own initial weights and dropout
        runs.set_seed(seed + 1000 * variant["member"])
    # Before a resume too: the checkpoint's weights then replace these, and the random draws after it
    # (initialisation, dropout) stay those of a run that was not interrupted.
    tables = []
    if variant.get("pretrain"):
        print(f"    pretraining the embeddings on the training text ({variant['pretrain']} pass(es))", flush=True)
        tables = pretrain_embeddings(train, vocab, variant.get("embedding", 128), epochs=variant["pretrain"])
    original = train
    if variant.get("swap"):  # a copy of each sentence with words swapped (the vocabulary stays the originals')
        train = original + swap_words(original, variant["swap"], seed)
        print(f"    + {len(original)} copies with {variant['swap']:.0%} of their words swapped", flush=True)
    targets = None
    if variant.get("teachers"):
        folders = teacher_folders(args, cfg["variant"], seed)
        print(f"    soft targets from {', '.join(f.name for f in folders)}", flush=True)
        targets = soft_targets(
            folders,
            train,
            vocab,
            # the originals' share of the teachers, then the copies' (``swap_soft``, else the same)
            [variant["soft"]] * len(original)
            + [variant.get("swap_soft", variant["soft"])] * (len(train) - len(original)),
            folds=variant.get("out_of_fold"),
            min_count=cfg["min_count"],
            seen=original,
        )
    with cli.distribution(args):
        model, crf, tagger = build_model(vocab, cfg["variant"])
        for name, table in zip(("embedding", "bigram_embedding"), tables):
            model.get_layer(name).set_weights([table])
        # Corpus-order batches only (length-bucketed ones have little padding to save), and not under
        # --distribute: the strategy would split the packed rows and the batch's rows apart.
        packed = cfg["variant"] in PACKED and not cfg.get("bucket") and not args.distribute
        if packed:
            model = packed_model(model, crf, cfg["variant"])
        model.compile(
            optimizer=optimizer(variant, cfg["steps_per_epoch"], cfg["epochs"]),
            loss=crf.loss if targets is None else crf.soft_loss,
            metrics=[crf.accuracy] if targets is None else [],  # crf.accuracy reads tags, not soft targets
        )
        initial_epoch = checkpoint.restore(model)  # in the strategy's scope: it may build the optimizer
    segmenter = Segmenter(tagger, vocab)
    print(
        f"    {len(train)} training sentences, {len(heldout)} held out, {len(vocab['chars'])} characters, "
        f"{model.count_params():,} parameters",
        flush=True,
    )
    if initial_epoch < cfg["epochs"] and not checkpoint.stopped:
        stream = batches(
            train,
            vocab,
            start_step=initial_epoch * cfg["steps_per_epoch"],
            bucket=cfg.get("bucket", False),
            seed=seed,
            bigram_dropout=variant.get("bigram_dropout", 0.0),
            few_shapes=cfg.get("few_shapes", False),
            targets=targets,
        )
        model.fit(
            packed_batches(stream, len(variant["dilations"]), ROW_STEP if cfg.get("few_shapes") else 1)
            if packed
            else stream,
            steps_per_epoch=cfg["steps_per_epoch"],
            epochs=cfg["epochs"],
            initial_epoch=initial_epoch,
            shuffle=False,
            verbose=progress.fit_verbose(),
            callbacks=[
                EpochTimer(),
                HeldOutMetric(segmenter, heldout),
                PrintEpoch(keys=("loss", "accuracy", "heldout_word_set", "heldout_f1")),
                checkpoint,
            ],
        )
    history = checkpoint.history
    best_epoch = checkpoint.restore_best(model) if checkpoint.monitor else len(history.get("loss", [])) or None
    if checkpoint.monitor:
        print(f"    scoring the weights of epoch {best_epoch} (best held-out F1)")
    run_dir = args.save / f"{job.experiment}-seed{seed}"
    (run_dir / TRAINED_ON).unlink(missing_ok=True)  # a run killed before the new one is written leaves none
    segmenter.save(run_dir)
    # what a student checks its teachers against (soft_targets): the sentences, swapped copies aside
    record = {**trained_on(original), **({"swapped_copies": variant["swap"]} if variant.get("swap") else {})}
    runs.write_text_atomic(run_dir / TRAINED_ON, json.dumps(record))
    scores = evaluate(segmenter.cut_lines, test, gold, training_words, progress="segmenting the test set")
    metrics = {f"test_{k}": v for k, v in scores.items()}
    at = (best_epoch or 0) - 1  # the epoch whose weights are scored: the last, or the best with early stopping
    metrics["heldout_word_set"] = history["heldout_word_set"][at] if history.get("heldout_word_set") else None
    metrics["heldout_f1"] = history["heldout_f1"][at] if history.get("heldout_f1") else None
    metrics["epochs_trained"], metrics["scored_epoch"] = len(history.get("loss", [])), best_epoch
    metrics["epoch_time_s"] = float(np.median(history["epoch_time_s"])) if history.get("epoch_time_s") else None
    metrics["params"] = model.count_params()
    print(
        f"    test F1 {scores['f1']:.4f} (P {scores['precision']:.4f}, R {scores['recall']:.4f}, "
        f"OOV recall {scores['oov_recall']:.4f}), {scores['chars_per_s']:.0f} chars/s; model in {run_dir}",
        flush=True,
    )
    return metrics, history


def score_ensemble(job, checkpoint):
    """The trained seeds named in the config as one ``Ensemble``, scored on the test set."""
    folders = [job.spec["args"].save / name for name in job.config["models"]]
    missing = [str(f) for f in folders if not (f / "tagger.keras").is_file()]
    if missing:
        raise SystemExit(
            f"{job.experiment}: no trained model in {', '.join(missing)}; train those variants and "
            "seeds first (crf/train.py --variant ...) with the same --save"
        )
    _, test, gold, training_words = job.spec["corpus_data"]
    scores = evaluate(Ensemble.load(folders).cut_lines, test, gold, training_words, progress="segmenting the test set")
    print(
        f"    {len(folders)} models as one: test F1 {scores['f1']:.4f}, OOV recall {scores['oov_recall']:.4f}",
        flush=True,
    )
    return {f"test_{k}": v for k, v in scores.items()}, {}


def ensemble_models(args, name, seeds):
    """(variant, model folder name) of each member of the ensemble ``name``."""
    return [(v, model_name(args, v, s)) for v in ENSEMBLES[name] for s in seeds]


def jobs(args, corpus_data):
    """jieba first, then every variant and seed, then the ensembles asked for."""
    mode, corpus = MODES[args.mode], args.corpus
    seeds = cli.seeds(args, mode["seeds"])
    spec = {"args": args, "corpus_data": corpus_data}
    cut = {"test_lines": mode["test_lines"]} if mode.get("test_lines") else {}  # named only when the test set is cut
    on_lines = f", scored on the first {mode['test_lines']} test lines" if cut else ""
    out = [
        runs.Job(
            runs.experiment_name(f"jieba-{corpus}", args.mode),
            0,
            {"mode": "reference", "tool": "jieba 0.42.1 lcut (default mode)", "corpus": corpus, **cut},
            {
                **HEADLINE,
                "metric": "f1",
                "label": f"jieba default mode (a reference, not ours): {corpus.upper()} test F1",
            },
            "jieba's dictionary on the test text" + on_lines,
            {**spec, "run": run_jieba},
        )
    ]
    for variant in args.variant:
        heldout = heldout_size(args, variant)
        # ``checks``: held-out checks per epoch of the mode, as that many shorter epochs (same steps)
        checks = VARIANTS[variant].get("checks", 1)
        epochs = args.epochs or min(mode["epochs"], VARIANTS[variant].get("epochs", mode["epochs"]))
        epochs, steps = epochs * checks, max(mode["steps_per_epoch"] // checks, 1)
        config = {
            "mode": args.mode,
            "variant": variant,
            **VARIANTS[variant],
            "corpus": corpus,
            "epochs": epochs,
            "steps_per_epoch": steps,
            "batch_size": BATCH_SIZE,
            "optimizer": "adam",
            "heldout": heldout,
            "min_count": 2,
            **cut,
        }
        if mode.get("bucket"):
            config["bucket"] = True
        if args.distribute:  # named only when on (the reference records predate the option)
            config["distribute"] = True
        if FEW_SHAPES:
            config["few_shapes"] = True
        protocol = (
            f"{args.mode}: {epochs} x {steps} steps of {BATCH_SIZE} sentences"
            + (", length-bucketed" if config.get("bucket") else "")
            + (", padded to few lengths" if config.get("few_shapes") else "")
            + f", {heldout} held out"
            + on_lines
        )
        out += [
            runs.Job(
                runs.experiment_name(f"{variant}-{corpus}", args.mode),
                seed,
                config,
                HEADLINE,
                protocol,
                {**spec, "run": train_seed},
            )
            for seed in seeds
        ]
    for name in args.ensembles:
        per_seed = name in PER_SEED
        for group in [[seed] for seed in seeds] if per_seed else [seeds]:
            models = [model for _, model in ensemble_models(args, name, group)]
            label = (
                f"{HEADLINE['label']}; {len(models)} trained models as one ensemble (ensembles were compared "
                "on this test set, see crf/README.md)"
            )
            out.append(
                runs.Job(
                    runs.experiment_name(f"ensemble-{name}-{corpus}", args.mode),
                    group[0] if per_seed else 0,
                    {"mode": "evaluation", "corpus": corpus, "models": models},
                    {**HEADLINE, "label": label},
                    f"ensemble of the {len(models)} models of seed {group[0]}"
                    if per_seed
                    else f"ensemble of {len(models)} trained seeds",
                    {**spec, "run": score_ensemble},
                )
            )
    return out


"""## 6. Table"""


def summary(records):
    print(
        "\n| model | seeds | test F1 | precision | recall | OOV recall | IV recall | held-out word-set "
        "| s/epoch | chars/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for experiment in sorted({r["experiment"] for r in records}):
        rs = [r for r in records if r["experiment"] == experiment]
        key = "f1" if experiment.startswith("jieba") else "test_f1"
        prefix = "" if experiment.startswith("jieba") else "test_"
        # "-": no record of the row has the number (jieba trains nothing; a refit holds nothing out)
        col = lambda name, d=4, rs=rs: (
            runs.format_mean_std([r["metrics"].get(name) for r in rs], d)
            if any(r["metrics"].get(name) is not None for r in rs)
            else "-"
        )
        print(
            f"| {experiment} | {len(rs)} | {col(key)} | {col(prefix + 'precision')} | {col(prefix + 'recall')} "
            f"| {col(prefix + 'oov_recall')} | {col(prefix + 'iv_recall')} | {col('heldout_word_set')} "
            f"| {col('epoch_time_s', 0)} | {col(prefix + 'chars_per_s', 0)} |"
        )


def parser():
    """The command line (reproduce.py checks it before running anything)."""
    p = cli.parser(__doc__)
    p.add_argument(
        "--variant", choices=sorted(VARIANTS), nargs="+", default=["article"], help="model variants to train"
    )
    p.add_argument(
        "--ensembles",
        choices=sorted(ENSEMBLES),
        nargs="+",
        default=[],
        help="after training, score these ensembles of the trained seeds: strong (the strong seeds), "
        "all (strong and article seeds), fast_deep_m (each seed's three fast_deep_m members, one ensemble a seed)",
    )
    p.add_argument("--corpus", choices=["pku", "msr"], default="pku", help="bakeoff corpus (default pku)")
    p.add_argument(
        "--heldout",
        type=cli.at_least(0),
        default=None,
        help=f"training sentences held out (default {HELDOUT}; the strong variants' 1000; quick mode 1000)",
    )
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        help="where trained models go (default: runs/crf/ for runs/results/, runs/crf-reference/ for the reference, "
        "else <out>/models/)",
    )
    return p


def heldout_size(args, variant):
    """Training sentences a variant holds out: ``--heldout``, else the mode's, else the variant's."""
    if args.heldout is not None:
        return args.heldout
    return MODES[args.mode].get("heldout", VARIANTS[variant].get("heldout", HELDOUT))


def made_here(args, variant, seed, seeds, before):
    """Whether this run trains ``variant``'s ``seed`` before ``before``'s jobs: named earlier on the
    command line, among the run's seeds, and without a finished record (which it would reuse instead,
    leaving the model folder as it is), unless ``--force`` reruns it."""
    named = args.variant[: args.variant.index(before)]
    experiment = runs.experiment_name(f"{variant}-{args.corpus}", args.mode)
    recorded = runs.result_path(args.out, ARTICLE, experiment, seed).is_file() and not args.force
    return variant in named and seed in seeds and not recorded


def main(argv=None):
    p = parser()
    args = cli.parse(p, argv)
    args.save = args.save or runs.models_dir(args.out, ARTICLE)
    if args.save.exists() and not args.save.is_dir():
        p.error(f"--save {args.save} is a file, not a folder: models go into folders inside it")
    seeds = cli.seeds(args, MODES[args.mode]["seeds"])
    for name in args.ensembles:  # members that this run does not train must be there already
        missing = [
            str(args.save / model)
            for v, model in ensemble_models(args, name, seeds)
            if v not in args.variant and not (args.save / model / "tagger.keras").is_file()
        ]
        if missing:
            absent = sorted({v for v in ENSEMBLES[name] if v not in args.variant})
            p.error(
                f"--ensembles {name} needs trained models that are not there: {', '.join(missing)}; "
                f"add --variant {' '.join(absent)} to train them in this run (or pass --save where they are)"
            )
    for variant in args.variant:  # every teacher must be there already, or be trained earlier in this run
        teachers = VARIANTS[variant].get("teachers") or []
        if any(fixed is not None for _, fixed in teachers) and args.mode != "full":
            p.error(
                f"--variant {variant} is taught by models of fixed seeds trained on every sentence, which "
                f"only the full protocol makes; drop --{args.mode} for it"
            )
        needed = sorted(
            {
                (name, str(folder))
                for seed in seeds
                for (name, fixed), folder in zip(teachers, teacher_folders(args, variant, seed))
                if not (folder / "tagger.keras").is_file()
                and not made_here(args, name, seed if fixed is None else fixed, seeds, before=variant)
            }
        )
        if needed:
            p.error(
                f"--variant {variant} is taught by models that are not there: {', '.join(f for _, f in needed)}; "
                f"train them first, with the same mode and --save (add --variant "
                f"{' '.join(sorted({n for n, _ in needed}))} before {variant}, with their seeds), or pass --save "
                "where they are"
            )
    train_all = data.icwb2(args.corpus, "train")  # the only part the checks need: before the others
    for variant in args.variant:
        heldout = heldout_size(args, variant)
        if heldout >= len(train_all):
            option = (
                f"--heldout {heldout}" if args.heldout is not None else f"the {variant} variant's {heldout} held out"
            )
            p.error(
                f"{option} leaves nothing to train on: the {args.corpus} training set has "
                f"{len(train_all)} sentences; pass a smaller --heldout"
            )
    corpus_data = (train_all, *(data.icwb2(args.corpus, part) for part in ("test", "gold", "words")))
    test_lines = MODES[args.mode].get("test_lines")
    if test_lines:
        train_all, test, gold, training_words = corpus_data
        corpus_data = (train_all, test[:test_lines], gold[:test_lines], training_words)
    print(
        f"backend {keras.backend.backend()}, mode {args.mode}, corpus {args.corpus}, variants {args.variant}, "
        f"records in {args.out}"
    )
    records = runs.run_jobs(ARTICLE, jobs(args, corpus_data), args, lambda job, ckpt: job.spec["run"](job, ckpt))
    summary(records)
    report.print_judgement(claim(args.corpus), records, ARTICLE, args.mode)
    return records


if __name__ == "__main__":
    cli.run(main)
