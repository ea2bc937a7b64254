"""Speed of the CRF layer and of the segmenter, on the current backend. Prints Markdown tables.

    python crf/bench.py                       # layer timings, then segmentation speed vs jieba
    python crf/bench.py --model runs/crf/article-pku-seed0   # segment with this trained model
    KERAS_BACKEND=jax python crf/bench.py --layer-only

1. The layer: milliseconds per call of (negative log-likelihood + its gradient) and of Viterbi
   decoding, batch 64, length 128, 4 and 17 tags, compiled with and without XLA (TensorFlow's
   ``jit_compile``; JAX always compiles with XLA; PyTorch runs eagerly).
2. The segmenter: characters per second on the PKU test text, ours (batched; Viterbi in NumPy as
   crf/segment.py does it, and in the graph for comparison) against jieba's default mode, in the
   same run.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from crf.layers import CRF  # noqa: E402


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


def bench_layer(repeats):
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


def bench_segmenter(model_dirs, repeats):
    import jieba

    from crf.segment import Segmenter
    from utils import data

    test = [line for line in data.icwb2("pku", "test") if line]
    chars = sum(len(line) for line in test)
    jieba.setLogLevel(60)
    jieba.initialize()
    rows = [
        (f"jieba {jieba.__version__}, default mode (jieba.lcut per line)", lambda: [jieba.lcut(line) for line in test])
    ]
    for model_dir in model_dirs:
        segmenter = Segmenter.load(model_dir)
        name = f"ours, {model_dir.name}"
        rows.append((f"{name}, batch 256", lambda s=segmenter: s.cut_lines(test, 256)))
        rows.append((f"{name}, batch 1024", lambda s=segmenter: s.cut_lines(test, 1024, max_chars=65536)))
        in_graph = Segmenter.load(model_dir, host_decode=False)
        rows.append((f"{name}, batch 256, Viterbi in the graph", lambda s=in_graph: s.cut_lines(test, 256)))
        if keras.backend.backend() == "tensorflow":
            xla = Segmenter.load(model_dir, jit_compile=True)
            rows.append((f"{name}, batch 256, XLA", lambda s=xla: s.cut_lines(test, 256)))
            xla_graph = Segmenter.load(model_dir, jit_compile=True, host_decode=False)
            rows.append((f"{name}, batch 256, XLA, Viterbi in the graph", lambda s=xla_graph: s.cut_lines(test, 256)))
    if not model_dirs:
        print("\n(no --model given: only jieba is timed; train one with python crf/train.py)")
    print(f"\n### Segmentation speed on the PKU test text ({len(test)} lines, {chars} characters), best of {repeats}\n")
    print("| segmenter | chars/s |")
    print("|---|---|")
    for name, fn in rows:
        fn()  # warm-up: compiling, caches
        best = min(timed_once(fn) for _ in range(repeats))
        print(f"| {name} | {chars / best:,.0f} |", flush=True)


def timed_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", type=Path, nargs="*", default=[], help="trained model folders (crf/train.py writes runs/crf/<run>/)"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layer-only", action="store_true")
    p.add_argument("--segment-only", action="store_true")
    args = p.parse_args(argv)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPU cores")
    if not args.segment_only:
        bench_layer(args.repeats)
    if not args.layer_only:
        bench_segmenter(args.model, args.repeats)


if __name__ == "__main__":
    main()
