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
    smallnorb/smallnorb-5x*-{training,testing}-{dat,cat,info}.mat[.gz]   smallNORB (NYU binary matrices)

MNIST and IMDB are read with ``np.load`` rather than ``keras.datasets.*.load_data()``: copies that hold
the same arrays in a differently written ``.npz`` fail that function's hash check, which then tries to
download.

smallNORB is the exception to step 3: its files are large (about 900 MB) and ``small_norb`` never
downloads them; it reads the folder it is given (or ``$KEXUE_DATA/smallnorb``) and says where to get them.

A file that is found but cannot be used (truncated, corrupt, an HTML page saved by a failed download, a
folder, arrays of the wrong shape, labels out of range, fewer lines or poems than the dataset has)
raises ``DatasetError`` (a ``ValueError``; ``CorpusFormatError`` for text files) naming the file, what
is wrong, and what to do. Each loader checks what it read against the dataset's documented counts, so a
damaged copy never trains a model silently.
"""

import functools
import gzip
import io
import json
import lzma
import os
import pickle
import re
import tarfile
import unicodedata
import zipfile
import zlib
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


class DatasetError(ValueError):
    """A dataset file is there but cannot be used (corrupt, truncated, not the data it should hold);
    the message names the file, what is wrong and what to do."""


class CorpusFormatError(DatasetError):
    """A text file has a line that cannot be read, or is not the corpus it should be; the message
    names the file and line."""


def data_dir():
    """The data folder named by ``$KEXUE_DATA``, or None when the variable is unset or empty."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _cache_dir():
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def _fix(path):
    """What to do about a bad dataset file at ``path``: where it lives decides how it comes back."""
    root, cache, path = data_dir(), Path(os.path.abspath(_cache_dir())), Path(os.path.abspath(path))
    if root is not None and path.is_relative_to(os.path.abspath(root)):
        return (
            f"It is in the data folder ({DATA_ENV}={root}): replace it with a good copy, or remove it to let the "
            f"loader download it again; and check that {DATA_ENV} names the folder you mean."
        )
    if path.is_relative_to(cache) and path != cache:
        top = cache / path.relative_to(cache).parts[0]
        if top.name.endswith("_extracted"):  # a member of an archive that get_file unpacked
            archives = sorted(str(p) for p in cache.glob(top.name[: -len("_extracted")] + ".*"))
            return f"Delete {top} and the archive it came from ({', '.join(archives) or 'none left'}) and run again."
        return "Delete it and run again: the loader downloads it again."
    return "Replace it with a good copy."


def _bad(path, problem):
    """A DatasetError for ``path``: the file, the problem, the fix."""
    return DatasetError(f"{path}: {problem}.\n{_fix(path)}")


def _usable(path, bad=_bad):
    """True if ``path`` is a regular file, False if nothing is there; a DatasetError (made by ``bad``)
    if something is there that cannot be read as the file (a folder, a broken link)."""
    path = Path(path)
    try:
        if path.is_file():
            return True
    except OSError as err:  # e.g. a folder on the way that may not be listed
        raise bad(path, f"cannot be checked ({err.strerror or err})") from err
    if path.is_symlink() and not path.exists():
        raise bad(path, f"is a broken symbolic link (to {os.readlink(path)})")
    if path.exists():
        raise bad(path, "is a folder (or another non-file), not the dataset file")
    return False


_HTML_STARTS = ("<!doctype html", "<html", "<?xml", "<head")  # how a saved web page starts, after blank space


def _not_a(path, kind, otherwise=None):
    """Why the file at ``path`` is not ``kind``, from its first bytes (called only once reading it
    failed): empty, an HTML page, or else ``otherwise`` (default: what it starts with)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not head:
        return "is empty"
    if head.lstrip().lower().startswith(tuple(start.encode() for start in _HTML_STARTS)):
        return f"is an HTML page, not {kind} (what a failed or redirected download saves)"
    return otherwise or f"is not {kind} (it starts with {head[:16]!r})"


def locate(relpath, url, *, cache_name=None, file_hash=None, archive_member=None):
    """Return a local path for ``relpath`` (a path inside the data folder layout).

    Args:
        relpath: e.g. ``"mnist/mnist.npz"``.
        url: where a real user downloads it from.
        cache_name: file name in the Keras cache (default: ``relpath``'s name).
        file_hash: sha256 or md5 of the download, checked by ``get_file``.
        archive_member: when ``url`` is an archive, the member's path inside it (``get_file``
            extracts the archive into the cache and this member is returned).

    Something at the expected path that is not a file (a folder, a broken link) raises
    ``DatasetError`` rather than being passed over.
    """
    root = data_dir()
    if root is not None and _usable(root / relpath):
        return root / relpath

    cache_name = cache_name or Path(relpath).name
    if archive_member is None:
        cached = _cache_dir() / cache_name
    else:  # get_file extracts "name.zip" into "name_extracted/"
        cached = _cache_dir() / f"{cache_name.split('.')[0]}_extracted" / archive_member
    if _usable(cached):
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
    raise DatasetNotFoundError(
        f"{url} was downloaded to {got} but has no member {archive_member!r}; the download may be incomplete: "
        f"delete {got} and {_cache_dir() / cache_name} and run again"
    )


# --------------------------------------------------------------------------------------------------
# MNIST and IMDB (Keras layouts)

# What reading a damaged .npz can raise, from zipfile, zlib, numpy's header parser and, for object
# arrays, pickle.
_NPZ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    pickle.UnpicklingError,
    AttributeError,
    ImportError,
)


def _read_npz(path, keys, allow_pickle=False):
    """The arrays ``keys`` of the .npz file at ``path``, as a dict; a file that is not a whole .npz
    with those arrays is a DatasetError naming it. (A non-zip file is refused before ``np.load``,
    which would otherwise try to unpickle it.)"""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
    except OSError as err:
        raise _bad(path, f"cannot be read ({err.strerror or err})") from err
    if not is_zip:
        raise _bad(path, _not_a(path, "a .npz (zip) archive"))
    try:
        with np.load(path, allow_pickle=allow_pickle) as f:
            missing = [key for key in keys if key not in f.files]
            if missing:
                raise _bad(path, f"has no array {missing[0]!r} (it holds {sorted(f.files)})")
            arrays = {key: f[key] for key in keys}
    except DatasetError:
        raise
    except _NPZ_ERRORS as err:
        raise _bad(
            path, f"cannot be read as a .npz archive, it is truncated or corrupt ({type(err).__name__}: {err})"
        ) from err
    for key, array in arrays.items():  # np.load gives a member that is not a .npy file as raw bytes
        if not isinstance(array, np.ndarray):
            raise _bad(path, f"member {key}.npy is not a NumPy .npy array (it starts with {array[:16]!r})")
    return arrays


def _check_array(path, name, array, shape, dtype=None):
    """``array`` (read as ``name`` from ``path``) has ``shape`` and, if given, ``dtype`` (a NumPy dtype
    or ``"integer"``)."""
    if array.shape != shape:
        raise _bad(path, f"{name} has shape {array.shape}, expected {shape}")
    if dtype == "integer" and not np.issubdtype(array.dtype, np.integer):
        raise _bad(path, f"{name} has dtype {array.dtype}, expected integer labels")
    if dtype not in (None, "integer") and array.dtype != dtype:
        raise _bad(path, f"{name} has dtype {array.dtype}, expected {np.dtype(dtype)}")


def _check_labels(path, name, labels, allowed, bad=_bad):
    """Every label is in ``allowed`` (a range); the first one that is not is named with its index (a
    DatasetError made by ``bad``)."""
    outside = (labels < allowed.start) | (labels >= allowed.stop)
    count = int(outside.sum())
    if count:
        i = int(np.flatnonzero(outside)[0])
        raise bad(
            path,
            f"{name}[{i}] = {labels[i]} is not a label in {allowed.start}..{allowed.stop - 1} "
            f"({count} such label{'s' * (count > 1)})",
        )


def mnist():
    """MNIST as Keras gives it: ``(x_train, y_train), (x_test, y_test)``.

    Shapes and dtypes: x_train (60000, 28, 28) uint8, y_train (60000,) uint8, x_test (10000, 28, 28)
    uint8, y_test (10000,) uint8. The file is checked for exactly these, and for labels 0-9.
    """
    path = locate(
        "mnist/mnist.npz",
        f"{_KERAS_DATASETS}/mnist.npz",
        file_hash="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    )
    arrays = _read_npz(path, ("x_train", "y_train", "x_test", "y_test"))
    for split, n in (("train", 60000), ("test", 10000)):
        _check_array(path, f"x_{split}", arrays[f"x_{split}"], (n, 28, 28), "uint8")
        _check_array(path, f"y_{split}", arrays[f"y_{split}"], (n,), "integer")
        _check_labels(path, f"y_{split}", arrays[f"y_{split}"], range(10))
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


_IMDB_WORDS = 88584  # words in Keras's imdb_word_index.json: the reviews' ranks are 1..88584


def _check_reviews(path, name, reviews):
    """``reviews`` is 25,000 non-empty lists of word ranks, integers in 1..88584, as in Keras's imdb.npz;
    returns the highest rank. The ranks are checked all at once (one array of every review's ranks:
    its dtype says whether they are all integers), so the check costs a fraction of a second."""
    _check_array(path, name, reviews, (25000,))
    bad = next((i for i, r in enumerate(reviews) if type(r) is not list or not r), None)
    if bad is not None:
        raise _bad(path, f"{name}[{bad}] is {reviews[bad]!r:.60}, expected a non-empty list of word ranks")
    expected = f"expected integer word ranks in 1..{_IMDB_WORDS}"
    try:
        ranks = np.concatenate(reviews)
    except (ValueError, TypeError):  # a review holding lists (arrays of other dimensions)
        ranks = None
    if ranks is None or ranks.dtype.kind not in "iu":  # a float, a string, None...: find the first
        integer = lambda w: isinstance(w, (int, np.integer)) and not isinstance(w, bool) and 1 <= w <= _IMDB_WORDS
        i, w = next(((i, w) for i, r in enumerate(reviews) for w in r if not integer(w)), (None, None))
        if i is None:  # not reached: a non-integer array holds something that is not a rank
            raise _bad(path, f"{name} holds word ranks of dtype {ranks.dtype}, {expected}")
        raise _bad(path, f"{name}[{i}] holds {w!r} ({type(w).__name__}), {expected}")
    outside = (ranks < 1) | (ranks > _IMDB_WORDS)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        i = int(np.searchsorted(np.cumsum([len(r) for r in reviews]), first, side="right"))
        count = int(outside.sum())
        raise _bad(
            path,
            f"{name}[{i}] holds word rank {ranks[first]}, {expected} ({count:,} such rank{'s' * (count > 1)} "
            f"in {name}; rank 0 is padding, which Keras's file does not have)",
        )
    return int(ranks.max())


def imdb(num_words=None, seed=113, start_char=1, oov_char=2, index_from=3):
    """IMDB reviews as word-id lists, built as ``keras.datasets.imdb.load_data`` builds them.

    Word ranks from the file are shifted by ``index_from`` and each review starts with ``start_char``;
    ids ``>= num_words`` (default: the largest id, as in Keras) become ``oov_char``, or are dropped
    when ``oov_char`` is None. Train and test are shuffled with ``seed`` as Keras does. Returns
    ``(x_train, y_train), (x_test, y_test)``: x arrays of shape (25000,) holding Python lists of ints,
    y int64 arrays of shape (25000,), 1 = positive. (Keras's ``skip_top`` and ``maxlen`` filters are
    not offered; truncate with ``keras.utils.pad_sequences``.) The file is checked for 25,000 reviews
    on each side, ranks 1..88584 and labels 0/1.
    """
    path = locate(
        "imdb/imdb.npz",
        f"{_KERAS_DATASETS}/imdb.npz",
        file_hash="69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
    )
    arrays = _read_npz(path, ("x_train", "y_train", "x_test", "y_test"), allow_pickle=True)
    highest = 0
    for split in ("train", "test"):
        highest = max(highest, _check_reviews(path, f"x_{split}", arrays[f"x_{split}"]))
        _check_array(path, f"y_{split}", arrays[f"y_{split}"], (25000,), "integer")
        _check_labels(path, f"y_{split}", arrays[f"y_{split}"], range(2))
    x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))

    # One generator for both shuffles, train first: this is what makes Keras's order.
    rng = np.random.RandomState(seed)
    order = np.arange(len(x_train))
    rng.shuffle(order)
    x_train, y_train = x_train[order], y_train[order]
    order = np.arange(len(x_test))
    rng.shuffle(order)
    x_test, y_test = x_test[order], y_test[order]

    # Keras's default vocabulary is "every id seen" (start_char included), and its test is
    # ``id < num_words``, so even then the single largest id becomes ``oov_char``. Ids are shifted and
    # tested in one pass: rank ``w`` is kept when ``w + index_from < num_words``, i.e. ``w < limit``.
    num_words = num_words or max(highest + index_from, start_char or 0)
    limit = num_words - index_from
    if start_char is None or (start_char >= num_words and oov_char is None):
        start = []
    else:
        start = [start_char if start_char < num_words else oov_char]
    if oov_char is None:
        reviews = [start + [w + index_from for w in r if w < limit] for r in (*x_train, *x_test)]
    else:
        reviews = [start + [w + index_from if w < limit else oov_char for w in r] for r in (*x_train, *x_test)]

    def as_objects(lists):  # a 1-D array of lists, as Keras returns, whatever the lengths
        out = np.empty(len(lists), dtype=object)
        for i, ids in enumerate(lists):
            out[i] = ids
        return out

    n = len(x_train)
    return (as_objects(reviews[:n]), y_train), (as_objects(reviews[n:]), y_test)


def imdb_word_index():
    """Keras's IMDB word index: word -> rank (1 = most frequent), before ``index_from`` shifts it.
    The file is checked to rank 88,584 words 1..88584, each rank once."""
    path = locate(
        "imdb/imdb_word_index.json",
        f"{_KERAS_DATASETS}/imdb_word_index.json",
        file_hash="bfafd718b763782e994055a2d397834f",
    )
    index = _read_json(path)
    ranks = list(index.values()) if isinstance(index, dict) else None
    if ranks is None or not all(type(rank) is int for rank in ranks):
        raise _bad(path, "is not a JSON object mapping words to integer ranks")
    if len(ranks) != _IMDB_WORDS or min(ranks) != 1 or max(ranks) != _IMDB_WORDS or len(set(ranks)) != _IMDB_WORDS:
        raise _bad(path, f"ranks {len(index):,} words, expected the {_IMDB_WORDS:,} words ranked 1..{_IMDB_WORDS}")
    return index


def _read_json(path, stream=None, member=None):
    """The JSON value in the file at ``path``, or in ``stream``, the binary stream of the archive
    ``path``'s ``member``; anything but whole UTF-8 JSON is a DatasetError naming the file (and member).
    A byte-order mark at the start is accepted (some editors and Windows tools write one)."""
    what = f"member {member} " if member else ""
    try:
        if stream is not None:
            return json.load(io.TextIOWrapper(stream, "utf-8-sig"))
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except OSError as err:
        raise _bad(path, f"{what}cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        bad = err.object[err.start : err.end]
        raise _bad(path, f"{what}is not UTF-8 text (bytes {bad!r} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        corrupt = "is not valid JSON: truncated or corrupt"
        what += corrupt if stream is not None else _not_a(path, "JSON", otherwise=corrupt)
        raise _bad(path, f"{what} (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except RecursionError as err:  # json's parser recurses once per nested list or object
        raise _bad(
            path, f"{what}is corrupt: its JSON nests lists or objects too deeply to read (no dataset's does)"
        ) from err
    except ValueError as err:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise _bad(path, f"{what}is corrupt: it holds a number too long to read ({str(err).split(';')[0]})") from err


# --------------------------------------------------------------------------------------------------
# SIGHAN 2005 word segmentation (icwb2-data)

_ICWB2_PARTS = {
    "train": "training/{}_training.utf8",
    "test": "testing/{}_test.utf8",
    "gold": "gold/{}_test_gold.utf8",
    "words": "gold/{}_training_words.utf8",
}


# Characters refused in the bakeoff's files, where words are separated by whitespace and any of these
# would end up inside a word, invisibly: C0 and C1 controls but the tab (a CR is one when it does not
# end a line), line and paragraph separators, a BOM after the start of the file, every invisible format
# character (Unicode category Cf: soft hyphen, zero-width space and joiners, direction marks, word joiner,
# Arabic letter mark, Mongolian vowel separator, tag characters...), the variation selectors and U+FFFD,
# the mark of text decoded with errors replaced. (``read_lines`` itself refuses none: the text a user
# segments is theirs.)
_VARIATION_SELECTORS = ((0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF))


@functools.lru_cache(maxsize=1)
def _not_in_words():
    """The pattern of the characters above, built once, on first use (listing category Cf takes a
    tenth of a second: not paid when ``utils.data`` is imported). Category Cf is looked up in planes
    0, 1 and 14, where Unicode puts every format character (planes 2 and 3 are ideographs, 15 and 16
    private use)."""
    ranges = [(0x00, 0x08), (0x0B, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029), (0x2060, 0x206F), (0xFFF9, 0xFFFD)]
    ranges += _VARIATION_SELECTORS
    for plane in (range(0x20000), range(0xE0000, 0xF0000)):
        start = None
        for c in plane:  # runs of consecutive Cf code points
            if unicodedata.category(chr(c)) == "Cf":
                start = c if start is None else start
            elif start is not None:
                ranges.append((start, c - 1))
                start = None
        if start is not None:
            ranges.append((start, plane[-1]))
    char = lambda c: f"\\U{c:08x}"
    return re.compile("[" + "".join(f"{char(a)}-{char(b)}" for a, b in sorted(ranges)) + "]")


_CHAR_NAMES = {"\ufeff": "byte-order mark", "\r": "carriage return", "\x00": "NUL"}


def _refused(path, number, ch, column):
    """The error for character ``ch`` at ``column`` of line ``number``: code point, name and why."""
    name = _CHAR_NAMES.get(ch) or unicodedata.name(ch, "").lower() or "control character"
    if ch == "\ufeff":
        why = "a BOM belongs only at the very start of a file (one inside is left by joining files)"
    elif ch == "\r":
        why = "only LF and CRLF end a line, and a lone CR would stay inside the text"
    else:
        why = "an invisible control, format or variation-selector character, not text (it would hide inside a word)"
    return CorpusFormatError(f"{path}:{number}: U+{ord(ch):04X} ({name}) at column {column}: {why}")


def read_lines(path):
    """Yield ``(line_number, text)`` for each line of a UTF-8 file (a path, or a binary stream such
    as ``sys.stdin.buffer``), without the line end.

    A line that is not valid UTF-8 raises ``CorpusFormatError`` naming the file, the line and the
    offending bytes, as does a file that cannot be read (a folder, no permission); a missing file
    raises ``FileNotFoundError``; anything but a path or a binary stream (a text stream such as
    ``sys.stdin``, a number) raises ``TypeError``. A BOM at the start is dropped; CRLF and LF endings
    are both accepted, and only they end a line.
    """
    yield from _read_lines(path)


def _read_lines(path, refused=None):
    """``read_lines``; a character that the compiled pattern ``refused`` matches raises
    ``CorpusFormatError`` naming the file, line and column."""
    if isinstance(path, io.TextIOBase):
        raise TypeError(
            f"read_lines needs a path or a binary stream, got the text stream {path!r}: pass its binary "
            "buffer (e.g. sys.stdin.buffer), or the file's path"
        )
    if hasattr(path, "read"):
        stream, path = path, getattr(path, "name", "<stream>")
    else:
        try:
            os.fspath(path)
        except TypeError:
            raise TypeError(
                f"read_lines needs a path or a binary stream, got {type(path).__name__} {path!r:.60}"
            ) from None
        try:
            stream = open(path, "rb")
        except FileNotFoundError:
            raise
        except OSError as err:
            raise CorpusFormatError(f"{path}: cannot be read ({err.strerror or err})") from err
    with stream as f:
        for number, raw in enumerate(f, start=1):
            if not isinstance(raw, bytes):  # a text stream that is not an io.TextIOBase
                raise TypeError(f"read_lines needs a path or a binary stream; {path} gives {type(raw).__name__}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.end]
                raise CorpusFormatError(
                    f"{path}:{number}: not valid UTF-8 (bytes {bad!r} at column {err.start + 1}); "
                    f"the file must be UTF-8 text"
                ) from err
            text = text.rstrip("\r\n")
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if refused is not None and (found := refused.search(text)):
                column = found.start() + 1 + (number == 1 and raw.startswith(b"\xef\xbb\xbf"))
                raise _refused(path, number, found[0], column)
            yield number, text


# Lines of the bakeoff's fixed files (the data folder's README); the training files differ by release
# (PKU: 19,056 lines in the bakeoff's, 19,484 in the People's Daily reconstruction) and are not counted.
_ICWB2_LINES = {
    ("pku", "test"): 1945,
    ("pku", "gold"): 1945,
    ("pku", "words"): 55303,
    ("msr", "test"): 3985,
    ("msr", "gold"): 3985,
    ("msr", "words"): 88119,
}


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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

    ``CorpusFormatError`` (naming the file, and the line where there is one) for a file that is empty,
    an HTML page, not UTF-8, cut short (no line end after its last line), or holds a character that
    would hide inside a word (controls, a BOM after the start, every invisible format character,
    variation selectors, U+FFFD); for a test, gold or word-list file without the bakeoff's line count;
    for swapped files (a test file that looks segmented, a training or gold file that does not); and
    for a word-list line with whitespace inside.

    Note: on the project's offline machines ``pku_training.utf8`` is a reconstruction from the
    People's Daily 1998-01 corpus, not the bakeoff's own file (see the data folder's README).
    """
    if corpus not in ("pku", "msr"):
        raise ValueError(f"icwb2 corpus must be 'pku' or 'msr', got {corpus!r}")
    if part not in _ICWB2_PARTS:
        raise ValueError(f"icwb2 part must be one of {sorted(_ICWB2_PARTS)}, got {part!r}")
    member = _ICWB2_PARTS[part].format(corpus)
    path = locate(f"icwb2/{member}", _ICWB2_URL, cache_name="icwb2-data.zip", archive_member=f"icwb2-data/{member}")
    try:
        lines = [line for _, line in _read_lines(path, _not_in_words())]
    except CorpusFormatError as err:
        raise CorpusFormatError(f"{err}.\n{_fix(path)}") from err
    expected = _ICWB2_LINES.get((corpus, part))
    problem, where, first = None, path, next((line for line in lines if line.strip()), "")
    # Lines holding whitespace between two words: the training and gold files are segmented (almost
    # every line), the test file is not (3 of MSR's 3,985 lines are), a word list never is. This tells
    # the files apart when they are swapped (test and gold have the same line count).
    spaced = [len(line.split()) > 1 for line in lines]
    segmented, nonblank = sum(spaced), sum(1 for line in lines if line.strip())
    if not lines or first.lstrip().lower().startswith(_HTML_STARTS):
        problem = _not_a(path, f"the bakeoff's {member}")
    elif not first:
        problem = "has only blank lines"
    elif expected is not None and len(lines) != expected:
        found = f"{len(lines):,} line{'s' * (len(lines) > 1)}"
        problem = f"has {found}, expected {expected:,} (the bakeoff's {member}): it is cut short or another file"
    elif not _ends_with_newline(path):
        problem = f"has no line end after its last line ({len(lines):,}): the file looks cut short"
    elif part == "test" and 2 * segmented > nonblank:
        gold = _ICWB2_PARTS["gold"].format(corpus)
        problem = (
            f"looks segmented: {segmented:,} of its {nonblank:,} lines hold spaces between words, where the "
            f"bakeoff's test text has (almost) none: it is probably the gold file ({gold})"
        )
    elif part in ("train", "gold") and 2 * segmented <= nonblank:
        other = (
            f"the test file ({_ICWB2_PARTS['test'].format(corpus)})"
            if part == "gold"
            else "the test file or a word list"
        )
        problem = (
            f"looks unsegmented: only {segmented:,} of its {nonblank:,} lines hold spaces between words, where "
            f"the bakeoff's {member} has them on almost every line: it is probably {other}"
        )
    elif part == "words" and segmented:
        number = spaced.index(True) + 1
        where, problem = (
            f"{path}:{number}",
            (f"{lines[number - 1].strip()!r:.40} holds whitespace inside a word: a word list has one word a line"),
        )
    if problem:
        raise CorpusFormatError(f"{where}: {problem}.\n{_fix(path)}")
    if part == "train":
        return [words for line in lines if (words := line.split())]
    if part == "gold":
        return [line.split() for line in lines]
    if part == "test":
        return [line.strip() for line in lines]
    return {line.strip() for line in lines if line.strip()}


# --------------------------------------------------------------------------------------------------
# Tang poems (chinese-poetry-zhCN)


def tang_poems():
    """The 57,591 Tang poems of chinese-poetry-zhCN (simplified characters), in corpus order.

    Each poem is a dict with ``author``, ``title``, ``paragraphs`` (list of lines, usually one couplet
    each, with ``，`` and ``。``) and ``strains`` (tone patterns). The poems are read once per process
    and data folder (reading the archive takes seconds); each call returns a new list of the same
    dicts, which callers must not change. The archive (or each downloaded file) is checked for all 58
    files and their documented poem counts (1000 each, 591 in the last).
    """
    return list(_read_tang_poems(str(data_dir())))


_POEMS_PER_FILE = {n: 591 if n == 57000 else 1000 for n in _POETRY_FILES}  # 57,591 in all
_POEM_FILE = re.compile(r"poet\.tang\.(\d+)\.json")
# What an archive read can raise when the file is truncated, corrupt or not a .tar.xz at all.
_TAR_ERRORS = (tarfile.TarError, lzma.LZMAError, EOFError, OSError, zlib.error)


def _check_poems(path, poems, n, member=None):
    """``poems`` (read from ``path``, or its ``member``) is poet.tang.<n>.json: the documented number of
    poems, each a dict of author and title (strings), paragraphs and strains (lists of strings)."""
    what = f"member {member} " if member else ""
    if type(poems) is not list:
        raise _bad(path, f"{what}is not a JSON list of poems")
    if len(poems) != _POEMS_PER_FILE[n]:
        raise _bad(path, f"{what}holds {len(poems):,} poems, expected {_POEMS_PER_FILE[n]:,}")
    for i, poem in enumerate(poems):
        if not (
            type(poem) is dict
            and len(poem) == 4
            and type(poem.get("author")) is str
            and type(poem.get("title")) is str
            and type(poem.get("paragraphs")) is list
            and type(poem.get("strains")) is list
            and all(type(line) is str for line in poem["paragraphs"])
        ):
            raise _bad(path, f"{what}poem {i} is not a dict of author, title, paragraphs, strains: {poem!r:.100}")
    return poems


@functools.lru_cache(maxsize=1)
def _read_tang_poems(_folder):
    root = data_dir()
    archive = root / "chinese_poetry/poet.tang.zhCN.tar.xz" if root is not None else None
    if archive is not None and _usable(archive):
        files = {}
        try:
            with tarfile.open(archive, "r:xz") as tar:
                for member in tar:  # one pass, reading each member as it comes: no seeking back
                    found = _POEM_FILE.fullmatch(Path(member.name).name)
                    if not found or not member.isfile():
                        continue
                    n = int(found[1])
                    if n not in _POEMS_PER_FILE or n in files:
                        again = "a second" if n in files else "an unexpected"
                        raise _bad(archive, f"has {again} member {member.name} (another release of the corpus?)")
                    poems = _read_json(archive, tar.extractfile(member), member.name)
                    files[n] = _check_poems(archive, poems, n, member.name)
        except _TAR_ERRORS as err:
            corrupt = f"cannot be read as a .tar.xz archive, it is truncated or corrupt ({type(err).__name__}: {err})"
            raise _bad(archive, _not_a(archive, "a .tar.xz archive", otherwise=corrupt)) from err
        missing = [f"poet.tang.{n}.json" for n in _POETRY_FILES if n not in files]
        if missing:
            raise _bad(
                archive,
                f"has no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)} of the 58 "
                f"poem files missing; expected poet.tang.0.json ... poet.tang.57000.json, 57,591 poems)",
            )
        return [poem for n in _POETRY_FILES for poem in files[n]]
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
        out.extend(_check_poems(path, _read_json(path), n))
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


# --------------------------------------------------------------------------------------------------
# smallNORB (NYU binary matrices; read from a folder, never downloaded)

NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
NORB_CATEGORIES = ("animal", "human", "airplane", "truck", "car")  # label 0..4
NORB_INFO = ("instance", "elevation", "azimuth", "lighting")  # the columns of the -info matrices
_NORB_PAIRS = 24300  # stereo pairs in each split
_NORB_NAMES = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training-{}.mat",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing-{}.mat",
}
# Magic numbers of the binary-matrix format (little-endian int32 at the start of a file).
_MATRIX_TYPES = {
    0x1E3D4C51: ("single-precision float", "<f4"),
    0x1E3D4C52: ("packed", None),
    0x1E3D4C53: ("double-precision float", "<f8"),
    0x1E3D4C54: ("int32", "<i4"),
    0x1E3D4C55: ("uint8", "u1"),
    0x1E3D4C56: ("short (int16)", "<i2"),
}
_MATRIX_MAGIC = {np.dtype(dtype).str: magic for magic, (_, dtype) in _MATRIX_TYPES.items() if dtype}
# The -info columns' values (smallNORB's documentation): azimuth is 0, 2, ..., 34 (times 10 degrees).
_NORB_INFO_VALUES = (range(10), range(9), range(0, 35, 2), range(6))
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # bytes read at a time into the array (a gzip stream would otherwise be copied whole)


def _norb_bad(path, problem):
    """A DatasetError for the smallNORB file at ``path``: the file, the problem, the fix (a good copy
    from NYU's page: this loader never downloads, wherever the file is)."""
    return DatasetError(
        f"{path}: {problem}.\nReplace it with a good copy of {Path(path).name.removesuffix('.gz')} (gzipped or "
        f"not) from {NORB_URL}; small_norb never downloads."
    )


def _norb_not_found(folder, problem, names):
    listing = "".join(f"\n    {name}" for name in names)
    return DatasetNotFoundError(
        f"smallNORB not found: {problem}.\n  expected these files (each may also end in .gz):{listing}\n"
        f"small_norb never downloads (the two image files are 448 MB each): download them from {NORB_URL} "
        f"into {folder}, or pass small_norb the folder that holds them."
    )


def _read_norb_matrix(path, dtype, shape):
    """The NYU binary matrix in the file at ``path`` (gzipped or not, told by its first bytes rather
    than its name), checked to be of ``dtype`` (uint8, int32, float32, float64 or int16) and
    ``shape``; returns a writable NumPy array (little-endian).

    The format (NORB's documentation): a little-endian int32 magic number that gives the element type
    (0x1E3D4C55 uint8, 0x1E3D4C54 int32, 0x1E3D4C51 float, 0x1E3D4C53 double, 0x1E3D4C56 short,
    0x1E3D4C52 packed), an int32 ``ndim``, ``max(3, ndim)`` int32 dimensions (the unused ones are 1),
    then the elements, little-endian, in C order. Another type, another shape, a file cut short or
    too long, and a corrupt gzip stream raise ``DatasetError`` naming the file.
    """
    dtype = np.dtype(dtype).newbyteorder("<").str
    kind = _MATRIX_TYPES[_MATRIX_MAGIC[dtype]][0]
    try:
        with open(path, "rb") as f:
            zipped = f.read(2) == _GZIP_MAGIC
    except OSError as err:
        raise _norb_bad(path, f"cannot be read ({err.strerror or err})") from err
    try:
        with (gzip.open if zipped else open)(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                if not zipped and not head:
                    raise _norb_bad(path, "is empty")
                raise _norb_bad(path, f"holds {len(head)} bytes, too short for a binary-matrix header (20 or more)")
            magic, ndim = (int(v) for v in np.frombuffer(head, "<i4"))
            if magic != _MATRIX_MAGIC[dtype]:  # what is it? (the first bytes, uncompressed)
                raise _norb_bad(path, _wrong_magic(path, magic, head + f.read(504), zipped, dtype))
            if not 0 <= ndim <= 16:
                raise _norb_bad(path, f"has a corrupt header: it gives {ndim} dimensions")
            raw_dims = f.read(4 * max(3, ndim))
            if len(raw_dims) < 4 * max(3, ndim):
                raise _norb_bad(path, f"is cut short inside its header ({8 + len(raw_dims)} bytes)")
            found = tuple(int(v) for v in np.frombuffer(raw_dims, "<i4")[:ndim])
            if found != tuple(shape):
                raise _norb_bad(
                    path,
                    f"holds {_a(kind)} {kind} matrix of shape {found}, expected {tuple(shape)}: it is another file",
                )
            out = np.empty(shape, dtype)
            view, filled = memoryview(out).cast("B"), 0
            while filled < out.nbytes:  # a chunk at a time, straight into the array
                got = f.readinto(view[filled : filled + _CHUNK])
                if not got:
                    break
                filled += got
            extra = 0
            if filled == out.nbytes:  # bytes after the matrix: count them (a real file has none)
                while chunk := f.read(_CHUNK):
                    extra += len(chunk)
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        if zipped:
            problem = f"is a corrupt or truncated gzip file ({type(err).__name__}: {err})"
        else:
            problem = f"cannot be read ({getattr(err, 'strerror', None) or err})"
        raise _norb_bad(path, problem) from err
    if filled < out.nbytes or extra:
        header = 8 + len(raw_dims)
        verdict = "it is truncated" if filled < out.nbytes else "it has bytes after the matrix, it is corrupt"
        raise _norb_bad(
            path,
            f"has {filled + extra:,} bytes of data after its {header}-byte header, expected {out.nbytes:,} "
            f"({_a(kind)} {kind} matrix of shape {tuple(shape)}): {verdict}",
        )
    return out


def _a(kind):
    return "an" if kind[0] in "aeio" else "a"  # "an int32", "a uint8"


def _wrong_magic(path, magic, head, zipped, dtype):
    """What a file whose first int32 is ``magic`` (not the magic number of ``dtype``) is; ``head`` is
    its first bytes (uncompressed)."""
    expected = f"expected 0x{_MATRIX_MAGIC[dtype]:08X} ({_MATRIX_TYPES[_MATRIX_MAGIC[dtype]][0]} matrix)"
    if magic in _MATRIX_TYPES:
        found = _MATRIX_TYPES[magic][0]
        return f"holds {_a(found)} {found} matrix (magic number 0x{magic:08X}), {expected}: it is another file"
    swapped = int.from_bytes(head[:4], "big")
    if swapped in _MATRIX_TYPES:
        return (
            f"has the magic number of a {_MATRIX_TYPES[swapped][0]} matrix written big-endian (0x{magic:08X}), "
            f"{expected}: the format is little-endian"
        )
    otherwise = f"does not start with a binary-matrix magic number (found 0x{magic:08X}, {expected})"
    if zipped:
        if head.lstrip().lower().startswith(tuple(start.encode() for start in _HTML_STARTS)):
            return "holds an HTML page, not a binary matrix (what a failed or redirected download saves)"
        return otherwise
    return _not_a(path, "a binary matrix", otherwise=otherwise)


def _norb_paths(folder, parts):
    """The path of each of ``parts`` (e.g. ``("train", "dat")``) in ``folder``: ``<name>`` or, if that
    is absent, ``<name>.gz``; a DatasetNotFoundError lists the names that are in neither form."""
    names = [_NORB_NAMES[split].format(part) for split, part in parts]
    if folder is None:
        root = data_dir()
        if root is None:
            raise _norb_not_found(
                f"${DATA_ENV}/smallnorb",
                f"no folder given and {DATA_ENV} is unset (the default folder is ${DATA_ENV}/smallnorb)",
                names,
            )
        folder = root / "smallnorb"
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise _norb_not_found(folder, f"the folder {folder} {what}", names)
    found, missing = [], []
    for name in names:
        path = next((p for p in (folder / name, folder / f"{name}.gz") if _usable(p, _norb_bad)), None)
        found.append(path)
        if path is None:
            missing.append(name)
    if missing:
        raise _norb_not_found(
            folder, f"{folder} has no {', '.join(missing)} ({len(missing)} of {len(names)} files missing)", names
        )
    return found


def small_norb(folder=None, *, with_info=False, expected_count=_NORB_PAIRS):
    """smallNORB (LeCun, Huang and Bottou 2004) from a folder holding NYU's files: ``(x_train,
    y_train), (x_test, y_test)``, or with ``with_info=True`` ``(x_train, y_train, info_train),
    (x_test, y_test, info_test)``.

    Args:
        folder: the folder (str or Path) holding ``smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,
            info}.mat`` and ``smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat``, each
            gzipped (``.mat.gz``) or not (the plain file is read when both are there); default
            ``$KEXUE_DATA/smallnorb``. The files are never downloaded: get them from ``NORB_URL``.
        with_info: also read the -info files (otherwise they need not be there).
        expected_count: pairs in each split; 24,300 in smallNORB. Only tests on small synthetic files
            change it.

    Returns:
        x: uint8 (24300, 2, 96, 96), the stereo pairs (left and right camera) of 96x96 grey images.
        y: int32 (24300,), the category, 0..4 = ``NORB_CATEGORIES`` (animal, human, airplane, truck, car).
        info: int32 (24300, 4), the columns ``NORB_INFO``: instance (0..9; training has 4, 6, 7, 8, 9,
            test 0, 1, 2, 3, 5), elevation (0..8, 30 to 70 degrees in steps of 5), azimuth (0, 2, ..., 34,
            times 10 degrees), lighting (0..5).

    A missing folder or file raises ``DatasetNotFoundError`` listing the names expected and where to
    get them; a file of another type or shape, cut short, a corrupt gzip stream, a label outside 0..4
    or an info value outside its range raise ``DatasetError`` naming the file.
    """
    parts = ("dat", "cat", "info") if with_info else ("dat", "cat")
    paths = iter(_norb_paths(folder, [(split, part) for split in ("train", "test") for part in parts]))
    out = []
    for _split in ("train", "test"):
        x_path, y_path = next(paths), next(paths)
        x = _read_norb_matrix(x_path, "u1", (expected_count, 2, 96, 96))
        y = _read_norb_matrix(y_path, "<i4", (expected_count,))
        _check_labels(y_path, "the labels", y, range(len(NORB_CATEGORIES)), bad=_norb_bad)
        if not with_info:
            out.append((x, y))
            continue
        info_path = next(paths)
        info = _read_norb_matrix(info_path, "<i4", (expected_count, len(NORB_INFO)))
        _check_norb_info(info_path, info)
        out.append((x, y, info))
    return tuple(out)


def _check_norb_info(path, info):
    """Each column of an -info matrix holds only its documented values; the first row that does not is
    named."""
    for column, (name, allowed) in enumerate(zip(NORB_INFO, _NORB_INFO_VALUES)):
        outside = ~np.isin(info[:, column], allowed)
        if outside.any():
            i, count = int(np.flatnonzero(outside)[0]), int(outside.sum())
            values = f"{allowed.start}..{allowed.stop - 1}" if allowed.step == 1 else "0, 2, ..., 34"
            raise _norb_bad(
                path,
                f"row {i} has {name} {info[i, column]}, outside {values} (column {column}; {count} such "
                f"row{'s' * (count > 1)}): it is not smallNORB's -info file",
            )


def norb_downsample_standardize(x, size=48):
    """smallNORB images as the EM-routing paper (Hinton, Sabour and Frosst 2018) feeds them: each
    96x96 image averaged over non-overlapping blocks down to ``size`` x ``size`` (2x2 blocks for 48),
    then standardised on its own to mean 0 and standard deviation 1.

    ``x``: uint8 (or any number) array whose last two axes are one image, e.g. (N, 2, 96, 96) for the
    stereo pairs, or ``x[:, 0]`` (N, 96, 96) for the left images only; its image sides must be
    multiples of ``size``. Returns float32 of the same shape with the last two axes ``size``. The
    standardisation is ``tf.image.per_image_standardization``'s: ``(v - mean) / max(std,
    1/sqrt(size*size))`` with the population std, so a constant image becomes zeros, not NaN. The
    paper's random 32x32 crops in training and the centre 32x32 crop at test are left to the
    experiment.
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-1] % size or x.shape[-2] % size or min(x.shape[-2:]) < size:
        raise ValueError(
            f"norb_downsample_standardize: images of shape {x.shape[-2:]} (x has shape {x.shape}) cannot be "
            f"averaged down to {size}x{size}; the last two axes must be multiples of size (96x96 for smallNORB)"
        )
    fh, fw = x.shape[-2] // size, x.shape[-1] // size
    blocks = x.reshape(*x.shape[:-2], size, fh, size, fw)
    out = blocks.mean(axis=(-3, -1), dtype=np.float32)
    out -= out.mean(axis=(-2, -1), keepdims=True)
    std = np.sqrt(np.einsum("...ij,...ij->...", out, out)[..., None, None] / np.float32(size * size))
    out /= np.maximum(std, np.float32(1 / size))
    return out
