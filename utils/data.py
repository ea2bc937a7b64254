"""Datasets the articles use, read from a local data folder first and downloaded otherwise.

Every loader looks for its files in this order:

1. the folder named by the environment variable ``KEXUE_DATA`` (layout below), so offline machines
   can point it at a copy;
2. the Keras cache (``~/.keras/datasets``, or ``$KERAS_HOME/datasets``), where step 3 leaves them;
3. a download from the original source with ``keras.utils.get_file``.

If all three fail, ``DatasetNotFoundError`` names the variable, the path it expected and the URL.

Layout of ``$KEXUE_DATA``::

    mnist/mnist.npz                                   Keras's mnist.npz arrays
    imdb/imdb.npz, imdb/imdb_word_index.json          Keras's IMDB arrays and word index
    icwb2/training/{pku,msr}_training.utf8            SIGHAN 2005 bakeoff (icwb2-data layout)
    icwb2/testing/{pku,msr}_test.utf8
    icwb2/gold/{pku,msr}_test_gold.utf8, icwb2/gold/{pku,msr}_training_words.utf8
    chinese_poetry/poet.tang.zhCN.tar.xz              chinese-poetry-zhCN poetry/poet.tang.*.json

MNIST and IMDB are read with ``np.load`` rather than ``keras.datasets.*.load_data()``: copies that hold
the same arrays in a differently written ``.npz`` fail that function's hash check, which then tries to
download.
"""

import functools
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np

DATA_ENV = "KEXUE_DATA"

_KERAS_DATASETS = "https://storage.googleapis.com/tensorflow/tf-keras-datasets"
_ICWB2_URL = "http://sighan.cs.uchicago.edu/bakeoff2005/data/icwb2-data.zip"
_POETRY_COMMIT = "61dd34ea89b2f7d2a40f948a0460180951ba561f"
_POETRY_URL = (
    f"https://raw.githubusercontent.com/chinese-poetry/chinese-poetry-zhCN/{_POETRY_COMMIT}/poetry/poet.tang.{{}}.json"
)
_POETRY_FILES = range(0, 58000, 1000)  # poet.tang.0.json ... poet.tang.57000.json


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is neither in the data folder nor in the cache, and could not be downloaded."""


class CorpusFormatError(ValueError):
    """A corpus file has a line that cannot be read; the message names the file and line."""


def data_dir():
    """The data folder named by ``$KEXUE_DATA``, or None when the variable is unset or empty."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _cache_dir():
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def locate(relpath, url, *, cache_name=None, file_hash=None, archive_member=None):
    """Return a local path for ``relpath`` (a path inside the data folder layout).

    Args:
        relpath: e.g. ``"mnist/mnist.npz"``.
        url: where a real user downloads it from.
        cache_name: file name in the Keras cache (default: ``relpath``'s name).
        file_hash: sha256 or md5 of the download, checked by ``get_file``.
        archive_member: when ``url`` is an archive, the member's path inside it (``get_file``
            extracts the archive into the cache and this member is returned).
    """
    root = data_dir()
    if root is not None and (root / relpath).is_file():
        return root / relpath

    cache_name = cache_name or Path(relpath).name
    if archive_member is None:
        cached = _cache_dir() / cache_name
    else:  # get_file extracts "name.zip" into "name_extracted/"
        cached = _cache_dir() / f"{cache_name.split('.')[0]}_extracted" / archive_member
    if cached.is_file():
        return cached

    import keras  # imported late: reading the data folder must not need a backend

    try:
        got = keras.utils.get_file(cache_name, origin=url, file_hash=file_hash, extract=archive_member is not None)
    except Exception as err:  # network down, 404, hash mismatch: all end the same way for a user
        expected = root / relpath if root is not None else f"${DATA_ENV}/{relpath} (variable unset)"
        raise DatasetNotFoundError(
            f"dataset file {relpath!r} not found.\n"
            f"  looked in: {expected}\n"
            f"  and in the Keras cache: {cached}\n"
            f"  download from {url} failed: {type(err).__name__}: {err}\n"
            f"Set {DATA_ENV} to a folder laid out like the project's data folder "
            f"(see utils/data.py), or download {url} yourself."
        ) from err
    if archive_member is None:
        return Path(got)
    if (Path(got) / archive_member).is_file():
        return Path(got) / archive_member
    raise DatasetNotFoundError(f"{url} was downloaded to {got} but has no member {archive_member!r}")


# --------------------------------------------------------------------------------------------------
# MNIST and IMDB (Keras layouts)


def mnist():
    """MNIST as Keras gives it: ``(x_train, y_train), (x_test, y_test)``.

    Shapes and dtypes: x_train (60000, 28, 28) uint8, y_train (60000,) uint8, x_test (10000, 28, 28)
    uint8, y_test (10000,) uint8.
    """
    path = locate(
        "mnist/mnist.npz",
        f"{_KERAS_DATASETS}/mnist.npz",
        file_hash="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    )
    with np.load(path) as f:
        return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])


def imdb(num_words=None, seed=113, start_char=1, oov_char=2, index_from=3):
    """IMDB reviews as word-id lists, built as ``keras.datasets.imdb.load_data`` builds them.

    Word ranks from the file are shifted by ``index_from`` and each review starts with ``start_char``;
    ids ``>= num_words`` (default: the largest id, as in Keras) become ``oov_char``, or are dropped
    when ``oov_char`` is None. Train and test are shuffled with ``seed`` as Keras does. Returns
    ``(x_train, y_train), (x_test, y_test)``: x arrays of shape (25000,) holding Python lists of ints,
    y int64 arrays of shape (25000,), 1 = positive. (Keras's ``skip_top`` and ``maxlen`` filters are
    not offered; truncate with ``keras.utils.pad_sequences``.)
    """
    path = locate(
        "imdb/imdb.npz",
        f"{_KERAS_DATASETS}/imdb.npz",
        file_hash="69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
    )
    with np.load(path, allow_pickle=True) as f:
        x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]

    # One generator for both shuffles, train first: this is what makes Keras's order.
    rng = np.random.RandomState(seed)
    order = np.arange(len(x_train))
    rng.shuffle(order)
    x_train, y_train = x_train[order], y_train[order]
    order = np.arange(len(x_test))
    rng.shuffle(order)
    x_test, y_test = x_test[order], y_test[order]

    start = [] if start_char is None else [start_char]
    reviews = [start + [w + index_from for w in review] for review in (*x_train, *x_test)]
    # Keras's default vocabulary is "every id seen", and its test is ``id < num_words``, so even then
    # the single largest id becomes ``oov_char``.
    num_words = num_words or max(max(r) for r in reviews)
    if oov_char is None:
        reviews = [[w for w in r if w < num_words] for r in reviews]
    else:
        reviews = [[w if w < num_words else oov_char for w in r] for r in reviews]

    def as_objects(lists):  # a 1-D array of lists, as Keras returns, whatever the lengths
        out = np.empty(len(lists), dtype=object)
        for i, ids in enumerate(lists):
            out[i] = ids
        return out

    n = len(x_train)
    return (as_objects(reviews[:n]), y_train), (as_objects(reviews[n:]), y_test)


def imdb_word_index():
    """Keras's IMDB word index: word -> rank (1 = most frequent), before ``index_from`` shifts it."""
    path = locate(
        "imdb/imdb_word_index.json",
        f"{_KERAS_DATASETS}/imdb_word_index.json",
        file_hash="bfafd718b763782e994055a2d397834f",
    )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------
# SIGHAN 2005 word segmentation (icwb2-data)

_ICWB2_PARTS = {
    "train": "training/{}_training.utf8",
    "test": "testing/{}_test.utf8",
    "gold": "gold/{}_test_gold.utf8",
    "words": "gold/{}_training_words.utf8",
}


def read_lines(path):
    """Yield ``(line_number, text)`` for each line of a UTF-8 file (a path, or a binary stream such
    as ``sys.stdin.buffer``), without the line end.

    A line that is not valid UTF-8 raises ``CorpusFormatError`` naming the file, the line and the
    offending bytes. A BOM at the start is dropped; CRLF and LF endings are both accepted, and only
    they end a line.
    """
    if hasattr(path, "read"):
        stream, path = path, getattr(path, "name", "<stream>")
    else:
        stream = open(path, "rb")
    with stream as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.end]
                raise CorpusFormatError(
                    f"{path}:{number}: not valid UTF-8 (bytes {bad!r} at column {err.start + 1})"
                ) from None
            if number == 1:
                text = text.lstrip("\ufeff")
            yield number, text.rstrip("\r\n")


def icwb2(corpus="pku", part="train"):
    """Read one file of the SIGHAN 2005 bakeoff data (``corpus`` is ``"pku"`` or ``"msr"``).

    ``part``:
      - ``"train"``: the training set, a list of sentences, each a list of words. Any run of
        whitespace separates words (the bakeoff's two spaces, a tab, stray spaces at either end);
        blank lines are dropped (they hold no words).
      - ``"gold"``: the gold segmentation of the test set, one list of words per line; blank lines
        are kept as ``[]`` so line ``i`` matches line ``i`` of ``"test"``.
      - ``"test"``: the unsegmented test input, one string per line (blank lines kept as ``""``).
      - ``"words"``: the official training-word list, a set of strings (what the bakeoff scorer
        counts as in-vocabulary).

    Note: on the project's offline machines ``pku_training.utf8`` is a reconstruction from the
    People's Daily 1998-01 corpus, not the bakeoff's own file (see the data folder's README).
    """
    if corpus not in ("pku", "msr"):
        raise ValueError(f"icwb2 corpus must be 'pku' or 'msr', got {corpus!r}")
    if part not in _ICWB2_PARTS:
        raise ValueError(f"icwb2 part must be one of {sorted(_ICWB2_PARTS)}, got {part!r}")
    member = _ICWB2_PARTS[part].format(corpus)
    path = locate(f"icwb2/{member}", _ICWB2_URL, cache_name="icwb2-data.zip", archive_member=f"icwb2-data/{member}")
    lines = read_lines(path)
    if part == "train":
        return [words for _, line in lines if (words := line.split())]
    if part == "gold":
        return [line.split() for _, line in lines]
    if part == "test":
        return [line.strip() for _, line in lines]
    return {line.strip() for _, line in lines if line.strip()}


# --------------------------------------------------------------------------------------------------
# Tang poems (chinese-poetry-zhCN)


def tang_poems():
    """The 57,591 Tang poems of chinese-poetry-zhCN (simplified characters), in corpus order.

    Each poem is a dict with ``author``, ``title``, ``paragraphs`` (list of lines, usually one couplet
    each, with ``，`` and ``。``) and ``strains`` (tone patterns). The poems are read once per process
    and data folder (reading the archive takes seconds); each call returns a new list of the same
    dicts, which callers must not change.
    """
    return list(_read_tang_poems(str(data_dir())))


@functools.lru_cache(maxsize=1)
def _read_tang_poems(_folder):
    root = data_dir()
    archive = root / "chinese_poetry/poet.tang.zhCN.tar.xz" if root is not None else None
    if archive is not None and archive.is_file():
        poems = {}
        with tarfile.open(archive, "r:xz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name.startswith("poet.tang.") and name.endswith(".json"):
                    poems[int(name.split(".")[2])] = json.load(io.TextIOWrapper(tar.extractfile(member), "utf-8"))
        return [poem for key in sorted(poems) for poem in poems[key]]
    # No local archive: fetch the 58 JSON files one by one into the Keras cache.
    out = []
    for n in _POETRY_FILES:
        try:
            path = locate(f"chinese_poetry/poet.tang.{n}.json", _POETRY_URL.format(n))
        except DatasetNotFoundError as err:
            expected = (
                archive if archive is not None else f"${DATA_ENV}/chinese_poetry/poet.tang.zhCN.tar.xz (variable unset)"
            )
            raise DatasetNotFoundError(
                f"Tang poems not found.\n  looked for the archive: {expected}\n"
                f"  then tried to download poet.tang.{n}.json: {err}"
            ) from err
        with open(path, encoding="utf-8") as f:
            out.extend(json.load(f))
    return out


# The article's unit (vae_shi.py, kexue.fm/archives/5332): a poem whose text opens with a
# five-character couplet (5 characters, '，', 5 characters, '。') is cut at every '。', and each piece
# of 5 characters + '，' + 5 characters becomes one 10-character sample, the comma dropped.
_HAN = "\u4e00-\u9fff"  # the CJK Unified Ideographs block: what the corpus's poems are written in
_OPENS_FIVE = re.compile(f"^[{_HAN}]{{5}}，[{_HAN}]{{5}}。")
_COUPLET = re.compile(f"^([{_HAN}]{{5}})，([{_HAN}]{{5}})$")


def couplets(poem):
    """The article's 10-character samples from one poem (a dict from ``tang_poems``, or its text).

    A poem qualifies when its text opens with a five-character couplet; its text is then cut at every
    ``。`` and each piece made of 5 CJK characters, ``，`` and 5 CJK characters gives one sample with
    the comma dropped. Other pieces (seven-character lines, ``？`` or ``！`` inside, missing
    punctuation) are skipped, as the article's ``len(s) == 11`` skipped them; the article did not
    check that the 10 characters are Chinese, this does. Returns a list of 10-character strings.
    """
    text = "".join(poem["paragraphs"]) if isinstance(poem, dict) else str(poem)
    if not _OPENS_FIVE.match(text):
        return []
    return [m[1] + m[2] for piece in text.split("。") if (m := _COUPLET.match(piece))]


def quatrain(poem):
    """The 20-character quatrain of a five-character jueju (五言绝句): a poem of exactly four
    five-character lines, ``XXXXX，XXXXX。XXXXX，XXXXX。``; None for any other poem."""
    text = "".join(poem["paragraphs"]) if isinstance(poem, dict) else str(poem)
    pieces = text.split("。")
    if len(pieces) != 3 or pieces[2] != "":
        return None
    halves = [_COUPLET.match(piece) for piece in pieces[:2]]
    return "".join(m[1] + m[2] for m in halves) if all(halves) else None


def split_poems(n, heldout=0.05, seed=5332):
    """Indices ``(train, heldout)`` of ``n`` poems, a fixed random split (the same for every training
    seed): whole poems are held out, so no poem has couplets on both sides. ``heldout`` is a fraction
    in (0, 1)."""
    if not 0 < heldout < 1:
        raise ValueError(f"split_poems: heldout must be a fraction in (0, 1), got {heldout!r}")
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * heldout))
    if cut == 0 or cut == n:
        raise ValueError(
            f"split_poems: holding out {heldout} of {n} poems leaves "
            f"{'nothing held out' if cut == 0 else 'nothing to train'}; use more poems or another fraction"
        )
    return np.sort(order[cut:]), np.sort(order[:cut])


_LINE = re.compile(f"(?<![{_HAN}])[{_HAN}]{{5}}(?![{_HAN}])")


def five_char_lines(poem):
    """Every run of exactly 5 CJK characters between punctuation in a poem (dict or text): its
    five-character lines, whatever the poem's form."""
    text = "".join(poem["paragraphs"]) if isinstance(poem, dict) else str(poem)
    return _LINE.findall(text)


UNKNOWN_CHAR = "<unk>"


def char_vocabulary(texts):
    """The characters of ``texts`` by falling frequency (ties by code point), after ``"<unk>"`` at
    id 0, which stands for every character outside the list: a list, index = id."""
    counts = {}
    for text in texts:
        for ch in text:
            counts[ch] = counts.get(ch, 0) + 1
    return [UNKNOWN_CHAR, *sorted(counts, key=lambda ch: (-counts[ch], ch))]


def encode_chars(texts, vocabulary):
    """Equal-length ``texts`` as an int32 array (len(texts), length) of ids in ``vocabulary`` (0 for
    a character outside it)."""
    index = {ch: i for i, ch in enumerate(vocabulary)}
    lengths = {len(t) for t in texts}
    if len(lengths) > 1:
        raise ValueError(f"encode_chars: texts must have one length, got lengths {sorted(lengths)}")
    return np.array([[index.get(ch, 0) for ch in text] for text in texts], dtype="int32").reshape(len(texts), -1)
