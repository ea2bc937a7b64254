"""Print new five-character couplets (or quatrains) from a poem generator that poetry/train.py saved.

Each poem is decoded from a draw z ~ N(0, I) of the VAE's prior. Greedy decoding (the default, the
article's) takes the most likely character at every position; --temperature and --top-k sample each
position from the decoder's distribution instead (a temperature below 1 sharpens it; top-k keeps the
k likeliest characters). The same --seed prints the same poems.

Examples:
    python poetry/generate.py runs/poetry/article-seed0                  10 couplets, greedy
    python poetry/generate.py runs/poetry/article-seed0 -n 5 --seed 7
    python poetry/generate.py runs/poetry/article-seed0 --temperature 0.8 --top-k 20
    python poetry/generate.py runs/poetry/quatrain-seed0 -n 3            quatrains, from the quatrain model

A model folder holds generator.keras (z -> one distribution over the characters per position) and
vocab.json (the characters, index = id); poetry/train.py writes one per trained seed, under
runs/poetry/ by default.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

WRITER = "poetry/train.py"


class Poet:
    """A trained generator and its vocabulary: ``Poet.load(folder).write(10, seed=0)``.

    Args:
        generator: a Keras model, z (batch, latent) -> logits (batch, length, vocabulary).
        vocab: the characters, index = id (id 0 is ``<unk>``).
    """

    def __init__(self, generator, vocab):
        self.generator, self.vocab = generator, list(vocab)
        self.latent_dim = int(generator.input_shape[-1])
        self.length = int(generator.output_shape[1])
        if generator.output_shape[-1] != len(self.vocab):
            raise ValueError(
                f"the generator gives {generator.output_shape[-1]} characters per position but the vocabulary has "
                f"{len(self.vocab)}: generator.keras and vocab.json are from different models"
            )

    @classmethod
    def load(cls, folder):
        """Read ``folder/generator.keras`` and ``folder/vocab.json``. A missing file raises
        ``FileNotFoundError``, a file given as the folder ``NotADirectoryError``, a folder where a file
        belongs ``IsADirectoryError``, a corrupt file or a damaged vocabulary ``utils.runs.ModelFileError``
        (a ``ValueError``); all name the file."""
        from poetry import layers  # noqa: F401  (registers GCNN for deserialisation)
        from utils.runs import ModelFileError, load_json_file, load_model_file, model_folder

        remedy = "train the model again (python poetry/train.py writes one per trained seed, under runs/poetry/)"
        folder = model_folder(folder, ("generator.keras", "vocab.json"), remedy, WRITER)
        vocab = load_json_file(folder / "vocab.json", remedy)
        if not (isinstance(vocab, list) and all(isinstance(c, str) for c in vocab)):
            raise ModelFileError(
                f"{folder / 'vocab.json'}: not a poem generator's vocabulary (expected a JSON list of characters, "
                f"got {type(vocab).__name__}); {remedy}"
            )
        problem = _vocab_problem(vocab)
        if problem:
            raise ModelFileError(f"{folder / 'vocab.json'}: {problem}: the model folder is damaged; {remedy}")
        generator = load_model_file(folder / "generator.keras", remedy)
        try:
            return cls(generator, vocab)
        except ValueError as err:  # the two files do not fit: name the folder
            raise ModelFileError(f"{folder}: {err}; {remedy}") from None

    def save(self, folder):
        """Write ``generator.keras`` and ``vocab.json`` into ``folder`` (each replaced atomically)."""
        from utils.runs import save_model_atomic, write_text_atomic

        save_model_atomic(self.generator, Path(folder) / "generator.keras")
        write_text_atomic(Path(folder) / "vocab.json", json.dumps(self.vocab, ensure_ascii=False))

    def logits(self, z, batch_size=1000):
        """The generator on latents ``z`` (n, latent), in batches: (n, length, vocabulary) float32."""
        import keras

        out = [
            keras.ops.convert_to_numpy(self.generator(z[i : i + batch_size], training=False))
            for i in range(0, len(z), batch_size)
        ]
        return np.concatenate(out).astype("float32")

    def decode(self, logits, temperature=None, top_k=None, rng=None):
        """Characters from logits: the argmax at every position (``temperature`` None), or a draw from
        softmax(logits / temperature) restricted to the ``top_k`` likeliest. Returns strings.

        Id 0, ``<unk>``, is never chosen: it stands for characters unseen in training (so that held-out
        poems can be encoded), it is no character to write, and the article's model has no such class.
        """
        logits = np.array(logits, dtype="float64")
        logits[..., 0] = -np.inf
        if temperature is None:
            ids = logits.argmax(-1)
        else:
            rng = rng if rng is not None else np.random.default_rng()
            # shifted by the maximum before the division, so that no temperature overflows
            with np.errstate(over="ignore"):  # a tiny temperature: -inf for all but the likeliest, as it should be
                scaled = (logits - logits.max(-1, keepdims=True)) / temperature
            if top_k is not None and top_k < scaled.shape[-1]:
                keep = np.argpartition(-scaled, top_k - 1, axis=-1)[..., :top_k]  # exactly k, ties or not
                kept = np.full_like(scaled, -np.inf)
                np.put_along_axis(kept, keep, np.take_along_axis(scaled, keep, -1), -1)
                scaled = kept
            cdf = np.exp(scaled).cumsum(-1)
            u = rng.random(cdf.shape[:-1] + (1,)) * cdf[..., -1:]
            # the first id whose cumulative mass exceeds u: an id of probability 0 is never drawn
            ids = (cdf <= u).sum(-1)
        return ["".join(self.vocab[i] for i in row) for row in ids]

    def write(self, n, seed=0, temperature=None, top_k=None):
        """``n`` poems decoded from z ~ N(0, I) (drawn with NumPy's generator seeded by ``seed``), as a list."""
        return list(self.poems(n, seed, temperature, top_k))

    def poems(self, n, seed=0, temperature=None, top_k=None):
        """The poems of ``write``, one by one: they are made 250 at a time (z drawn, decoded), so memory
        stays bounded whatever ``n``, and the first poems come at once."""
        check_options(n, temperature, top_k)
        return self._poems(n, seed, temperature, top_k)

    def _poems(self, n, seed, temperature, top_k):
        rng = np.random.default_rng(seed)
        chunk = 250  # poems decoded at a time: the float64 softmax of 250 x 10 x 7,000 is 140 MB
        for start in range(0, n, chunk):
            z = rng.standard_normal((min(chunk, n - start), self.latent_dim)).astype("float32")
            yield from self.decode(self.logits(z), temperature, top_k, rng)


def check_options(n, temperature, top_k):
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of poems must be 1 or more, got {n!r}")
    if temperature is not None and not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(
            f"the temperature must be a finite number above 0, got {temperature!r} (for the most likely "
            "characters, leave it out: greedy decoding)"
        )
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top-k must be 1 or more, got {top_k!r}")
    if top_k is not None and temperature is None:
        raise ValueError("top-k applies to sampling: give --temperature too (1 samples from the model as it is)")


def _vocab_problem(vocab):
    """What makes ``vocab`` (a list of strings) other than ``utils.data.char_vocabulary`` gives, or None:
    ``<unk>`` at id 0, then distinct single characters."""
    from utils.data import UNKNOWN_CHAR

    if not vocab or vocab[0] != UNKNOWN_CHAR:
        return f"entry 0 is {vocab[0] if vocab else None!r}, not {UNKNOWN_CHAR!r}"
    ids = {}
    for i, char in enumerate(vocab[1:], start=1):
        if len(char) != 1:
            return f"entry {i} ({char!r}) is not one character"
        if char in ids:
            return f"entries {ids[char]} and {i} are both {char!r}"
        ids[char] = i
    return None


def punctuate(text):
    """A couplet or quatrain with its punctuation: 'XXXXX，XXXXX。' per couplet."""
    return "".join(f"{text[i : i + 5]}，{text[i + 5 : i + 10]}。" for i in range(0, len(text), 10))


def main(argv=None):
    from utils.runs import model_folder_argument

    p = argparse.ArgumentParser(
        prog="poetry/generate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", type=model_folder_argument(WRITER), help="a model folder written by poetry/train.py")
    p.add_argument("-n", type=int, default=10, help="how many poems (default 10)")
    p.add_argument("--seed", type=int, default=0, help="the random seed: the same seed prints the same poems")
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature (> 0) instead of greedy")
    p.add_argument("--top-k", type=int, default=None, help="with --temperature: sample among the k likeliest")
    p.add_argument(
        "--plain", action="store_true", help="no punctuation: the 10 (or 20) characters as the model gives them"
    )
    args = p.parse_intermixed_args(argv)  # options before or after the model folder
    try:
        check_options(args.n, args.temperature, args.top_k)
    except ValueError as err:
        p.error(str(err))
    if args.seed < 0:
        p.error(f"--seed must be 0 or more, got {args.seed}")
    try:
        poet = Poet.load(args.model)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError) as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    try:  # printed as they come: any -n runs in bounded memory
        for poem in poet.poems(args.n, args.seed, args.temperature, args.top_k):
            print(poem if args.plain else punctuate(poem))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped (generate.py ... | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit


if __name__ == "__main__":
    main()
