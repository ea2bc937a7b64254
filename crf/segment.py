"""Segment Chinese text into words with a trained CNN-CRF model (crf/train.py).

    python crf/segment.py MODEL_DIR "我爱北京天安门"          # text as arguments
    python crf/segment.py MODEL_DIR --input in.txt --output out.txt
    cat in.txt | python crf/segment.py MODEL_DIR             # stdin -> stdout
    python crf/segment.py MODEL_DIR --input in.txt --ensemble MODEL_DIR2 MODEL_DIR3   # several models

Options may come before, between or after the text (``--ensemble`` takes every folder after it: put
it last). Give text arguments or ``--input``, not both; the text must be UTF-8.

Output: one line per input line, words separated by single spaces. Rules on top of the model:
spaces in the input are word boundaries, no boundary falls inside a run of ASCII letters and digits
such as ``Keras3`` or ``3.14`` (the model decides its edges: ``2001年`` stays one word), ASCII is read
as its full-width form (as the training corpora write it), an empty line stays empty, and characters
the model never saw are read as "unknown" (id 1) rather than dropped.

From Python::

    from crf.segment import Segmenter
    seg = Segmenter.load("runs/crf/strong-pku-seed0")
    seg.cut("我爱北京天安门")                 # ['我', '爱', '北京', '天安门']
    seg.cut_lines(lines, batch_size=256)    # batched: much faster for many lines

Speed: lines are sorted by length and batched (at most ``batch_size`` lines and ``max_chars``
padded characters per batch), the network runs in Keras and the Viterbi decoding in NumPy.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TAGS = "sbme"  # the article's tag ids: s = single-character word, b = begin, m = middle, e = end
PAD, UNKNOWN = 0, 1
_LATIN = re.compile(r"[A-Za-z0-9]+(?:[.'_-][A-Za-z0-9]+)*")


def word_tags(words):
    """The sbme tag ids of a segmented sentence: 单 s, 中国 b e, 天安门 b m e."""
    tags = []
    for word in words:
        tags += [0] if len(word) == 1 else [1] + [2] * (len(word) - 2) + [3]
    return tags


def tags_to_words(text, tags):
    """Cut ``text`` where the tags say a word begins (s or b, or after s or e). Tolerates any tags."""
    return _cut(text, _tag_starts(tags))


def _tag_starts(tags):
    return {0} | {i for i, t in enumerate(tags) if t in (0, 1)} | {i + 1 for i, t in enumerate(tags) if t in (0, 3)}


def _cut(text, starts):
    cuts = sorted(s for s in starts if 0 <= s < len(text)) + [len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


_FULL_WIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


def normalize(text):
    """What the model reads: ASCII letters, digits and punctuation as their full-width forms, which is
    how the bakeoff's training texts write them (PKU has no ASCII letters or digits at all), so
    ``2001年`` is read like ``２００１年``. The output keeps the original characters."""
    return text.translate(_FULL_WIDTH)


def bigrams(text):
    """The character bigram starting at each position: 中国人 -> 中国, 国人, 人</s>."""
    return [text[i : i + 2] if i + 1 < len(text) else text[i] + "</s>" for i in range(len(text))]


def _ids(units, min_count):
    counts = {}
    for unit in units:
        counts[unit] = counts.get(unit, 0) + 1
    kept = sorted((u for u, n in counts.items() if n >= min_count), key=lambda u: (-counts[u], u))
    return {unit: i for i, unit in enumerate(kept, start=2)}


def build_vocab(sentences, min_count=2, with_bigrams=False):
    """The model's vocabulary from training sentences: ``{"chars": {char: id}, "bigrams": {bigram: id}
    or None}``. Units seen at least ``min_count`` times (the article uses 2) get ids from 2, most
    frequent first; id 0 is padding and id 1 "unknown"."""
    texts = [normalize("".join(words)) for words in sentences]
    return {
        "chars": _ids((c for t in texts for c in t), min_count),
        "bigrams": _ids((b for t in texts for b in bigrams(t)), min_count) if with_bigrams else None,
    }


def encode(text, vocab):
    """Char ids of ``text`` (normalized; unknown characters -> 1)."""
    return [vocab["chars"].get(char, UNKNOWN) for char in normalize(text)]


def features(texts, vocab, length=None):
    """Model inputs for a batch of texts: char ids, plus bigram ids when the vocabulary has them;
    each (batch, length) int32, right-padded with 0."""
    chars = pad([encode(t, vocab) for t in texts], length=length)
    if not vocab.get("bigrams"):
        return chars
    table = vocab["bigrams"]
    return [chars, pad([[table.get(b, UNKNOWN) for b in bigrams(normalize(t))] for t in texts], length=chars.shape[1])]


def pad(rows, value=PAD, length=None):
    """Right-pad lists of ints into an int32 array (batch, max length)."""
    length = length or max((len(r) for r in rows), default=0) or 1
    out = np.full((len(rows), length), value, dtype="int32")
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class Encoder:
    """``features`` for a fixed vocabulary, in NumPy: the same arrays, several times faster on many
    texts (the segmenter's input side). Characters are looked up by code point in a table, bigrams
    by a sorted array of keys (first code point, next code point or ``</s>``); the full-width mapping
    of ``normalize`` is applied to the code points."""

    END = 0x110000  # stands for "</s>": one past the last code point

    def __init__(self, vocab):
        problem = _vocab_problem(vocab)
        if problem:
            raise ValueError(f"Encoder: {problem}; build the vocabulary with build_vocab()")
        chars = vocab["chars"]
        self.chars = np.full(max((ord(c) for c in chars), default=0) + 1, UNKNOWN, dtype="int32")
        for char, i in chars.items():
            self.chars[ord(char)] = i
        table, self.bigram_keys = vocab.get("bigrams"), None
        if table:
            keys = np.array([self._key(ord(b[0]), ord(b[1]) if len(b) == 2 else self.END) for b in table], "int64")
            order = np.argsort(keys)
            self.bigram_keys = keys[order]
            self.bigram_ids = np.array(list(table.values()), dtype="int32")[order]

    @classmethod
    def _key(cls, first, second):
        return first * (cls.END + 1) + second

    def __call__(self, texts, length=None):
        lengths = np.array([len(t) for t in texts], dtype="int64")
        width = length or int(lengths.max(initial=0)) or 1
        # every text's code points, one array; ASCII 0x21-0x7e read as full width (normalize())
        points = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype="<u4").astype("int64")
        points = np.where((points >= 0x21) & (points <= 0x7E), points + 0xFEE0, points)
        rows = np.repeat(np.arange(len(texts)), lengths)
        columns = np.arange(len(points)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids = np.where(points < len(self.chars), self.chars[np.minimum(points, len(self.chars) - 1)], UNKNOWN)
        chars = np.zeros((len(texts), width), dtype="int32")
        chars[rows, columns] = ids
        if self.bigram_keys is None:
            return chars
        last = columns == np.repeat(lengths - 1, lengths)
        keys = self._key(points, np.where(last, self.END, np.roll(points, -1)))
        at = np.minimum(np.searchsorted(self.bigram_keys, keys), len(self.bigram_keys) - 1)
        pairs = np.zeros_like(chars)
        pairs[rows, columns] = np.where(self.bigram_keys[at] == keys, self.bigram_ids[at], UNKNOWN)
        return [chars, pairs]


def _padded_rows(name, emissions, lengths, dtype):
    """``emissions`` (batch, T, K) as ``dtype`` and ``lengths`` (batch,) at most T as int64, or a
    ValueError naming ``name`` and the shapes."""
    emissions, lengths = np.asarray(emissions, dtype=dtype), np.asarray(lengths, dtype="int64")
    if (
        emissions.ndim != 3
        or lengths.shape != emissions.shape[:1]
        or np.any(lengths > emissions.shape[1])
        or np.any(lengths < 0)
    ):
        raise ValueError(
            f"{name}: emissions must be (batch, T, K) and lengths (batch,) from 0 to T, got "
            f"{emissions.shape} and lengths {lengths.tolist()[:8]}"
        )
    return emissions, lengths


def viterbi(emissions, lengths, transitions, start, end, as_array=False):
    """The best tag path of each row, in NumPy: ``emissions`` (batch, T, K) right-padded, ``lengths``
    (batch,) real steps per row, and the CRF's scores as ``CRF.decoding_scores`` gives them. Returns
    a list of tag lists (``[]`` for a row of length 0), or with ``as_array`` the (batch, T) array of
    tags (past a row's length: the tag its last step ended with).

    The same dynamic programme as ``CRF.decode`` (checked against it in tests/test_crf.py). The
    segmenter uses it because a loop step here costs microseconds, where a TensorFlow ``while_loop``
    step outside XLA costs about a hundred: on the PKU test text the in-graph decoding took as long
    as the convolutions.
    """
    emissions, lengths = _padded_rows("viterbi", emissions, lengths, "float32")
    batch, steps, num = emissions.shape
    if steps == 0:
        return np.zeros((batch, 0), dtype="int32") if as_array else [[] for _ in lengths]
    transitions = np.asarray(transitions, dtype="float32")[None]
    stay = np.arange(num, dtype="int32")[None, :]
    score = np.asarray(start, dtype="float32")[None, :] + emissions[:, 0]
    pointers = np.empty((steps, batch, num), dtype="int32")
    by_step = np.ascontiguousarray(emissions.transpose(1, 0, 2))  # (T, batch, K): each step's rows together
    shortest = int(lengths.min(initial=steps))
    for t in range(1, steps):
        extended = score[:, :, None] + transitions  # [b, i, j]: best path ending in i, then i -> j
        came_from = extended.argmax(axis=1)
        best = extended.max(axis=1)
        if t < shortest:  # every row is still real (the segmenter's batches hold similar lengths)
            score = best + by_step[t]
            pointers[t] = came_from
            continue
        real = (t < lengths)[:, None]
        score = np.where(real, best + by_step[t], score)  # padding steps keep the state ...
        pointers[t] = np.where(real, came_from, stay)  # ... and point back to themselves
    tags = np.empty((batch, steps), dtype="int32")
    cursor = (score + np.asarray(end, dtype="float32")[None, :]).argmax(axis=1).astype("int32")
    rows = np.arange(batch)
    for t in range(steps - 1, -1, -1):
        tags[:, t] = cursor
        if t:
            cursor = pointers[t, rows, cursor]
    return tags if as_array else [tags[i, :n].tolist() for i, n in enumerate(lengths)]


def _log_sum_exp(a, axis):
    """log(sum(exp(a))) over ``axis`` in float64: -inf (no warning) where every term is -inf."""
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - top), axis=axis)) + np.squeeze(top, axis)


def path_marginals(emissions, lengths, transitions, start, end):
    """What a CRF expects of each step, in float64 by forward-backward: ``emissions`` (batch, T, K)
    right-padded, ``lengths`` (batch,), the scores as ``CRF.decoding_scores`` gives them. Returns
    (batch, T, K + K * K): at each real step t, p(y_t = j) for each tag j, then p(y_{t-1} = i, y_t = j)
    for each pair (i, j), row-major (zeros at step 0 and on padding): the targets of
    ``CRF.soft_loss``. A row that no path can take (the rules or -inf emissions) raises ValueError.
    """
    emissions, lengths = _padded_rows("path_marginals", emissions, lengths, "float64")
    batch, steps, num = emissions.shape
    out = np.zeros((batch, steps, num + num * num))
    if steps == 0:
        return out
    trans = np.asarray(transitions, dtype="float64")[None]
    start, end = np.asarray(start, dtype="float64"), np.asarray(end, dtype="float64")
    if trans.shape[1:] != (num, num) or start.shape != (num,) or end.shape != (num,):
        raise ValueError(
            f"path_marginals: transitions must be ({num}, {num}) and start and end ({num},) for {num} tags, "
            f"got {trans.shape[1:]}, {start.shape} and {end.shape}"
        )
    alphas = np.empty((batch, steps, num))
    alphas[:, 0] = start[None] + emissions[:, 0]
    for t in range(1, steps):  # past a row's end: carried, so the last step holds the last real one
        new = _log_sum_exp(alphas[:, t - 1, :, None] + trans, 1) + emissions[:, t]
        alphas[:, t] = np.where((t < lengths)[:, None], new, alphas[:, t - 1])
    log_z = _log_sum_exp(alphas[:, -1] + end[None], 1)
    if np.any(~np.isfinite(log_z) & (lengths > 0)):
        rows = np.flatnonzero(~np.isfinite(log_z) & (lengths > 0)).tolist()[:8]
        raise ValueError(f"path_marginals: rows {rows} have no possible tag path (or non-finite scores)")
    betas = np.empty((batch, steps, num))
    betas[:, -1] = end[None]
    for t in range(steps - 2, -1, -1):
        new = _log_sum_exp(trans + (emissions[:, t + 1] + betas[:, t + 1])[:, None, :], 2)
        betas[:, t] = np.where((t + 1 < lengths)[:, None], new, end[None])
    real = np.arange(steps)[None, :] < lengths[:, None]
    with np.errstate(invalid="ignore"):  # -inf - -inf on padding, masked below
        out[..., :num] = np.exp(alphas + betas - log_z[:, None, None])
        pairs = alphas[:, :-1, :, None] + trans + (emissions[:, 1:] + betas[:, 1:])[:, :, None, :]
        out[:, 1:, num:] = np.exp(pairs - log_z[:, None, None, None]).reshape(batch, steps - 1, num * num)
    return np.where(real[..., None], out, 0.0)


class Segmenter:
    """A trained tagger (Keras model: char ids -> sbme tags, ending in a CRF layer) and its vocabulary.

    Tagging runs the network up to the CRF's input (the emission scores) in Keras, batched, and
    the Viterbi decoding in NumPy (``viterbi``): same paths as the tagger's own decoding, faster on
    CPU. ``host_decode=False``, or a tagger that does not end in a CRF, runs the tagger as it is.
    """

    def __init__(self, tagger, vocab, jit_compile=False, host_decode=True):
        self.tagger = tagger
        self.vocab = vocab
        self.emissions, self.crf = _split_tagger(tagger) if host_decode else (None, None)
        self.encoder = Encoder(vocab)
        if jit_compile:  # XLA on TensorFlow: one compile per (batch, padded length) shape
            (self.emissions or tagger).compile(jit_compile=True)

    @classmethod
    def load(cls, path, jit_compile=False, host_decode=True):
        """Load ``path/tagger.keras`` and ``path/vocab.json`` (what crf/train.py saves). A missing file
        raises ``FileNotFoundError``, a file given as the folder ``NotADirectoryError``, a folder where a
        file belongs ``IsADirectoryError``; a file that is there but corrupt, a damaged vocabulary, or a
        vocabulary that is not the tagger's, raises ``utils.runs.ModelFileError``; all name the file."""
        from crf import layers  # noqa: F401  (registers CRF for deserialization)
        from utils.runs import ModelFileError, load_model_file, model_folder

        remedy = "train the model again (python crf/train.py writes tagger.keras and vocab.json into each model folder)"
        path = model_folder(path, ("tagger.keras", "vocab.json"), remedy, "crf/train.py")
        vocab = _read_vocab(path / "vocab.json", remedy)
        problem = _vocab_problem(vocab)
        if problem:
            raise ModelFileError(f"{path / 'vocab.json'}: {problem}: the model folder is damaged; {remedy}")
        tagger = load_model_file(path / "tagger.keras", remedy)
        problems, inputs, made = [], len(getattr(tagger, "inputs", None) or [None]), 1 + bool(vocab.get("bigrams"))
        if inputs != made:  # characters, and bigrams when the vocabulary has them (features())
            problems.append(f"the model reads {inputs} input(s), the vocabulary makes {made}")
        for layer, table in (("embedding", vocab["chars"]), ("bigram_embedding", vocab.get("bigrams"))):
            rows = _embedding_rows(tagger, layer)
            if rows is not None and table and max(table.values()) >= rows:
                problems.append(f"its {layer} has {rows} rows, the vocabulary has ids up to {max(table.values())}")
        if problems:
            raise ModelFileError(
                f"{path / 'vocab.json'} does not fit {path / 'tagger.keras'} ({'; '.join(problems)}): the two "
                f"files are from different models; {remedy}"
            )
        return cls(tagger, vocab, jit_compile, host_decode)

    def save(self, path):
        from utils.runs import save_model_atomic, write_text_atomic

        path = Path(path)
        save_model_atomic(self.tagger, path / "tagger.keras")
        write_text_atomic(path / "vocab.json", json.dumps(self.vocab, ensure_ascii=False))

    def tag(self, texts, batch_size=256, max_chars=16384, progress=None):
        """sbme tag ids for each text (no spaces expected). Texts are sorted by length and batched:
        at most ``batch_size`` texts and ``max_chars`` padded positions per batch (long texts go in
        smaller batches), each padded a little (``padded_length``: few shapes, few retraces). ``progress``:
        a label; a progress bar then counts the characters on standard error (in a terminal, for
        100,000 characters or more)."""
        out = [None] * len(texts)
        for chunk, tags, lengths in self._tag_batches(texts, batch_size, max_chars, progress):
            for row, (i, n) in enumerate(zip(chunk, lengths)):
                out[i] = tags[row, :n].tolist()
        return out

    def path_marginals(self, texts, temperature=1.0, batch_size=256, max_chars=16384):
        """For each text (no spaces), what this segmenter's CRF expects of each step (``path_marginals``)
        with every score divided by ``temperature``: a float32 array (len(text), K + K * K), the targets
        ``CRF.soft_loss`` takes (distillation). An ``Ensemble`` adds its members' scores: with
        ``temperature`` = the number of members, the distribution is that of their mean scores."""
        if self.crf is None:
            raise ValueError("path_marginals: the segmenter must decode on the host (host_decode=True)")
        if not temperature > 0:
            raise ValueError(f"path_marginals: temperature must be positive, got {temperature}")
        scores = [s / temperature for s in self._crf_scores()]
        out = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for chunk in _batches(order, [len(texts[i]) for i in order], batch_size, max_chars):
            batch = [texts[i] for i in chunk]
            longest = len(batch[-1])
            emissions = self._emission_scores(batch, padded_length(longest))[:, :longest] / temperature
            expected = path_marginals(emissions, [len(t) for t in batch], *scores)
            for row, i in enumerate(chunk):
                out[i] = expected[row, : len(texts[i])].astype("float32")
        return out

    def _tag_batches(self, texts, batch_size, max_chars, progress):
        """``tag``'s work, batch by batch: (indices into ``texts``, their tags (batch, longest), their
        lengths), from the texts sorted by length."""
        from utils.progress import Bar

        bar = Bar(sum(len(t) for t in texts), progress, minimum=100_000) if progress else None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        crf_scores = self._crf_scores() if self.crf is not None else None
        for chunk in _batches(order, [len(texts[i]) for i in order], batch_size, max_chars):
            batch = [texts[i] for i in chunk]
            longest, lengths = len(batch[-1]), [len(t) for t in batch]
            if crf_scores is None:
                tags = np.asarray(self.tagger.predict_on_batch(self.encoder(batch, padded_length(longest))))
            else:
                emissions = self._emission_scores(batch, padded_length(longest))[:, :longest]
                tags = viterbi(emissions, lengths, *crf_scores, as_array=True)
            yield chunk, tags, lengths
            if bar is not None:
                bar.add(sum(lengths))
        if bar is not None:
            bar.close()

    def _crf_scores(self):
        """The CRF's (transitions, start, end) as NumPy arrays, for ``viterbi``."""
        import keras

        return [keras.ops.convert_to_numpy(s) for s in self.crf.decoding_scores()]

    def _emission_scores(self, texts, length):
        """Emission scores (len(texts), length, K) of a batch of texts padded to ``length``."""
        return np.asarray(self.emissions.predict_on_batch(self.encoder(texts, length)))[..., : self.crf.num_tags]

    def cut_lines(self, lines, batch_size=256, max_chars=16384, progress=None):
        """Segment many lines at once; returns a list of word lists (``[]`` for an empty line).
        ``progress``: a label for a progress bar on standard error (see ``tag``)."""
        texts = ["".join(line.split()) for line in lines]
        todo = [i for i, t in enumerate(texts) if t]
        out = [[] for _ in lines]
        for chunk, tags, lengths in self._tag_batches([texts[i] for i in todo], batch_size, max_chars, progress):
            for i, starts in zip(chunk, _word_starts(tags, lengths)):
                out[todo[i]] = _apply_rules(lines[todo[i]], texts[todo[i]], starts)
        return out

    def cut(self, text):
        return self.cut_lines([text])[0]


class Ensemble(Segmenter):
    """Several trained segmenters as one: for each text, every member's emission scores (from its
    own vocabulary) and CRF scores are added and Viterbi runs on the sums, so the path chosen is
    the one with the highest total score over the members (the argmax of the product of their
    CRFs). Members must use the same tags; they may differ in network and vocabulary (crf/train.py
    gives each seed its own split, so its own vocabulary).

        seg = Ensemble.load(["runs/crf/strong-pku-seed0", "runs/crf/strong-pku-seed1"])
        seg.cut("我爱北京天安门")
    """

    def __init__(self, members):
        members = list(members)
        if not members:
            raise ValueError("Ensemble: no members")
        for m in members:
            if m.crf is None:
                raise ValueError(
                    "Ensemble: every member must decode on the host (a tagger made by crf(..., decode=True))"
                )
            if m.crf.num_tags != members[0].crf.num_tags:
                raise ValueError(f"Ensemble: members have {members[0].crf.num_tags} and {m.crf.num_tags} tags")
        self.members = members
        self.tagger, self.vocab, self.emissions, self.crf = None, None, None, members[0].crf

    @classmethod
    def load(cls, paths, jit_compile=False):
        return cls([Segmenter.load(path, jit_compile) for path in paths])

    def save(self, path):
        raise NotImplementedError("an Ensemble is saved as its members' folders; save each member")

    def _crf_scores(self):
        return [sum(parts) for parts in zip(*(m._crf_scores() for m in self.members))]

    def _emission_scores(self, texts, length):
        return sum(m._emission_scores(texts, length) for m in self.members)


def _read_vocab(path, remedy):
    """The JSON object in ``path`` (a byte-order mark at the start is accepted), or a ``ModelFileError``
    naming the file: not JSON, nested too deeply to read, a key twice (JSON would keep the last)."""
    from utils.runs import ModelFileError, load_json_file

    def no_key_twice(pairs):
        keys = set()
        for key, _ in pairs:
            if key in keys:
                raise ModelFileError(f"{path}: the key {key!r} appears twice: the model folder is damaged; {remedy}")
            keys.add(key)
        return dict(pairs)

    return load_json_file(path, remedy, object_pairs_hook=no_key_twice)


def _vocab_problem(vocab):
    """What makes ``vocab`` other than what ``build_vocab`` gives, or None: tables of single characters
    (chars) or two-character bigrams (a last character and ``</s>`` too), each unit with its own id from
    2 (0 is padding, 1 unknown)."""
    if not (
        isinstance(vocab, dict)
        and isinstance(vocab.get("chars"), dict)
        and (vocab.get("bigrams") is None or isinstance(vocab["bigrams"], dict))
    ):
        return 'not a segmenter\'s vocabulary (expected {"chars": {character: id}, "bigrams": {bigram: id} or null})'
    for table in ("chars", "bigrams"):
        ids = {}
        for unit, i in (vocab.get(table) or {}).items():
            if type(i) is not int or i < 2:
                return f'"{table}" entry {unit!r} has id {i!r}, not an integer from 2'
            if table == "chars" and len(unit) != 1:
                return f'"chars" entry {unit!r} is not one character'
            if table == "bigrams" and not (len(unit) == 2 or (len(unit) == 5 and unit.endswith("</s>"))):
                return f'"bigrams" entry {unit!r} is not two characters (or a character and </s>)'
            if i in ids:
                return f'"{table}" entries {ids[i]!r} and {unit!r} have the same id, {i}'
            ids[i] = unit
    return None


def _embedding_rows(tagger, name):
    """Rows of the tagger's embedding table ``name`` (as crf/train.py names them), None without one."""
    try:
        return int(tagger.get_layer(name).input_dim)
    except (ValueError, AttributeError):
        return None


def padded_length(length):
    """Padded length for a batch whose longest text has ``length`` characters: rounded up to a step
    of 8 below 64, then a quarter of the power of two below (64, 80, 96, 112, 128, 160, ...), so
    padding stays under 25% from 32 characters on (under 8 below) and a file needs few distinct
    shapes (retraces, or XLA compiles)."""
    length = max(length, 1)
    step = max(8, 1 << max(length.bit_length() - 3, 0))
    return -(-length // step) * step


def _batches(order, lengths, batch_size, max_chars):
    """Cut ``order`` (sorted by ``lengths``, ascending) into batches of at most ``batch_size`` items
    and ``max_chars`` padded positions; an item longer than ``max_chars`` gets a batch alone."""
    if batch_size < 1 or max_chars < 1:
        raise ValueError(f"batch_size and max_chars must be at least 1, got {batch_size} and {max_chars}")
    batch = []
    for item, length in zip(order, lengths):
        if batch and (len(batch) == batch_size or (len(batch) + 1) * padded_length(length) > max_chars):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _split_tagger(tagger):
    """(model from the tagger's inputs to its CRF's emissions, the CRF), or (None, None) when the
    tagger's output is not a CRF's decoding. The CRF may also sit in another model (crf/train.py
    shares it with the training model), so the call that made the tagger's output is looked up."""
    import keras

    outputs = getattr(tagger, "outputs", None) or [None]
    for node in getattr(tagger.layers[-1] if tagger.layers else None, "_inbound_nodes", []):
        args, kwargs = node.arguments.args, node.arguments.kwargs
        if (
            hasattr(node.operation, "decoding_scores")
            and any(o is outputs[0] for o in node.outputs)
            and args
            and kwargs.get("decode")
            and (kwargs.get("mask") is None or kwargs.get("mask") is tagger.inputs[0])
        ):
            # Host decoding assumes what features() builds: right padding after each text, and a
            # mask that is the char ids (or the Keras mask of their embedding).
            return keras.Model(tagger.inputs, args[0]), node.operation
    return None, None


def apply_rules(line, tags):
    """Words of ``line`` from sbme ``tags`` of its characters (spaces removed): a word starts where a
    tag is s or b or follows an s or e, and where the line had a space; no word boundary falls inside
    a run of ASCII letters and digits (``Keras3``, ``3.14``), whose edges the model still decides."""
    text = "".join(line.split())
    return _apply_rules(line, text, sorted(s for s in _tag_starts(tags) if s < len(text)))


def _word_starts(tags, lengths):
    """``_tag_starts`` for a batch: ``tags`` (batch, T), ``lengths`` real steps per row; a sorted list
    of word starts per row."""
    tags = np.asarray(tags)
    begins = (tags == 0) | (tags == 1)  # s or b
    begins[:, 1:] |= (tags[:, :-1] == 0) | (tags[:, :-1] == 3)  # after s or e
    if begins.shape[1]:
        begins[:, 0] = True
    return [np.flatnonzero(begins[row, :n]).tolist() for row, n in enumerate(lengths)]


def _apply_rules(line, text, starts):
    """``apply_rules`` given ``text`` (the line without spaces) and the tags' sorted word ``starts``."""
    if len(text) == len(line) and not _LATIN.search(text):
        return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]  # nothing to apply
    starts = set(starts)
    offset = 0
    for part in line.split():
        starts.add(offset)
        for run in _LATIN.finditer(part):
            starts -= set(range(offset + run.start() + 1, offset + run.end()))
        offset += len(part)
    return _cut(text, starts)


def main(argv=None):
    from utils.runs import model_folder_argument

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "model",
        type=model_folder_argument("crf/train.py"),
        help="a model folder written by crf/train.py (tagger.keras + vocab.json)",
    )
    p.add_argument("text", nargs="*", help="text to segment (default: --input, else stdin)")
    p.add_argument("--input", type=Path, help="a UTF-8 file, one text per line")
    p.add_argument("--output", type=Path, help="write here instead of stdout")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--ensemble",
        type=model_folder_argument("crf/train.py"),
        nargs="+",
        default=[],
        metavar="MODEL",
        help="more model folders: their scores are added to MODEL's (slower, usually more accurate)",
    )
    args = p.parse_intermixed_args(argv)  # options before, between or after the text
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.text and args.input:
        p.error(f"text arguments and --input {args.input} are two inputs: give one (the text, or the file)")
    for number, text in enumerate(args.text, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # bytes that were not UTF-8 reach argv as surrogate escapes
            bad = os.fsencode(text[err.start : err.end])
            p.error(
                f"text argument {number} is not valid UTF-8 (bytes {bad!r} at character {err.start + 1}): give "
                "UTF-8 text, or convert it to a UTF-8 file and pass --input (iconv -f GBK -t UTF-8, ...)"
            )
    if args.input and not args.input.is_file():
        p.error(
            f"--input {args.input} is a folder, not a file"
            if args.input.is_dir()
            else f"--input {args.input}: no such file"
        )
    if args.output and args.output.is_dir():
        p.error(f"--output {args.output} is a folder: give a file name")
    if args.output and not args.output.parent.is_dir():
        p.error(f"--output {args.output}: the folder {args.output.parent} does not exist; create it first")
    for folder in args.ensemble:
        if not folder.is_dir():
            p.error(
                f"--ensemble {folder}: no such model folder (--ensemble takes every argument after it: "
                "give the text before --ensemble)"
            )
    from utils.data import CorpusFormatError, read_lines
    from utils.runs import ModelFileError

    try:
        if args.text:
            lines = args.text
        else:
            source = args.input if args.input else sys.stdin.buffer
            lines = [line for _, line in read_lines(source)]
        segmenter = Ensemble.load([args.model, *args.ensemble]) if args.ensemble else Segmenter.load(args.model)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, CorpusFormatError, ModelFileError) as err:
        p.error(str(err))
    words = segmenter.cut_lines(lines, args.batch_size, progress=f"segmenting {len(lines):,} lines")
    out = "".join(" ".join(line) + "\n" for line in words)
    if args.output:
        from utils.runs import write_text_atomic

        write_text_atomic(args.output, out)
    else:
        sys.stdout.write(out)


if __name__ == "__main__":
    main()
