"""Speed of the attention layer against keras.layers.MultiHeadAttention, on the current backend.

    python attention/bench.py                  # TensorFlow (the default backend)
    KERAS_BACKEND=jax python attention/bench.py
    python attention/bench.py --jit            # TensorFlow with XLA (jit_compile=True)

The table is printed and written to runs/attention/bench_<backend>[_jit].md (with --reference, to
results/attention/, where the tables attention/README.md quotes are committed).

For each shape, a model ``Input -> attention -> GlobalAveragePooling1D -> Dense(1)`` is timed on one
batch: a training step (forward, gradient, Adam update; ``train_on_batch``) and a forward pass
(``predict_on_batch``), median of ``--repeats`` calls after a warm-up, in milliseconds. Rows:

* ``Attention (article)``: the article's layer (no scaling, no output projection);
* ``Attention (= MHA)``: scaling, biases and the output projection on: the same computation as
  ``MultiHeadAttention``, through the fused ``dot_product_attention`` path and through the layer's own
  batched matmuls;
* ``MultiHeadAttention``: Keras's layer at the same heads and sizes.

The first shape is the article's IMDB model (batch 32, 80 words, 128 features, 8 heads of 16).
"""

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from attention.layers import Attention  # noqa: E402
from utils import runs  # noqa: E402

SHAPES = [  # batch, length, features, heads, size per head
    (32, 80, 128, 8, 16),
    (16, 512, 256, 8, 32),
]


def layers(features, heads, size):
    return {
        "Attention (article)": lambda: Attention(heads, size),
        "Attention (= MHA), fused": lambda: Attention(
            heads, size, use_scale=True, use_bias=True, output_dim=features, fused=True
        ),
        "Attention (= MHA), matmul": lambda: Attention(
            heads, size, use_scale=True, use_bias=True, output_dim=features, fused=False
        ),
        "MultiHeadAttention": lambda: _MHA(heads, size),
    }


class _MHA(keras.layers.Layer):
    """MultiHeadAttention as a one-input self-attention layer."""

    def __init__(self, heads, size):
        super().__init__()
        self.mha = keras.layers.MultiHeadAttention(heads, size)

    def call(self, x):
        return self.mha(x, x)


def timed(fn, repeats):
    fn()
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def bench(make, shape, repeats, jit):
    batch, length, features, _, _ = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, length, features)).astype("float32")
    y = rng.integers(0, 2, (batch, 1)).astype("float32")
    inputs = keras.Input((length, features))
    h = keras.layers.GlobalAveragePooling1D()(make()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile("adam", "binary_crossentropy", jit_compile=jit)
    return timed(lambda: model.train_on_batch(x, y), repeats), timed(lambda: model.predict_on_batch(x), repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed calls per row (median reported)")
    p.add_argument("--jit", action="store_true", help="jit_compile=True (XLA) on TensorFlow")
    p.add_argument("--reference", action="store_true", help="write the table to results/attention/ (the reference)")
    args = p.parse_args(argv)
    backend = keras.backend.backend()
    jit = True if args.jit else ("auto" if backend != "tensorflow" else False)
    env = runs.environment()
    lines = [
        f"backend {backend} {__import__(backend).__version__}, keras {keras.__version__}, jit_compile={jit}, "
        f"median of {args.repeats} calls, {env['machine']}, {datetime.date.today().isoformat()}",
        "command: " + " ".join(["python", "attention/bench.py", *(argv if argv is not None else sys.argv[1:])]),
    ]
    print("\n".join(lines))
    for shape in SHAPES:
        batch, length, features, heads, size = shape
        lines += [
            "",
            f"batch {batch}, length {length}, features {features}, {heads} heads x {size}",
            "",
            "| layer | train step (ms) | forward (ms) |",
            "|---|---|---|",
        ]
        print("\n".join(lines[-5:]))
        for name, make in layers(features, heads, size).items():
            train_ms, forward_ms = bench(make, shape, args.repeats, jit)
            lines.append(f"| {name} | {train_ms:.2f} | {forward_ms:.2f} |")
            print(lines[-1], flush=True)
    folder = runs.REFERENCE if args.reference else runs.REPO / "runs"
    path = folder / "attention" / f"bench_{backend}{'_jit' if args.jit else ''}.md"
    runs.write_text_atomic(path, "\n".join(lines) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
