"""
Title: The variational autoencoder on MNIST (变分自编码器（一）：原来是这么一回事, kexue.fm/archives/5253)
Description: the article's VAE and its class-mean CVAE, with a 2-d latent, and the figures it draws.

The article explains the VAE as a model that gives every sample its own Gaussian posterior p(Z|X),
trained to reconstruct the sample from a draw of it while the KL term pulls every posterior towards
the prior N(0, I). Its code (bojone/vae, vae_keras.py and cvae_keras.py) trains one on MNIST with a
2-d latent and plots the test digits' latent means (they cluster by digit) and a 15x15 grid of images
decoded from the prior's quantiles (a smooth map of the digits). The CVAE keeps the decoder
unconditioned and learns one prior mean per class; decoding around the mean of "9" draws nines,
some drifting towards 7. The article reports no numbers.

Models, as in the article's code: MNIST flattened to 784 values / 255; encoder Dense 256 relu ->
mean and log-variance of a 2-d latent; Sampling; decoder Dense 256 relu -> Dense 784 sigmoid; loss =
binary cross-entropy summed over the 784 pixels + KL, averaged over the batch; RMSprop (learning
rate 0.001), batch 100, the test set as validation. VAE 50 epochs; CVAE (vae_keras.py's model plus
``Dense(2)`` of the one-hot class as the prior mean) 100 epochs, as cvae_keras.py. Extension, not in
the article: a convolutional VAE (two stride-2 convolutions in, two transposed convolutions out,
the same 2-d latent and loss), 20 epochs. Each 3 seeds.

Evaluation on the 10,000 test images: the reconstruction term (k draws per image), the KL (closed
form), their sum (the negative ELBO, in nats per image) and the importance-weighted estimate of
-log p(X) with k draws; the 5-nearest-neighbour accuracy of the test digits' latent means (against
a 2-d PCA of the pixels as the control) and how smoothly the 15x15 grid changes.

Run:  python vae/train.py                   (VAE, CVAE and the conv VAE, 3 seeds: about 65 minutes on 2 CPU cores)
      python vae/train.py --models vae --seeds 1
      python vae/train.py --quick           (the VAE, 20 epochs, 1 seed: about 90 s)
      python vae/train.py --smoke           (seconds: checks that the script runs)
Records go to runs/results/ and the figures to runs/results/vae/ (the committed reference: results/,
written only with --reference).
"""

import os
import sys
from pathlib import Path
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # utils/ sits one folder up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from utils import cli, data, feed, plots, progress, report, runs  # noqa: E402
from utils.callbacks import EpochTimer, PrintEpoch  # noqa: E402
from vae.layers import (  # noqa: E402
    KLDivergence,
    Sampling,
    bernoulli_nll,
    check_images,
    gaussian_kl,
    iw_log_likelihood,
    log_importance_weights,
)

ARTICLE = "vae"
BATCH_SIZE = 100
LATENT_DIM = 2  # 2 so that the latent can be drawn, as in the article
HIDDEN = 256
GRID = 15  # the article's 15x15 grid over norm.ppf(linspace(0.05, 0.95, 15))
CVAE_DIGIT = 9  # the article's CVAE figure: decoding around the learned mean of "9"
KNN_REFERENCE = 10_000  # training images whose latent means the 5-NN test digits are compared with
MODELS = {
    # name: architecture, class-mean prior, the article's epochs, importance-weighted draws per image
    "vae": {"arch": "mlp", "conditional": False, "epochs": 50, "iw_k": 1000},
    "cvae": {"arch": "mlp", "conditional": True, "epochs": 100, "iw_k": 1000},
    "conv_vae": {"arch": "conv", "conditional": False, "epochs": 20, "iw_k": 20},  # extension
}
MODES = {
    "full": {"train_size": None, "test_size": None, "epochs": None, "seeds": 3, "models": list(MODELS), "iw_k": None},
    # The article's VAE, long enough for the digits to separate in the latent and the grid to show them.
    "quick": {"train_size": None, "test_size": None, "epochs": 20, "seeds": 1, "models": ["vae"], "iw_k": 100},
    # Seconds: the pipeline end to end.
    "smoke": {"train_size": 1000, "test_size": 500, "epochs": 1, "seeds": 1, "models": ["vae", "cvae"], "iw_k": 4},
}
# The article's own code (vae_keras.py, bojone/vae 21d6156) on these machines (ANCHORS.md): the last
# epoch's val_loss (a one-draw test negative ELBO) in three runs without a seed, and the seconds of
# training per epoch of the first run (2026-11-23, another machine).
ARTICLE_CODE = {"vae": ((151.5, 153.16, 152.63), 1.6)}
BLOG_SOURCE = "kexue.fm/archives/5253 publishes figures only, no numbers"
CLAIM = report.Claim(
    statement="a VAE with a 2-d latent learns a map of the digits: the test digits' latent means cluster by "
    "digit, and images decoded over a grid of the prior change smoothly from one digit to the next",
    criterion="the test digits' latent means are classified by their 5 nearest neighbours (among 10,000 training "
    "digits' means) at least 0.10 more accurately than on the pixels' first two principal components (PCA); and "
    "neighbouring cells of the decoded 15x15 grid are less than 0.45 times as far apart (mean pixel distance) as "
    "any two cells (cells in random order: about 1)",
    rows=[
        report.Row("knn", "vae", "knn_acc", "VAE: 5-NN accuracy of the test latent means", digits=3),
        report.Row("pca", "vae", "knn_acc_pca", "control, a 2-d PCA of the pixels: 5-NN accuracy", digits=3),
        report.Row("smooth", "vae", "grid_smoothness", "decoded grid: neighbours' distance / any two cells'", digits=3),
        report.Row("nelbo", "vae", "neg_elbo", "VAE: test negative ELBO (nats per image)", digits=2),
    ],
    holds=lambda v: v["knn"] >= v["pca"] + 0.10 and v["smooth"] < 0.45,
    blog_source=BLOG_SOURCE,
)


"""## 1. Data: MNIST / 255"""


def load_mnist(arch, train_size=None, test_size=None):
    """Images in [0, 1] (flattened to 784 for the MLP, 28x28x1 for the conv VAE), one-hot and integer
    labels: ``(x, y_onehot, y), (x_test, y_test_onehot, y_test)``."""
    (x, y), (x_test, y_test) = data.mnist()
    x, y, x_test, y_test = x[:train_size], y[:train_size], x_test[:test_size], y_test[:test_size]
    shape = (-1, 784) if arch == "mlp" else (-1, 28, 28, 1)
    prep = lambda images: check_images(images.reshape(shape).astype("float32") / 255.0, "MNIST")
    one_hot = lambda labels: keras.utils.to_categorical(labels, 10).astype("float32")
    return (prep(x), one_hot(y), y), (prep(x_test), one_hot(y_test), y_test)


"""## 2. The models"""


def build_encoder(arch):
    """Images -> [z_mean, z_log_var], each (batch, 2)."""
    if arch == "mlp":
        x = keras.Input((784,), name="images")
        h = keras.layers.Dense(HIDDEN, activation="relu")(x)
    else:  # extension: two stride-2 convolutions
        x = keras.Input((28, 28, 1), name="images")
        h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
        h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
        h = keras.layers.Dense(HIDDEN, activation="relu")(keras.layers.Flatten()(h))
    z_mean = keras.layers.Dense(LATENT_DIM, name="z_mean")(h)
    z_log_var = keras.layers.Dense(LATENT_DIM, name="z_log_var")(h)
    return keras.Model(x, [z_mean, z_log_var], name="encoder")


def build_decoder(arch):
    """Latents (batch, 2) -> pixel probabilities shaped like the images."""
    z = keras.Input((LATENT_DIM,), name="z")
    h = keras.layers.Dense(HIDDEN, activation="relu")(z)
    if arch == "mlp":
        out = keras.layers.Dense(784, activation="sigmoid")(h)
    else:  # extension: two stride-2 transposed convolutions, 7x7 -> 28x28
        h = keras.layers.Reshape((7, 7, 32))(keras.layers.Dense(7 * 7 * 32, activation="relu")(h))
        h = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(h)
        h = keras.layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(h)
        out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(h)
    return keras.Model(z, out, name="decoder")


def build_vae(arch, conditional, seed):
    """The trainable model and its parts: ``vae`` (images, or [images, one-hot classes] for the CVAE ->
    decoded images; the KL is added by ``KLDivergence``), ``encoder``, ``decoder`` and, for the CVAE,
    ``class_means`` (one-hot class -> its prior mean mu_Y, the article's ``Dense(latent_dim)``)."""
    encoder, decoder = build_encoder(arch), build_decoder(arch)
    x = keras.Input(encoder.input_shape[1:], name="images")
    z_mean, z_log_var = encoder(x)
    parts = {"encoder": encoder, "decoder": decoder, "class_means": None}
    if conditional:
        y = keras.Input((10,), name="classes")
        means = keras.Sequential([keras.Input((10,)), keras.layers.Dense(LATENT_DIM)], name="class_means")
        parts["class_means"] = means
        z_mean, z_log_var, _ = KLDivergence(name="kl")([z_mean, z_log_var, parts["class_means"](y)])
        inputs = [x, y]
    else:
        z_mean, z_log_var = KLDivergence(name="kl")([z_mean, z_log_var])
        inputs = x
    z = Sampling(seed=seed, name="sampling")([z_mean, z_log_var])
    vae = keras.Model(inputs, decoder(z), name="cvae" if conditional else "vae")
    return vae, parts


"""## 3. Evaluation: the ELBO, the importance-weighted bound, the latent map"""


class LogWeights(keras.layers.Layer):
    """``log_importance_weights`` as a layer, so that ``predict`` runs it compiled (XLA fuses the
    per-pixel work): inputs [images, z_mean, z_log_var, prior_mean], outputs [log w, log p(X|Z)],
    each (batch, k). An evaluation device of this script, built and used once, never saved (so no
    ``get_config``; the layers a user saves are in layers.py)."""

    def __init__(self, decoder, k, seed, **kwargs):
        super().__init__(**kwargs)
        self.decoder, self.k = decoder, k
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        x, z_mean, z_log_var, prior = inputs
        kwargs = {"prior_mean": prior, "seed": self.seed_generator, "return_log_px": True}
        return list(log_importance_weights(self.decoder, x, z_mean, z_log_var, self.k, **kwargs))


def test_bounds(decoder, x, z_mean, z_log_var, prior, k, seed, chunk_draws=20_000):
    """Per test image: the reconstruction term (mean over k draws), the KL (closed form) and the
    importance-weighted estimate of log p(X) (the CVAE's: of log p(X|Y), ``prior`` holding each
    image's class mean; zeros for the VAE), each a float64 array."""
    kl = keras.ops.convert_to_numpy(gaussian_kl(z_mean, z_log_var, prior)).astype("float64")
    inputs = [keras.Input(x.shape[1:]), *(keras.Input((LATENT_DIM,)) for _ in range(3))]
    weights = keras.Model(inputs, LogWeights(decoder, k, seed)(inputs))
    weights.compile(jit_compile=True if keras.backend.backend() == "tensorflow" else "auto")
    log_w, log_px = weights.predict([x, z_mean, z_log_var, prior], batch_size=max(1, chunk_draws // k), verbose=0)
    recon = -np.mean(log_px.astype("float64"), axis=1)
    return recon, kl, iw_log_likelihood(log_w)


def apply(model, x, batch_size=1000):
    """``model`` on ``x`` in batches, eagerly (``predict`` would trace a function per input size):
    a list of NumPy arrays, one per output."""
    outs = []
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size], training=False)
        outs.append([keras.ops.convert_to_numpy(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate(parts) for parts in zip(*outs)]


def knn_accuracy(reference, reference_labels, queries, labels, k=5):
    """Share of ``queries`` whose k nearest ``reference`` points (Euclidean) vote for their label."""
    reference = np.asarray(reference, "float64")
    hits = 0
    for i in range(0, len(queries), 1000):
        q = np.asarray(queries[i : i + 1000], "float64")
        d = (q**2).sum(1)[:, None] - 2 * q @ reference.T + (reference**2).sum(1)[None]
        nearest = np.argpartition(d, k, axis=1)[:, :k]
        votes = np.apply_along_axis(np.bincount, 1, reference_labels[nearest], minlength=10)
        hits += int((votes.argmax(1) == labels[i : i + 1000]).sum())
    return hits / len(queries)


def pca_knn_accuracy(x, y, x_test, y_test):
    """The control: 5-NN accuracy of the test digits projected on the training set's first two
    principal components (the linear 2-d map that keeps the most of the pixels' variance)."""
    flat = x.reshape(len(x), -1).astype("float64")
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat[:KNN_REFERENCE] - mean, full_matrices=False)
    project = lambda images: (images.reshape(len(images), -1) - mean) @ vt[:2].T
    return knn_accuracy(project(flat[:KNN_REFERENCE]), y[:KNN_REFERENCE], project(x_test), y_test)


def decode_grid(decoder, center=(0.0, 0.0)):
    """The article's figure: the decoder over a 15x15 grid of the prior's quantiles
    (norm.ppf(linspace(0.05, 0.95, 15))) shifted by ``center``; row i varies the second latent
    coordinate, column j the first. Returns (15, 15, 28, 28) probabilities."""
    quantiles = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, GRID)])
    zs = np.array([[center[0] + qx, center[1] + qy] for qy in quantiles for qx in quantiles], "float32")
    (images,) = apply(decoder, zs)
    return images.reshape(GRID, GRID, 28, 28)


def grid_smoothness(grid):
    """Mean pixel distance (Euclidean) between neighbouring cells of the grid, divided by the mean
    distance between any two cells: near 0 for a smooth map, about 1 for cells in random order, and 1
    for a grid of one image repeated (a decoder that ignores its input draws no map)."""
    cells = grid.reshape(GRID, GRID, -1).astype("float64")
    neighbours = np.concatenate(
        [
            np.linalg.norm(cells[:, 1:] - cells[:, :-1], axis=-1).ravel(),
            np.linalg.norm(cells[1:] - cells[:-1], axis=-1).ravel(),
        ]
    )
    flat = cells.reshape(GRID * GRID, -1)
    all_pairs = np.concatenate([np.linalg.norm(flat[i + 1 :] - flat[i], axis=1) for i in range(len(flat) - 1)])
    if all_pairs.mean() == 0:  # every cell the same image (a collapsed decoder): no map at all
        return 1.0
    return float(neighbours.mean() / all_pairs.mean())


"""## 4. Training one model with one seed"""


def train_seed(job, checkpoint):
    """Train one model with one seed and evaluate it (``utils.runs.run_jobs`` seeds, resumes and
    records it)."""
    cfg, spec = job.config, job.spec
    (x, y1h, y), (x_test, y1h_test, y_test) = load_mnist(cfg["arch"], cfg["train_size"], cfg["test_size"])
    inputs = lambda images, onehot: [images, onehot] if cfg["conditional"] else images
    with cli.distribution(spec["args"]):
        vae, parts = build_vae(cfg["arch"], cfg["conditional"], seed=job.seed)
        vae.compile(
            optimizer=keras.optimizers.RMSprop(cfg["learning_rate"]),
            loss=bernoulli_nll,
            # TensorFlow: a whole epoch (600 steps) per call into an XLA-compiled loop; XLA is off by default
            # on a CPU there, and these two settings make an epoch about 2x faster. JAX unrolls the steps of
            # a call when it compiles them, so it gets fewer.
            steps_per_execution=cli.steps_per_execution(600 if keras.backend.backend() == "tensorflow" else 50),
            jit_compile=True if keras.backend.backend() == "tensorflow" else "auto",
        )
        initial_epoch = checkpoint.restore(vae)  # in the strategy's scope: it may build the optimizer
    vae.fit(
        **feed.arrays(inputs(x, y1h), x, batch_size=BATCH_SIZE, shuffle=True, seed=job.seed),
        epochs=cfg["epochs"],
        validation_data=feed.validation(inputs(x_test, y1h_test), x_test, batch_size=BATCH_SIZE),
        validation_batch_size=BATCH_SIZE,
        verbose=progress.fit_verbose(),
        initial_epoch=initial_epoch,
        callbacks=[EpochTimer(), PrintEpoch(keys=("loss", "val_loss")), keras.callbacks.TerminateOnNaN(), checkpoint],
    )
    history = checkpoint.history
    if not np.isfinite(history["loss"][-1]):
        return {"neg_elbo": None, "val_loss": None}, history

    z_test, z_log_var_test = apply(parts["encoder"], x_test)
    z_ref = apply(parts["encoder"], x[:KNN_REFERENCE])[0]
    class_means = None if parts["class_means"] is None else apply(parts["class_means"], np.eye(10, dtype="float32"))[0]
    prior = np.zeros_like(z_test) if class_means is None else class_means[y_test]
    draws = 20_000 if cfg["arch"] == "mlp" else 2_000  # decoded images per call (memory)
    recon, kl, iw = test_bounds(parts["decoder"], x_test, z_test, z_log_var_test, prior, cfg["iw_k"], job.seed, draws)
    center = (0.0, 0.0) if class_means is None else tuple(class_means[CVAE_DIGIT])
    grid = decode_grid(parts["decoder"], center)
    n = len(x_test)
    metrics = {
        "val_loss": history["val_loss"][-1],  # Keras's one-draw estimate, what the article's log shows
        "recon": float(recon.mean()),
        "kl": float(kl.mean()),
        "neg_elbo": float((recon + kl).mean()),
        "neg_elbo_se": float((recon + kl).std(ddof=1) / np.sqrt(n)),
        "iw_nll": float(-iw.mean()),
        "iw_nll_se": float(iw.std(ddof=1) / np.sqrt(n)),
        "iw_k": cfg["iw_k"],
        "test_images": n,
        "knn_acc": knn_accuracy(z_ref, y[:KNN_REFERENCE], z_test, y_test),
        "knn_acc_pca": spec["pca_knn"],
        "grid_smoothness": grid_smoothness(grid),
        "epoch_time_s": float(np.median(history["epoch_time_s"])),
        "train_time_s": float(np.median(history["train_time_s"])),
        "params": vae.count_params(),
    }
    if class_means is not None:
        metrics["class_means"] = np.round(class_means.astype("float64"), 4).tolist()
    print(
        f"    test: negative ELBO {metrics['neg_elbo']:.2f} (reconstruction {metrics['recon']:.2f} + KL "
        f"{metrics['kl']:.2f}), importance-weighted -log p {metrics['iw_nll']:.2f} ± {metrics['iw_nll_se']:.2f} "
        f"(k={cfg['iw_k']}); latent 5-NN {metrics['knn_acc']:.3f} (PCA {spec['pca_knn']:.3f}); grid smoothness "
        f"{metrics['grid_smoothness']:.3f}; {metrics['train_time_s']:.2f} s of training per epoch",
        flush=True,
    )
    if spec["figures"]:
        stem = Path(spec["out"]) / ARTICLE / job.experiment
        draw_latent(z_test, y_test, class_means, f"{stem}-latent.png", job.experiment)
        draw_grid(grid, f"{stem}-grid.png", job.experiment, None if class_means is None else CVAE_DIGIT)
    return metrics, history


def jobs(args, models, pca_knn):
    mode = MODES[args.mode]
    out = []
    for name in models:  # every seed of a model before the next model
        for seed in cli.seeds(args, mode["seeds"]):
            spec = MODELS[name]
            epochs = args.epochs or mode["epochs"] or spec["epochs"]
            config = {
                "mode": args.mode,
                "model": name,
                "arch": spec["arch"],
                "conditional": spec["conditional"],
                "latent_dim": LATENT_DIM,
                "epochs": epochs,
                "batch_size": BATCH_SIZE,
                "optimizer": "rmsprop",
                "learning_rate": 1e-3,
                "loss": "bernoulli_nll + KL",
                "train_size": mode["train_size"],
                "test_size": mode["test_size"],
                "iw_k": mode["iw_k"] or spec["iw_k"],
                "distribute": args.distribute,
            }
            size = "all 60,000" if mode["train_size"] is None else f"{mode['train_size']:,}"
            protocol = (
                f"{args.mode}: {epochs} epoch{'s' * (epochs != 1)} on {size} MNIST digits, "
                f"importance-weighted k={config['iw_k']}"
            )
            headline = {
                "metric": "neg_elbo",
                "label": "test negative ELBO, nats per image (lower is better)",
                "blog": None,
                "blog_source": BLOG_SOURCE,
            }
            out.append(
                runs.Job(
                    runs.experiment_name(name, args.mode),
                    seed,
                    config,
                    headline,
                    protocol,
                    {"args": args, "out": args.out, "pca_knn": pca_knn, "figures": seed == args.seed},
                )
            )
    return out


"""## 5. Table and figures"""


def summary(records):
    print(
        "\n| model | negative ELBO | reconstruction | KL | -log p (importance-weighted) | Keras val_loss | "
        "latent 5-NN | grid smoothness | s/epoch (training) | seeds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_model = {}
    for r in records:
        by_model.setdefault(r["experiment"], []).append(r)
    for name, rs in by_model.items():
        col = lambda key, d=2, rs=rs: runs.format_mean_std([r["metrics"].get(key) for r in rs], d)
        print(
            f"| {name} | {col('neg_elbo')} | {col('recon')} | {col('kl')} | {col('iw_nll')} "
            f"(k={rs[0]['config']['iw_k']}) | {col('val_loss')} | {col('knn_acc', 3)} | "
            f"{col('grid_smoothness', 3)} | {col('train_time_s')} | {len(rs)} |"
        )
    elbos, seconds = ARTICLE_CODE["vae"]
    print(
        f"\nthe article's code (vae_keras.py) on these machines, three runs of 50 epochs: val_loss "
        f"{', '.join(map(str, elbos))}; {seconds} s of training per epoch on 2026-11-23 (ANCHORS.md; compare "
        "times only within one sitting)"
    )


def draw_latent(z, labels, class_means, path, title):
    """The article's first figure: the test digits' latent means, coloured by digit (and, for the
    CVAE, each class's learned prior mean)."""
    fig, ax = plots.plt.subplots(figsize=(7, 6))
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=2, vmin=-0.5, vmax=9.5)
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    if class_means is not None:
        ax.scatter(class_means[:, 0], class_means[:, 1], c="black", marker="x", s=60)
        for digit, (u, v) in enumerate(class_means):
            ax.annotate(str(digit), (u, v), xytext=(4, 4), textcoords="offset points", fontsize=11, weight="bold")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    marks = "" if class_means is None else " (x: class means)"
    ax.set_title(f"{title}: latent means of the {len(z):,} test digits{marks}")
    fig.tight_layout()
    plots.save(fig, path, dpi=100)


def tile(grid):
    """The grid (15, 15, 28, 28) as one image: cell (i, j) at rows 28i.., columns 28j.., as the
    article's ``figure[i * digit_size: ..., j * digit_size: ...] = digit``."""
    rows, cols, h, w = grid.shape
    return grid.transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def draw_grid(grid, path, title, digit=None):
    """The article's second figure: the 15x15 decoded grid as one image."""
    image = tile(grid)
    fig, ax = plots.plt.subplots(figsize=(8, 8))
    ax.imshow(image, cmap="Greys_r")
    ax.set_xticks([])
    ax.set_yticks([])
    where = "the prior's quantiles" if digit is None else f"the quantiles around the learned mean of {digit}"
    ax.set_title(f"{title}: decoded over {where}")
    fig.tight_layout()
    plots.save(fig, path, dpi=100)


def parser():
    """The command line (reproduce.py checks it before running anything)."""
    p = cli.parser(__doc__)
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=None,
        help="which models (default: all three; quick mode: vae)",
    )
    return p


def main(argv=None):
    args = cli.parse(parser(), argv)
    models = args.models or MODES[args.mode]["models"]
    print(f"backend {keras.backend.backend()}, mode {args.mode}, models {models}, records in {args.out}")
    mode = MODES[args.mode]
    (x, _, y), (x_test, _, y_test) = load_mnist("mlp", mode["train_size"], mode["test_size"])
    pca_knn = pca_knn_accuracy(x, y, x_test, y_test)
    print(f"control: 5-NN accuracy of the test digits on a 2-d PCA of the pixels {pca_knn:.3f}")
    records = runs.run_jobs(ARTICLE, jobs(args, models, pca_knn), args, train_seed)
    summary(records)
    report.print_judgement(CLAIM, records, ARTICLE, args.mode)
    return records


if __name__ == "__main__":
    cli.run(main)
