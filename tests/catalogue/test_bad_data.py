"""The reliability catalogue, data loaders (utils/data.py): every bad dataset file gets one clear error
that names the file, what is wrong and what to do; never a traceback from zipfile, lzma or json, and
never a silently short or wrong dataset.

Every file here is synthetic, built in ``tmp_path`` with the real layout and the documented counts (a
control test shows each builder's good file loads, so each error comes from the one thing broken).
The data folder is ``tmp_path / "data"`` and downloading is switched off, so no test can fall back to
the network or to the real data.
"""

import gzip
import io
import json
import pickle
import re
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import _NORB_FLOAT32, _NORB_UINT8, _norb_arrays, _norb_matrix, _norb_name, _write_norb

from utils import data

# ---- helpers ----------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty data folder as $KEXUE_DATA, an empty Keras cache, and no network."""
    import keras

    def no_network(*args, **kwargs):
        raise OSError("no network in the catalogue tests")

    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(keras.utils, "get_file", no_network)
    return tmp_path / "data"


def put(path, content):
    """Write ``content`` (bytes) at ``path``, making its folders; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def raises(error, path, message):
    """``pytest.raises`` for ``error`` whose message starts with the file's path and then says
    ``message`` (a regex); the fix is checked where it depends on where the file is."""
    return pytest.raises(error, match=re.escape(str(path)) + r"(:\d+)?: " + message)


FIX_IN_DATA_FOLDER = "replace it with a good copy"
HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def mnist_arrays(**changes):
    """Keras's MNIST layout (zeros, labels 0..9 cycling), with ``changes`` (None drops an array)."""
    arrays = {
        "x_train": np.zeros((60000, 28, 28), "uint8"),
        "y_train": (np.arange(60000) % 10).astype("uint8"),
        "x_test": np.zeros((10000, 28, 28), "uint8"),
        "y_test": (np.arange(10000) % 10).astype("uint8"),
    }
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def labels_with(n, i, label):
    """``n`` labels 0..9 cycling, with ``label`` at index ``i``."""
    labels = (np.arange(n) % 10).astype("uint8")
    labels[i] = label
    return labels


@pytest.fixture(scope="module")
def good_mnist():
    return npz_bytes(**mnist_arrays())


def imdb_arrays(**changes):
    """Keras's IMDB layout: 25,000 reviews a side (lists of word ranks 1..88584), labels 0/1."""

    def reviews():
        out = np.empty(25000, dtype=object)
        for i in range(25000):
            out[i] = [1 + i % 88584, 88584, 2]
        return out

    arrays = {
        "x_train": reviews(),
        "y_train": np.arange(25000) % 2,
        "x_test": reviews(),
        "y_test": np.arange(25000) % 2,
    }
    arrays.update(changes)
    return arrays


def imdb_bytes(**changes):
    buf = io.BytesIO()
    np.savez(buf, **imdb_arrays(**changes))
    return buf.getvalue()


def corrupt_member(npz, member):
    """``npz`` with one byte of ``member``'s compressed data flipped."""
    with zipfile.ZipFile(io.BytesIO(npz)) as z:
        info = z.getinfo(member)
    local = info.header_offset  # the local header: 30 bytes, then the name and the extra field
    name_length, extra_length = (int.from_bytes(npz[i : i + 2], "little") for i in (local + 26, local + 28))
    out = bytearray(npz)
    out[local + 30 + name_length + extra_length + info.compress_size // 2] ^= 0xFF
    return bytes(out)


POEM = {
    "author": "王之涣",
    "title": "登鹳雀楼",
    "paragraphs": ["白日依山尽，黄河入海流。"],
    "strains": ["仄仄平平仄，平平仄仄平。"],
}


@pytest.fixture(scope="module")
def poem_files():
    """The 58 ``poet.tang.<N>.json`` files of chinese-poetry-zhCN's layout: 1000 poems each, 591 in
    the last (57,591 in all)."""
    return {
        f"poetry/poet.tang.{n}.json": json.dumps([POEM] * (591 if n == 57000 else 1000), ensure_ascii=False).encode()
        for n in range(0, 58000, 1000)
    }


def tar_xz(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", preset=0) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def poems_archive(root, content):
    return put(root / "chinese_poetry" / "poet.tang.zhCN.tar.xz", content)


def read_poems():
    data._read_tang_poems.cache_clear()
    return data.tang_poems()


# ---- controls: the builders' good files load -------------------------------------------------------


def test_good_synthetic_files_load(root, good_mnist, poem_files):
    """Control: each builder's unbroken file loads, with the documented counts, so every error below
    comes from the one thing a test breaks. A BOM at the very start of a corpus file is dropped."""
    put(root / "mnist" / "mnist.npz", good_mnist)
    (x, y), (xt, yt) = data.mnist()
    assert x.shape == (60000, 28, 28) and yt.tolist()[:3] == [0, 1, 2]
    put(root / "imdb" / "imdb.npz", imdb_bytes())
    (x, y), (xt, yt) = data.imdb()
    assert len(x) == len(xt) == 25000 and x[0][0] == 1 and y.sum() == 12500
    index = {f"w{rank}": rank for rank in range(1, 88585)}
    put(root / "imdb" / "imdb_word_index.json", json.dumps(index).encode())
    assert data.imdb_word_index() == index
    put(root / "icwb2" / "training" / "pku_training.utf8", "\ufeff迈向  充满\r\n\r\n希望\t的\r\n".encode())
    assert data.icwb2("pku", "train") == [["迈向", "充满"], ["希望", "的"]]
    put(root / "icwb2" / "gold" / "pku_test_gold.utf8", "共同  创造\r\n".encode() * 1945)
    assert len(data.icwb2("pku", "gold")) == 1945
    poems_archive(root, tar_xz(poem_files))
    poems = read_poems()
    assert len(poems) == 57591 and poems[0] == POEM


# ---- MNIST -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda good: good[: len(good) // 2], "cannot be read as a .npz archive, it is truncated or corrupt"),
        (lambda good: corrupt_member(good, "x_train.npy"), "cannot be read as a .npz archive, it is truncated"),
        (lambda good: b"", "is empty"),
        (lambda good: HTML, r"is an HTML page, not a \.npz \(zip\) archive"),
        (lambda good: pickle.dumps({"x_train": 1}), r"is not a \.npz \(zip\) archive"),
    ],
    ids=["truncated", "byte-flipped", "empty", "html-page", "a-pickle"],
)
def test_mnist_file_that_is_not_a_whole_npz(root, good_mnist, bad, message):
    """A truncated, corrupt, empty, HTML or pickle mnist.npz -> DatasetError naming the file and the
    fix (it is in the data folder), not BadZipFile / EOFError / numpy's pickle refusal."""
    path = put(root / "mnist" / "mnist.npz", bad(good_mnist))
    with raises(data.DatasetError, path, message) as err:
        data.mnist()
    assert FIX_IN_DATA_FOLDER in str(err.value) and data.DATA_ENV in str(err.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"x_train": np.zeros((60000, 784), "uint8")}, r"x_train has shape \(60000, 784\), expected \(60000, 28, 28\)"),
        (
            {"x_test": np.zeros((9999, 28, 28), "uint8")},
            r"x_test has shape \(9999, 28, 28\), expected \(10000, 28, 28\)",
        ),
        ({"y_train": np.zeros(59999, "uint8")}, r"y_train has shape \(59999,\), expected \(60000,\)"),
        ({"x_test": np.zeros((10000, 28, 28), "float32")}, "x_test has dtype float32, expected uint8"),
        ({"y_test": np.zeros(10000, "float32")}, "y_test has dtype float32, expected integer labels"),
        ({"y_test": labels_with(10000, 3, 10)}, r"y_test\[3\] = 10 is not a label in 0\.\.9 \(1 such label\)"),
        ({"y_train": np.full(60000, -1, "int64")}, r"y_train\[0\] = -1 is not a label in 0\.\.9 \(60000 such labels\)"),
        ({"y_test": None}, r"has no array 'y_test' \(it holds \['x_test', 'x_train', 'y_train'\]\)"),
    ],
    ids=["x-flat", "x-short", "y-short", "x-float", "y-float", "label-10", "labels-negative", "no-y_test"],
)
def test_mnist_arrays_not_as_documented(root, changes, message):
    """mnist.npz whose arrays are not 60,000/10,000 images 28x28 uint8 with labels 0-9 -> DatasetError
    naming the file, the array and expected vs found (before: returned as they were)."""
    path = put(root / "mnist" / "mnist.npz", npz_bytes(**mnist_arrays(**changes)))
    with raises(data.DatasetError, path, message):
        data.mnist()


def npz_with_raw_member(arrays, member, content):
    """An uncompressed .npz of ``arrays`` whose ``member`` holds ``content`` (bytes, not a .npy file)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key, array in arrays.items():
            npy = io.BytesIO()
            np.save(npy, array)
            z.writestr(f"{key}.npy", content if key == member else npy.getvalue())
    return buf.getvalue()


def test_mnist_member_that_is_not_a_npy_file(root):
    """mnist.npz whose y_test.npy member holds bytes that are not a .npy file (np.load then gives raw
    bytes) -> DatasetError naming the file and the member (before: AttributeError "'bytes' object has
    no attribute 'shape'"); the same archive with a real y_test.npy loads (the control)."""
    arrays = mnist_arrays()
    path = put(root / "mnist" / "mnist.npz", npz_with_raw_member(arrays, None, b""))
    assert data.mnist()[1][1].shape == (10000,)
    put(path, npz_with_raw_member(arrays, "y_test", b"not an npy file"))
    with raises(data.DatasetError, path, r"member y_test\.npy is not a NumPy \.npy array \(it starts with b'not an"):
        data.mnist()


def test_mnist_path_is_a_folder(root):
    """A folder at $KEXUE_DATA/mnist/mnist.npz -> DatasetError naming it (before: passed over, then a
    download was tried and 'not found' reported for a path that exists)."""
    path = root / "mnist" / "mnist.npz"
    path.mkdir(parents=True)
    with raises(data.DatasetError, path, "is a folder"):
        data.mnist()


def test_mnist_path_is_a_broken_link(root, tmp_path):
    """A symbolic link to a file that is gone -> DatasetError naming the link and its target."""
    path = root / "mnist" / "mnist.npz"
    path.parent.mkdir(parents=True)
    path.symlink_to(tmp_path / "gone.npz")
    with raises(data.DatasetError, path, f"is a broken symbolic link \\(to {re.escape(str(tmp_path))}"):
        data.mnist()


def test_mnist_truncated_in_the_keras_cache_says_delete_it(root, good_mnist, tmp_path, monkeypatch):
    """A truncated mnist.npz in the Keras cache (no data folder) -> the fix is to delete it, and the
    next run downloads it again."""
    monkeypatch.delenv(data.DATA_ENV)
    path = put(tmp_path / "keras_home" / "datasets" / "mnist.npz", good_mnist[:1000])
    with raises(data.DatasetError, path, "cannot be read as a .npz archive") as err:
        data.mnist()
    assert "Delete it and run again: the loader downloads it again." in str(err.value)


# ---- IMDB --------------------------------------------------------------------------------------------


class _Touch:
    """A pickle that creates a file when it is loaded: proof of whether a loader unpickled it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_imdb_non_zip_file_is_never_unpickled(root, tmp_path):
    """imdb.npz that is a pickle (the loader reads with allow_pickle=True) -> DatasetError 'not a .npz',
    and the pickle is never loaded (before: np.load unpickled it)."""
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Touch(marker))
    pickle.loads(payload).close()  # control: loading this pickle does create the file
    assert marker.exists()
    marker.unlink()
    path = put(root / "imdb" / "imdb.npz", payload)
    with raises(data.DatasetError, path, r"is not a \.npz \(zip\) archive"):
        data.imdb()
    assert not marker.exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda good: good[: len(good) // 2], "cannot be read as a .npz archive, it is truncated or corrupt"),
        (lambda good: HTML, r"is an HTML page, not a \.npz \(zip\) archive"),
    ],
    ids=["truncated", "html-page"],
)
def test_imdb_file_that_is_not_a_whole_npz(root, bad, message):
    """A truncated or HTML imdb.npz -> DatasetError naming the file (before: BadZipFile, or
    UnpicklingError 'Failed to interpret file as a pickle')."""
    path = put(root / "imdb" / "imdb.npz", bad(imdb_bytes()))
    with raises(data.DatasetError, path, message):
        data.imdb()


def _reviews_with(i, review):
    out = imdb_arrays()["x_train"]
    out[i] = review
    return out


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"x_test": imdb_arrays()["x_test"][:24999]}, r"x_test has shape \(24999,\), expected \(25000,\)"),
        ({"x_train": _reviews_with(7, [])}, r"x_train\[7\] is \[\], expected a non-empty list of word ranks"),
        (
            {"x_train": _reviews_with(7, [0, 0, 5])},
            r"x_train\[7\] holds word rank 0, expected integer word ranks in 1\.\.88584 \(2 such ranks in x_train",
        ),
        (
            {"x_train": _reviews_with(7, [88585])},
            r"x_train\[7\] holds word rank 88585, expected integer word ranks in 1\.\.88584 \(1 such rank in",
        ),
        ({"x_train": _reviews_with(7, [1, "the"])}, r"x_train\[7\] holds 'the' \(str\), expected integer word ranks"),
        ({"y_train": np.r_[0, 1, 2, np.zeros(24997, "int64")]}, r"y_train\[2\] = 2 is not a label in 0\.\.1"),
        ({"y_test": np.zeros(25000, "float64")}, "y_test has dtype float64, expected integer labels"),
    ],
    ids=["x-short", "empty-review", "rank-0-padding", "rank-too-big", "a-string", "label-2", "y-float"],
)
def test_imdb_arrays_not_as_documented(root, changes, message):
    """imdb.npz whose arrays are not 25,000/25,000 non-empty reviews of ranks 1..88584 with labels 0/1
    -> DatasetError naming the file, the array and expected vs found (before: ranks 0 became real
    word ids, an empty review crashed inside max())."""
    path = put(root / "imdb" / "imdb.npz", imdb_bytes(**changes))
    with raises(data.DatasetError, path, message):
        data.imdb()


@pytest.mark.parametrize(
    "review, message",
    [
        ([14, 5.5, float("nan"), 20], r"x_train\[9\] holds 5\.5 \(float\)"),
        ([14, float("nan"), 20], r"x_train\[9\] holds nan \(float\)"),
        ([14, 20.0], r"x_train\[9\] holds 20\.0 \(float\)"),
        ([14, None], r"x_train\[9\] holds None \(NoneType\)"),
        ([14, [15, 16]], r"x_train\[9\] holds \[15, 16\] \(list\)"),
        ([14, 10**30], r"x_train\[9\] holds 1000000000000000000000000000000 \(int\)"),
    ],
    ids=["float-and-nan", "nan", "integral-float", "none", "nested-list", "huge-int"],
)
def test_imdb_rank_that_is_not_an_integer_inside_the_range(root, review, message):
    """A review holding a rank that is not an integer but lies between the others (5.5, NaN, 20.0,
    None, a list, an int past int64) -> DatasetError naming the array and the first bad review (before:
    5.5 loaded as id 8.5 and NaN became the out-of-vocabulary id: only the overall min and max were
    checked). Review 9 with integer ranks loads (the control in test_good_synthetic_files_load)."""
    path = put(root / "imdb" / "imdb.npz", imdb_bytes(x_train=_reviews_with(9, review)))
    with raises(data.DatasetError, path, message + r", expected integer word ranks in 1\.\.88584"):
        data.imdb()


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"the": 1, "and', r"is not valid JSON: truncated or corrupt \(line 1, column 12"),
        (b"", r"is empty \(line 1, column 1"),
        (HTML, "is an HTML page, not JSON"),
        (b'{"caf\xe9": 1}', r"is not UTF-8 text \(bytes b'\\xe9' at byte 5\)"),
        (b'["the", "and"]', "is not a JSON object mapping words to integer ranks"),
        (json.dumps({f"w{r}": r for r in range(1, 88584)}).encode(), "ranks 88,583 words, expected the 88,584"),
        (json.dumps({f"w{r}": r + 1 for r in range(1, 88585)}).encode(), "ranks 88,584 words, expected the 88,584"),
    ],
    ids=["truncated", "empty", "html-page", "latin-1", "a-list", "a-word-short", "ranks-shifted"],
)
def test_imdb_word_index_bad(root, content, message):
    """A bad imdb_word_index.json -> DatasetError naming the file, what is wrong (with JSON's line and
    column) and the fix (before: json's JSONDecodeError naming no file, or a short index returned)."""
    path = put(root / "imdb" / "imdb_word_index.json", content)
    with raises(data.DatasetError, path, message) as err:
        data.imdb_word_index()
    assert FIX_IN_DATA_FOLDER in str(err.value)


DEEP_JSON = b"[" * 200000 + b"]" * 200000
LONG_INT_JSON = b'{"the": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize(
    "content, message",
    [
        (DEEP_JSON, r"is corrupt: its JSON nests lists or objects too deeply to read"),
        (LONG_INT_JSON, r"is corrupt: it holds a number too long to read \(Exceeds the limit \(4300 digits\)"),
    ],
    ids=["nested-200000-deep", "5000-digit-integer"],
)
def test_imdb_word_index_json_that_python_cannot_parse(root, content, message):
    """imdb_word_index.json nested 200,000 deep, or holding a 5000-digit integer -> DatasetError naming
    the file and the fix (before: an uncaught RecursionError, or a bare ValueError naming no file and
    advising sys.set_int_max_str_digits)."""
    path = put(root / "imdb" / "imdb_word_index.json", content)
    with raises(data.DatasetError, path, message) as err:
        data.imdb_word_index()
    assert FIX_IN_DATA_FOLDER in str(err.value) and "set_int_max_str_digits" not in str(err.value)


def test_imdb_word_index_with_a_byte_order_mark_loads(root):
    """imdb_word_index.json starting with a UTF-8 BOM (what some Windows tools write) -> the same index
    as without it (before: "is not valid JSON: truncated or corrupt")."""
    index = {f"w{rank}": rank for rank in range(1, 88585)}
    put(root / "imdb" / "imdb_word_index.json", b"\xef\xbb\xbf" + json.dumps(index).encode())
    assert data.imdb_word_index() == index


# ---- SIGHAN 2005 (icwb2) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "char, name",
    [
        ("\ufeff", r"U\+FEFF \(byte-order mark\)"),
        ("\x00", r"U\+0000 \(NUL\)"),
        ("\r", r"U\+000D \(carriage return\)"),
        ("\x0b", r"U\+000B \(control character\)"),
        ("\x85", r"U\+0085 \(control character\)"),
        ("\u200b", r"U\+200B \(zero width space\)"),
        ("\u00ad", r"U\+00AD \(soft hyphen\)"),
        ("\u200d", r"U\+200D \(zero width joiner\)"),
        ("\u2028", r"U\+2028 \(line separator\)"),
        ("\ufffd", r"U\+FFFD \(replacement character\)"),
    ],
    ids=["bom", "nul", "lone-cr", "vertical-tab", "nel", "zwsp", "soft-hyphen", "zwj", "line-separator", "fffd"],
)
def test_icwb2_character_that_would_hide_inside_a_word(root, char, name):
    """An invisible character inside line 2 of the training file (a BOM where two files were joined,
    a control, a zero-width or format character, U+FFFD) -> CorpusFormatError naming file, line,
    column and code point (before: it ended up inside a word, e.g. '\\ufeff中国')."""
    path = put(root / "icwb2" / "training" / "pku_training.utf8", f"迈向  充满\r\n中{char}国  人民\r\n".encode())
    with raises(data.CorpusFormatError, path, f"{name} at column 2: ") as err:
        data.icwb2("pku", "train")
    assert f"{path}:2: " in str(err.value) and FIX_IN_DATA_FOLDER in str(err.value)


@pytest.mark.parametrize(
    "char, name",
    [
        ("\u061c", r"U\+061C \(arabic letter mark\)"),
        ("\u180e", r"U\+180E \(mongolian vowel separator\)"),
        ("\U000e0041", r"U\+E0041 \(tag latin capital letter a\)"),
        ("\u2066", r"U\+2066 \(left-to-right isolate\)"),
        ("\ufe0f", r"U\+FE0F \(variation selector-16\)"),
        ("\U000e0100", r"U\+E0100 \(variation selector-17\)"),
    ],
    ids=["arabic-letter-mark", "mongolian-vowel-separator", "tag-character", "lr-isolate", "vs16", "vs17"],
)
def test_icwb2_format_character_or_variation_selector(root, char, name):
    """A format character (category Cf) or a variation selector inside a word of the gold file ->
    CorpusFormatError naming file, line, column and code point (before: 133 of the 163 Cf characters
    and every variation selector loaded inside a word: 中 U+FE0F 国, a word other than 中国 when scoring)."""
    path = put(root / "icwb2" / "gold" / "pku_test_gold.utf8", f"迈向  充满\r\n中{char}国  人民\r\n".encode())
    with raises(data.CorpusFormatError, path, f"{name} at column 2: an invisible control, format or variation") as err:
        data.icwb2("pku", "gold")
    assert str(err.value).startswith(f"{path}:2: ")


def test_every_format_character_and_variation_selector_is_refused_and_text_is_not():
    """Invariant against unicodedata (the oracle): every code point of category Cf and every variation
    selector (U+180B-180D, U+180F, U+FE00-FE0F, U+E0100-E01EF) is refused; the control: letters,
    CJK, punctuation, the ideographic space, private-use and combining characters are not."""
    import unicodedata

    refused = data._not_in_words()
    cf = [c for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    selectors = [0x180B, 0x180C, 0x180D, 0x180F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
    assert len(cf) > 150 and [f"U+{c:04X}" for c in cf + selectors if not refused.match(chr(c))] == []
    assert [ch for ch in "a中，。\u3000\t\ue000\u0301１" if refused.match(ch)] == []


def test_icwb2_bom_after_a_bom_at_the_start(root):
    """Two BOMs at the start of line 1: the first is dropped (a file may start with one), the second
    -> CorpusFormatError at line 1, column 2 (before: both silently stripped)."""
    path = put(root / "icwb2" / "training" / "pku_training.utf8", "\ufeff\ufeff迈向  充满\r\n".encode())
    with raises(data.CorpusFormatError, path, r"U\+FEFF \(byte-order mark\) at column 2"):
        data.icwb2("pku", "train")


@pytest.mark.parametrize(
    "content, message",
    [
        ("迈向  充满\r\n".encode() + "坏".encode("gbk") + b"\r\n", r"not valid UTF-8 \(bytes b'\\xbb' at column 1\)"),
        (b"", "is empty"),
        (b"\r\n  \r\n\r\n", "has only blank lines"),
        ("迈向  充满\r\n希望  的".encode(), r"has no line end after its last line \(2\): the file looks cut short"),
        ("迈向  充满\r\n希望  的\r".encode(), r"has no line end after its last line \(2\)"),
        (HTML, "is an HTML page, not the bakeoff's training/pku_training.utf8"),
    ],
    ids=["gbk", "empty", "blank-lines-only", "cut-mid-line", "cut-between-cr-and-lf", "html-page"],
)
def test_icwb2_training_file_bad(root, content, message):
    """A training file that is not UTF-8, empty, blank, cut short or an HTML page -> CorpusFormatError
    naming the file (and line) and the fix (before: GBK was already refused; the others loaded as an
    empty or a short corpus, or as the 'words' of an HTML page)."""
    path = put(root / "icwb2" / "training" / "pku_training.utf8", content)
    with raises(data.CorpusFormatError, path, message) as err:
        data.icwb2("pku", "train")
    assert FIX_IN_DATA_FOLDER in str(err.value)


@pytest.mark.parametrize(
    "part, relpath, lines, expected",
    [
        ("gold", "gold/pku_test_gold.utf8", 1944, "1,945"),
        ("test", "testing/msr_test.utf8", 3986, "3,985"),
        ("words", "gold/pku_training_words.utf8", 55302, "55,303"),
    ],
    ids=["gold-a-line-short", "test-a-line-long", "words-a-word-short"],
)
def test_icwb2_fixed_file_with_the_wrong_line_count(root, part, relpath, lines, expected):
    """A bakeoff test, gold or word-list file one line off its documented count -> CorpusFormatError
    with expected vs found (before: loaded, and scores were silently computed on a different set)."""
    corpus = relpath.split("/")[1][:3]
    path = put(root / "icwb2" / relpath, "共同  创造\r\n".encode() * lines)
    with raises(data.CorpusFormatError, path, f"has {lines:,} lines, expected {expected} "):
        data.icwb2(corpus, part)


@pytest.mark.parametrize("part", ["train", "test", "gold", "words"])
def test_icwb2_html_page_after_a_blank_line(root, part):
    """An HTML page (what a failed download saves) whose first line is blank, as the bakeoff's file of
    any part -> CorpusFormatError "is an HTML page" naming the file (before: the training part loaded
    the page as one sentence, '<html><body>404</body></html>')."""
    member = data._ICWB2_PARTS[part].format("pku")
    lines = {"train": 1, "test": 1945, "gold": 1945, "words": 55303}[part]
    html = b"\n<html><body>404</body></html>\n" + b"\n" * (lines - 2)
    path = put(root / "icwb2" / member, html)
    with raises(data.CorpusFormatError, path, f"is an HTML page, not the bakeoff's {member}"):
        data.icwb2("pku", part)


SEGMENTED, UNSEGMENTED = "共同  创造  美好\r\n".encode(), "共同创造美好\r\n".encode()


@pytest.mark.parametrize(
    "part, content, message",
    [
        ("test", SEGMENTED * 1945, r"looks segmented: 1,945 of its 1,945 lines hold spaces between words"),
        ("gold", UNSEGMENTED * 1945, r"looks unsegmented: only 0 of its 1,945 lines hold spaces between words"),
        ("train", UNSEGMENTED * 30, r"looks unsegmented: only 0 of its 30 lines hold spaces between words"),
    ],
    ids=["test-is-the-gold-file", "gold-is-the-test-file", "train-is-a-word-list"],
)
def test_icwb2_swapped_files(root, part, content, message):
    """The gold file saved as the test file, the test file as the gold file (same line count), a word
    list as the training file -> CorpusFormatError naming the file and which file it probably is
    (before: loaded; the test text then held spaces, the gold one word a line)."""
    member = data._ICWB2_PARTS[part].format("pku")
    path = put(root / "icwb2" / member, content)
    with raises(data.CorpusFormatError, path, message) as err:
        data.icwb2("pku", part)
    probably = {"test": "the gold file (gold/pku_test_gold.utf8)", "gold": "the test file (testing/pku_test.utf8)"}
    assert f"it is probably {probably.get(part, 'the test file or a word list')}" in str(err.value)


def test_icwb2_test_and_gold_files_in_their_place_load(root):
    """Control for the test above: a test file with a few spaced lines (MSR's has 3 of 3,985), a gold
    file and a training file with some unspaced ones load, line for line."""
    put(root / "icwb2" / "testing" / "msr_test.utf8", UNSEGMENTED * 3982 + SEGMENTED * 3)
    assert data.icwb2("msr", "test")[-1] == "共同  创造  美好"
    put(root / "icwb2" / "gold" / "pku_test_gold.utf8", SEGMENTED * 1000 + UNSEGMENTED * 945)
    assert data.icwb2("pku", "gold")[-1] == ["共同创造美好"]
    put(root / "icwb2" / "training" / "pku_training.utf8", SEGMENTED * 16 + UNSEGMENTED * 14)
    assert len(data.icwb2("pku", "train")) == 30


def test_icwb2_word_list_line_with_whitespace_inside(root):
    """A word-list line holding two words ('研习班  义演', where a line end was lost) -> CorpusFormatError
    naming the file and line (before: loaded as the "word" '研习班  义演')."""
    lines = ["词"] * 55303
    lines[4] = "研习班  义演"
    path = put(root / "icwb2" / "gold" / "pku_training_words.utf8", ("\r\n".join(lines) + "\r\n").encode())
    with raises(data.CorpusFormatError, path, r"'研习班  义演' holds whitespace inside a word") as err:
        data.icwb2("pku", "words")
    assert str(err.value).startswith(f"{path}:5: ")


def test_icwb2_path_is_a_folder(root):
    """A folder where the training file belongs -> DatasetError naming it (before: passed over)."""
    path = root / "icwb2" / "training" / "pku_training.utf8"
    path.mkdir(parents=True)
    with raises(data.DatasetError, path, "is a folder"):
        data.icwb2("pku", "train")


def test_read_lines_on_a_folder(tmp_path):
    """read_lines (crf/segment.py's --input) on a folder -> CorpusFormatError naming it (before:
    IsADirectoryError, which segment.py does not catch)."""
    with raises(data.CorpusFormatError, tmp_path, r"cannot be read \(Is a directory\)"):
        list(data.read_lines(tmp_path))


def test_read_lines_not_utf8_names_file_line_and_bytes(tmp_path):
    """read_lines on a Latin-1 file -> CorpusFormatError with file, line and the bytes, the original
    UnicodeDecodeError chained."""
    path = put(tmp_path / "in.txt", b"ok\ncaf\xe9\n")
    with raises(data.CorpusFormatError, path, r"not valid UTF-8 \(bytes b'\\xe9' at column 4\)") as err:
        list(data.read_lines(path))
    assert str(err.value).startswith(f"{path}:2: ") and isinstance(err.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize(
    "source, message",
    [
        (io.StringIO("北京\n"), r"read_lines needs a path or a binary stream, got the text stream <_io\.StringIO"),
        (3, r"read_lines needs a path or a binary stream, got int 3"),
    ],
    ids=["text-stream", "a-number"],
)
def test_read_lines_given_a_text_stream(source, message):
    """read_lines(io.StringIO(...)) or of a number -> TypeError saying it needs a path or a binary
    stream (before: AttributeError "'str' object has no attribute 'decode'"); the control: the same text
    as a binary stream reads."""
    with pytest.raises(TypeError, match=message):
        list(data.read_lines(source))
    assert list(data.read_lines(io.BytesIO("北京\n".encode()))) == [(1, "北京")]


# ---- Tang poems --------------------------------------------------------------------------------------


def test_poems_archive_with_a_member_missing(root, poem_files):
    """The archive without poet.tang.3000.json -> DatasetError naming the archive and the missing file
    (before: 56,591 poems loaded silently)."""
    path = poems_archive(root, tar_xz({k: v for k, v in poem_files.items() if not k.endswith(".3000.json")}))
    with raises(data.DatasetError, path, r"has no poet\.tang\.3000\.json \(1 of the 58 poem files missing"):
        read_poems()


@pytest.mark.parametrize(
    "member, content, message",
    [
        (
            "poetry/poet.tang.5000.json",
            [POEM] * 999,
            "member poetry/poet.tang.5000.json holds 999 poems, expected 1,000",
        ),
        (
            "poetry/poet.tang.57000.json",
            [POEM] * 592,
            "member poetry/poet.tang.57000.json holds 592 poems, expected 591",
        ),
        ("poetry/poet.tang.0.json", {"poems": []}, "member poetry/poet.tang.0.json is not a JSON list of poems"),
        (
            "poetry/poet.tang.0.json",
            [POEM] * 7 + [{**POEM, "paragraphs": "白日依山尽"}] + [POEM] * 992,
            "member poetry/poet.tang.0.json poem 7 is not a dict of author, title, paragraphs, strains",
        ),
        ("poetry/poet.tang.58000.json", [POEM] * 1000, r"has an unexpected member poetry/poet\.tang\.58000\.json"),
    ],
    ids=["a-poem-short", "a-poem-long", "not-a-list", "poem-without-line-list", "extra-file"],
)
def test_poems_archive_member_not_as_documented(root, poem_files, member, content, message):
    """A poem file with the wrong count or shape, or one the corpus does not have -> DatasetError naming
    the archive, the member and expected vs found (before: loaded as it was)."""
    files = {**poem_files, member: json.dumps(content, ensure_ascii=False).encode()}
    path = poems_archive(root, tar_xz(files))
    with raises(data.DatasetError, path, message):
        read_poems()


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '[{"author": "王'.encode(),
            r"member poetry/poet\.tang\.0\.json is not valid JSON: truncated or corrupt \(line 1",
        ),
        ("[]".encode("utf-16"), r"member poetry/poet\.tang\.0\.json is not UTF-8 text \(bytes b'\\xff'"),
    ],
    ids=["truncated-json", "utf-16"],
)
def test_poems_archive_member_not_json(root, poem_files, content, message):
    """A member that is not whole UTF-8 JSON -> DatasetError naming the archive and the member (before:
    JSONDecodeError naming neither)."""
    path = poems_archive(root, tar_xz({**poem_files, "poetry/poet.tang.0.json": content}))
    with raises(data.DatasetError, path, message):
        read_poems()


@pytest.mark.parametrize(
    "content, message",
    [
        (DEEP_JSON, r"member poetry/poet\.tang\.0\.json is corrupt: its JSON nests lists or objects too deeply"),
        (LONG_INT_JSON, r"member poetry/poet\.tang\.0\.json is corrupt: it holds a number too long to read"),
    ],
    ids=["nested-200000-deep", "5000-digit-integer"],
)
def test_poems_archive_member_json_that_python_cannot_parse(root, poem_files, content, message):
    """A poem file nested 200,000 deep or holding a 5000-digit integer -> DatasetError naming the
    archive and the member (before: RecursionError, or a bare ValueError, naming neither)."""
    path = poems_archive(root, tar_xz({**poem_files, "poetry/poet.tang.0.json": content}))
    with raises(data.DatasetError, path, message):
        read_poems()


def test_poems_archive_member_with_a_byte_order_mark_loads(root, poem_files):
    """A poem file starting with a UTF-8 BOM -> the same 57,591 poems (before: "is not valid JSON:
    truncated or corrupt")."""
    member = "poetry/poet.tang.0.json"
    poems_archive(root, tar_xz({**poem_files, member: b"\xef\xbb\xbf" + poem_files[member]}))
    poems = read_poems()
    assert len(poems) == 57591 and poems[0] == POEM


def _flip_middle(content):
    out = bytearray(content)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda good: good[: len(good) // 2], r"cannot be read as a \.tar\.xz archive, it is truncated or corrupt"),
        # Where a flipped byte shows depends on what it hits: the xz check, a member, or a tar header
        # (tarfile takes a bad header after the first for the end of the archive: members go missing).
        (_flip_middle, r"(member \S+ )?(cannot be read|is not (valid JSON|UTF-8|a JSON list)|has no poet)"),
        (lambda good: b"", "is empty"),
        (lambda good: HTML, r"is an HTML page, not a \.tar\.xz archive"),
    ],
    ids=["truncated", "byte-flipped", "empty", "html-page"],
)
def test_poems_archive_not_a_whole_tar_xz(root, poem_files, bad, message):
    """A truncated, corrupt, empty or HTML poems archive -> DatasetError naming the archive and the fix
    (before: EOFError, LZMAError or tarfile.ReadError naming no file)."""
    path = poems_archive(root, bad(tar_xz(poem_files)))
    with raises(data.DatasetError, path, message) as err:
        read_poems()
    assert FIX_IN_DATA_FOLDER in str(err.value)


def test_poems_archive_path_is_a_folder(root):
    """A folder where the archive belongs -> DatasetError naming it (before: passed over, and the 58
    files were downloaded instead)."""
    path = root / "chinese_poetry" / "poet.tang.zhCN.tar.xz"
    path.mkdir(parents=True)
    with raises(data.DatasetError, path, "is a folder"):
        read_poems()


def test_poems_downloaded_file_truncated_in_the_cache(root, poem_files, tmp_path, monkeypatch):
    """No archive, and a truncated poet.tang.0.json in the Keras cache (left by a download) ->
    DatasetError naming that file and saying to delete it (before: JSONDecodeError)."""
    monkeypatch.delenv(data.DATA_ENV)
    path = put(tmp_path / "keras_home" / "datasets" / "poet.tang.0.json", poem_files["poetry/poet.tang.0.json"][:500])
    with raises(data.DatasetError, path, "is not valid JSON: truncated or corrupt") as err:
        read_poems()
    assert "Delete it and run again" in str(err.value)


def test_icwb2_bad_file_unpacked_in_the_keras_cache_says_delete_folder_and_zip(root, tmp_path, monkeypatch):
    """A BOM inside a bakeoff file that get_file unpacked from icwb2-data.zip into the cache -> the fix
    names the unpacked folder and the zip to delete (deleting the file alone would unpack it again)."""
    monkeypatch.delenv(data.DATA_ENV)
    cache = tmp_path / "keras_home" / "datasets"
    put(cache / "icwb2-data.zip", b"PK\x05\x06" + bytes(18))
    member = cache / "icwb2-data_extracted" / "icwb2-data" / "training" / "pku_training.utf8"
    path = put(member, "迈向  充满\r\n\ufeff希望\r\n".encode())
    with raises(data.CorpusFormatError, path, r"U\+FEFF \(byte-order mark\) at column 1") as err:
        data.icwb2("pku", "train")
    assert f"Delete {cache / 'icwb2-data_extracted'} and the archive it came from ({cache / 'icwb2-data.zip'})" in str(
        err.value
    )


def test_icwb2_download_without_the_member(root, tmp_path, monkeypatch):
    """icwb2-data.zip downloads and unpacks but lacks the file asked for (an incomplete download) ->
    DatasetNotFoundError naming the member and what to delete."""
    import keras

    unpacked = tmp_path / "keras_home" / "datasets" / "icwb2-data_extracted"
    unpacked.mkdir(parents=True)
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: str(unpacked))
    with pytest.raises(data.DatasetNotFoundError, match="has no member 'icwb2-data/training/msr_training.utf8'") as err:
        data.icwb2("msr", "train")
    assert f"delete {unpacked} and {unpacked.parent / 'icwb2-data.zip'} and run again" in str(err.value)


# ---- smallNORB -------------------------------------------------------------------------------------------
# The six files are written by conftest.py's _write_norb; the control that its good files load
# exactly is tests/test_utils.py::test_small_norb_reads_plain_and_gzipped_files_exactly.

NORB_FIX = "from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/; small_norb never downloads."
NORB = _norb_arrays()
NORB_DAT = NORB["train", "dat"]


def test_small_norb_missing_folder_or_file_lists_the_expected_names(root, monkeypatch):
    """No folder, no folder given with KEXUE_DATA unset, or one file missing -> DatasetNotFoundError
    listing the expected file names and where to download them (never a download)."""
    names = [_norb_name(split, part) for split in ("train", "test") for part in ("dat", "cat", "info")]
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.small_norb(root / "smallnorb", with_info=True)
    message = str(err.value)
    assert f"the folder {root / 'smallnorb'} does not exist" in message
    assert all(f"\n    {name}" in message for name in names) and "(each may also end in .gz)" in message
    assert f"download them from {data.NORB_URL} into {root / 'smallnorb'}" in message
    assert "small_norb never downloads" in message

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    with pytest.raises(data.DatasetNotFoundError, match=r"no folder given and KEXUE_DATA is unset"):
        data.small_norb()

    arrays = _norb_arrays()
    del arrays["test", "cat"]
    _write_norb(root / "smallnorb", arrays)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.small_norb(root / "smallnorb", expected_count=3)
    assert f"{root / 'smallnorb'} has no {names[4]} (1 of 4 files missing)" in str(err.value)
    assert names[2] not in str(err.value)  # -info is listed only when asked for


def gzip_damaged(content, how):
    """``content`` gzipped, then cut in half (``how="cut"``) or with 8 bytes of its deflate stream
    overwritten."""
    packed = bytearray(gzip.compress(content))
    if how == "cut":
        return bytes(packed[: len(packed) // 2])
    packed[len(packed) // 2 : len(packed) // 2 + 8] = b"\xff" * 8  # inside the deflate stream
    return bytes(packed)


@pytest.mark.parametrize(
    "key, content, zipped, problem",
    [
        (
            ("train", "dat"),
            _norb_matrix(NORB_DAT.view(np.int32), _NORB_FLOAT32, NORB_DAT.shape),
            False,
            "holds a single-precision float matrix (magic number 0x1E3D4C51), expected 0x1E3D4C55 (uint8 matrix): "
            "it is another file",
        ),
        (
            ("test", "cat"),
            _norb_matrix(np.array([1, 3, 0], np.uint8)),
            False,
            "holds a uint8 matrix (magic number 0x1E3D4C55), expected 0x1E3D4C54 (int32 matrix): it is another file",
        ),
        (
            ("train", "dat"),
            np.array([_NORB_UINT8, 4, 3, 2, 96, 96], ">i4").tobytes() + NORB_DAT.tobytes(),
            False,
            "has the magic number of a uint8 matrix written big-endian (0x554C3D1E), expected 0x1E3D4C55 (uint8 "
            "matrix): the format is little-endian",
        ),
        (
            ("train", "dat"),
            b"PK\x03\x04" + bytes(100),
            False,
            "does not start with a binary-matrix magic number (found 0x04034B50, expected 0x1E3D4C55 (uint8 matrix))",
        ),
        (
            ("train", "dat"),
            b"<!DOCTYPE html>\n<html><body>Not Found</body></html>\n",
            True,
            "holds an HTML page, not a binary matrix (what a failed or redirected download saves)",
        ),
        (("train", "cat"), b"", False, "is empty"),
        (
            ("train", "dat"),
            _norb_matrix(NORB_DAT)[:-100],
            False,
            "has 55,196 bytes of data after its 24-byte header, expected 55,296 (a uint8 matrix of shape "
            "(3, 2, 96, 96)): it is truncated",
        ),
        (
            ("test", "info"),
            _norb_matrix(NORB["test", "info"]) + b"\0\0\0\0",
            True,
            "has 52 bytes of data after its 20-byte header, expected 48 (an int32 matrix of shape (3, 4)): it has "
            "bytes after the matrix, it is corrupt",
        ),
        (
            ("train", "dat"),
            _norb_matrix(NORB_DAT.transpose(0, 2, 3, 1).copy()),
            False,
            "holds a uint8 matrix of shape (3, 96, 96, 2), expected (3, 2, 96, 96): it is another file",
        ),
        (
            ("test", "dat"),
            _norb_matrix(np.zeros((4, 2, 96, 96), np.uint8)),
            True,
            "holds a uint8 matrix of shape (4, 2, 96, 96), expected (3, 2, 96, 96): it is another file",
        ),
        (
            ("train", "cat"),
            _norb_matrix(np.array([4, 5, -1], np.int32)),
            False,
            "the labels[1] = 5 is not a label in 0..4 (2 such labels)",
        ),
        (
            ("test", "info"),
            _norb_matrix(np.array([[0, 1, 2, 3], [5, 7, 3, 0], [2, 2, 40, 1]], np.int32)),
            False,
            "row 1 has azimuth 3, outside 0, 2, ..., 34 (column 2; 2 such rows): it is not smallNORB's -info file",
        ),
        (("train", "dat"), "corrupt", True, "is a corrupt or truncated gzip file ("),
        (("test", "cat"), "cut", True, "is a corrupt or truncated gzip file (EOFError: "),
    ],
    ids=[
        "float-magic",
        "uint8-labels",
        "big-endian",
        "zip-magic",
        "html-gzipped",
        "empty",
        "truncated",
        "trailing-bytes",
        "wrong-dims",
        "wrong-count",
        "labels-out-of-range",
        "info-out-of-range",
        "corrupt-gzip",
        "truncated-gzip",
    ],
)
def test_small_norb_bad_file_is_named_with_the_problem_and_fix(root, key, content, zipped, problem):
    """One damaged file among six good ones (plain or gzipped) -> DatasetError that starts with its path
    and what is wrong with it and ends with the fix (a good copy, gzipped or not, from NYU's page)."""
    folder = root / "smallnorb"
    if isinstance(content, str):  # a damaged gzip stream of the good file
        content = gzip_damaged(_norb_matrix(NORB[key]), content)
    elif zipped:
        content = gzip.compress(content)
    paths = _write_norb(folder, NORB)
    paths[key].unlink()
    path = paths[key].with_name(paths[key].name + ".gz" * zipped)
    path.write_bytes(content)
    with pytest.raises(data.DatasetError) as err:
        data.small_norb(folder, with_info=True, expected_count=3)
    message = str(err.value)
    assert message.startswith(f"{path}: {problem}"), message
    assert message.endswith(f"\nReplace it with a good copy of {_norb_name(*key)} (gzipped or not) {NORB_FIX}")


def test_small_norb_folder_in_place_of_a_file_is_named(root):
    """A folder where -cat.mat belongs -> DatasetError naming it."""
    folder = root / "smallnorb"
    paths = _write_norb(folder, NORB)
    paths["train", "cat"].unlink()
    paths["train", "cat"].mkdir()
    with raises(data.DatasetError, paths["train", "cat"], r"is a folder \(or another non-file\), not the dataset file"):
        data.small_norb(folder, expected_count=3)
