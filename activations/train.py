"""
Title: Activation functions compared on MNIST (浅谈神经网络中激活函数的设计, kexue.fm/archives/4647)
Description: relu, tanh, sigmoid, swish and the article's x*min(1, e^x) in a 10-layer MLP and a small CNN.

The article argues from first principles and published no experiment and no numbers, so every number
this script prints is ours. It follows the article's order:

1. rounding error alone is a nonlinearity (measured here in float32 vs float64);
2. the flat region: with zero-mean initialisation about half of ReLU's pre-activations are negative,
   where its gradient is zero; Swish and x*min(1, e^x) have no flat region (measured at initialisation);
3. the activations trained with the same architecture, initialisation, optimiser, data and epochs
   (a deep MLP, where saturation and dead units matter most, and a small CNN), 3 seeds each.

Run:  python activations/train.py            (the full protocol, about an hour on 2 CPU cores)
      python activations/train.py --quick    (the 10-layer MLP, 1 seed, 6k images, 3 epochs: about a minute)
      python activations/train.py --smoke    (seconds: checks that the script runs)
Records go to runs/results/ (the committed reference: results/, written only with --reference).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # utils/ sits one folder up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from activations.layers import Swish, XMinExp, rounding_nonlinearity  # noqa: E402
from utils import cli, data, plots, progress, report, runs  # noqa: E402
from utils.callbacks import EpochTimer, PrintEpoch  # noqa: E402

ARTICLE = "activations"
ACTIVATIONS = {
    "relu": lambda: keras.layers.Activation("relu"),
    "tanh": lambda: keras.layers.Activation("tanh"),
    "sigmoid": lambda: keras.layers.Activation("sigmoid"),
    "swish": lambda: Swish(beta=1.0),
    "x_min_exp": lambda: XMinExp(),
}
MODES = {
    # 55k train / 5k validation (the last 5k of the training set) / the 10k test set, as in most MNIST work.
    "full": {
        "train_size": 55000,
        "epochs": {"mlp": 20, "cnn": 10},
        "seeds": 3,
        "eval_size": None,
        "models": ["mlp", "cnn"],
    },
    # The deep MLP, where the claim lives (sigmoid stuck, ReLU learning; the flat region at init): enough
    # for its direction in about a minute. The CNN is in the full protocol.
    "quick": {"train_size": 6000, "epochs": {"mlp": 3}, "seeds": 1, "eval_size": None, "models": ["mlp"]},
    # Seconds: the pipeline end to end (validation and test cut to 1000 images).
    "smoke": {
        "train_size": 512,
        "epochs": {"mlp": 1, "cnn": 1},
        "seeds": 1,
        "eval_size": 1000,
        "models": ["mlp", "cnn"],
    },
}
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
MLP_DEPTH, MLP_WIDTH = 10, 256
HEADLINE = {
    "metric": "test_acc",
    "label": "MNIST test accuracy",
    "blog": None,
    "blog_source": "kexue.fm/archives/4647 reports no experiment; these are the first numbers",
}
CLAIM = report.Claim(
    statement="sigmoid saturates, so a deep sigmoid network barely trains where ReLU, unsaturated for x > 0, "
    "does; at zero-mean initialisation about half of ReLU's pre-activations sit in its flat region, "
    "while Swish and x·min(1, eˣ) have none",
    criterion="in the 10-layer MLP, ReLU's test accuracy beats sigmoid's by at least 0.3; at initialisation "
    "0.4-0.6 of ReLU's pre-activations are flat, under 0.01 of Swish's and of x·min(1, eˣ)'s",
    rows=[
        report.Row("relu", "mlp-relu", "test_acc", "10-layer MLP, relu: test accuracy"),
        report.Row("sigmoid", "mlp-sigmoid", "test_acc", "10-layer MLP, sigmoid: test accuracy"),
        report.Row("relu_flat", "mlp-relu", "flat_fraction_init", "relu: share flat at init", digits=2),
        report.Row("swish_flat", "mlp-swish", "flat_fraction_init", "swish: share flat at init", digits=2),
        report.Row("xme_flat", "mlp-x_min_exp", "flat_fraction_init", "x·min(1, eˣ): share flat at init", digits=2),
    ],
    holds=lambda v: (
        v["relu"] - v["sigmoid"] >= 0.3
        and 0.4 <= v["relu_flat"] <= 0.6
        and v["swish_flat"] < 0.01
        and v["xme_flat"] < 0.01
    ),
    blog_source="kexue.fm/archives/4647 argues without numbers",
)


"""## 1. Rounding error is a nonlinearity"""


def rounding_demo(samples=10000, seed=0):
    """How far ``rounding_nonlinearity`` is from additive, f(a + b) - f(a) - f(b), in each float type."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-1, 1, (2, samples))
    out = {}
    for dtype in ("float64", "float32"):
        fa, fb = rounding_nonlinearity(a, dtype), rounding_nonlinearity(b, dtype)
        fab = rounding_nonlinearity(np.asarray(a, dtype) + np.asarray(b, dtype), dtype)
        out[dtype] = float(np.max(np.abs(fab - fa - fb)))
    return out


"""## 2. Data"""


def load_mnist(train_size, flat, eval_size=None):
    """MNIST scaled to [0, 1]: ``train_size`` training images, the last 5000 of the training set for
    validation, and the 10k test set (both cut to ``eval_size`` if given). ``flat`` gives (n, 784) rows
    for the MLP, else (n, 28, 28, 1)."""
    (x, y), (x_test, y_test) = data.mnist()
    shape = (-1, 784) if flat else (-1, 28, 28, 1)
    prep = lambda images: (images.astype("float32") / 255.0).reshape(shape)
    return (
        (prep(x[:train_size]), y[:train_size].astype("int32")),
        (prep(x[-5000:][:eval_size]), y[-5000:][:eval_size].astype("int32")),
        (prep(x_test[:eval_size]), y_test[:eval_size].astype("int32")),
    )


"""## 3. Models: everything but the activation is the same"""


def deep_mlp(activation):
    """784 -> 10 x [Dense(256) -> activation] -> Dense(10, softmax); Keras's default Glorot init."""
    inputs = keras.Input((784,))
    x = inputs
    for i in range(MLP_DEPTH):
        x = keras.layers.Dense(MLP_WIDTH, name=f"dense{i}")(x)
        x = ACTIVATIONS[activation]()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"mlp_{activation}")


def small_cnn(activation):
    """Conv32-Conv32-MaxPool-Conv64-Conv64-MaxPool-Dense128-Dense10, the activation after each
    hidden layer (about 200k parameters)."""
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for i, filters in enumerate([32, 32, None, 64, 64, None]):
        if filters is None:
            x = keras.layers.MaxPooling2D()(x)
            continue
        x = keras.layers.Conv2D(filters, 3, name=f"conv{i}")(x)
        x = ACTIVATIONS[activation]()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, name="fc")(x)
    x = ACTIVATIONS[activation]()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"cnn_{activation}")


MODELS = {"mlp": deep_mlp, "cnn": small_cnn}


def flat_fraction(model, x, tol=1e-2):
    """The fraction of hidden pre-activations where the activation's slope is below ``tol``: units
    that pass (almost) no gradient for this input. The article's argument says about 0.5 for ReLU at
    initialisation and about 0 for Swish. Slopes by central differences through the model's own
    activation layers."""
    acts = [layer for layer in model.layers if isinstance(layer, (keras.layers.Activation, Swish, XMinExp))]
    pre = keras.Model(model.input, [layer.input for layer in acts])(x)
    flat, total = 0, 0
    for layer, z in zip(acts, pre):
        z = keras.ops.convert_to_numpy(z)
        h = 1e-3
        slope = (keras.ops.convert_to_numpy(layer(z + h)) - keras.ops.convert_to_numpy(layer(z - h))) / (2 * h)
        flat += int(np.sum(np.abs(slope) < tol))
        total += slope.size
    return flat / total


"""## 4. Training one seed"""


def train_seed(job, checkpoint):
    """Train one model with one activation and one seed (``utils.runs.run_jobs`` seeds, resumes and
    records it); returns the metrics and the per-epoch history."""
    cfg = job.config
    train, val, test = load_mnist(cfg["train_size"], flat=cfg["model"] == "mlp", eval_size=job.spec["eval_size"])
    with cli.distribution(job.spec["args"]):
        model = MODELS[cfg["model"]](cfg["activation"])
        model.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        flat_init = flat_fraction(model, train[0][:1000])  # at initialisation, before a resume loads weights
        initial_epoch = checkpoint.restore(model)  # in the strategy's scope: it may build the optimizer
    model.fit(
        *train,
        batch_size=BATCH_SIZE,
        epochs=cfg["epochs"],
        validation_data=val,
        verbose=progress.fit_verbose(),
        initial_epoch=initial_epoch,
        callbacks=[EpochTimer(), PrintEpoch(), keras.callbacks.TerminateOnNaN(), checkpoint],
    )
    history = checkpoint.history
    test_loss, test_acc = model.evaluate(*test, batch_size=1000, verbose=0)
    metrics = {
        "test_acc": test_acc,
        "test_loss": test_loss,
        "best_val_acc": max(history["val_accuracy"]),
        "final_val_acc": history["val_accuracy"][-1],
        "flat_fraction_init": flat_init,
        "flat_fraction_final": flat_fraction(model, train[0][:1000]),
        "epoch_time_s": float(np.median(history["epoch_time_s"])),
        "params": model.count_params(),
    }
    print(
        f"    test acc {test_acc:.4f}, flat at init {flat_init:.2f}, {metrics['epoch_time_s']:.1f} s/epoch", flush=True
    )
    return metrics, history


def jobs(args):
    """Every (model, activation, seed) of the mode, with its config and what it runs."""
    cfg = MODES[args.mode]
    out = []
    for model_name in cfg["models"]:
        epochs = args.epochs or cfg["epochs"][model_name]
        for act in ACTIVATIONS:
            config = {
                "mode": args.mode,
                "model": model_name,
                "activation": act,
                "epochs": epochs,
                "batch_size": BATCH_SIZE,
                "optimizer": "adam",
                "learning_rate": LEARNING_RATE,
                "train_size": cfg["train_size"],
                "val_size": cfg["eval_size"] or 5000,
                "test_size": cfg["eval_size"] or 10000,
                "mlp_depth": MLP_DEPTH,
                "mlp_width": MLP_WIDTH,
                "distribute": args.distribute,
            }
            protocol = f"{args.mode}: {epochs} epochs on {cfg['train_size']:,} training images"
            out += [
                runs.Job(
                    runs.experiment_name(f"{model_name}-{act}", args.mode),
                    seed,
                    config,
                    HEADLINE,
                    protocol,
                    {"args": args, "eval_size": cfg["eval_size"]},
                )
                for seed in cli.seeds(args, cfg["seeds"])
            ]
    return out


"""## 5. Table and figures"""


def summary(records, out, mode):
    """Print the table (mean ± std over seeds) and draw the validation curves."""
    print("\n| model | activation | test acc | best val acc | flat at init | flat at end | s/epoch | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    figures = []
    for model_name in MODELS:
        val_acc, train_loss = {}, {}
        for act in ACTIVATIONS:
            rs = [r for r in records if r["config"]["model"] == model_name and r["config"]["activation"] == act]
            if not rs:
                continue
            col = lambda key, d=4, rs=rs: runs.format_mean_std([r["metrics"][key] for r in rs], d)
            print(
                f"| {model_name} | {act} | {col('test_acc')} | {col('best_val_acc')} | {col('flat_fraction_init', 2)} "
                f"| {col('flat_fraction_final', 2)} | {col('epoch_time_s', 1)} | {len(rs)} |"
            )
            val_acc[act] = [r["history"]["val_accuracy"] for r in rs]
            train_loss[act] = [r["history"]["loss"] for r in rs]
        name = "10-layer MLP" if model_name == "mlp" else "small CNN"
        for curves, label, file in (
            (val_acc, "validation accuracy", "val_acc"),
            (train_loss, "training loss", "train_loss"),
        ):
            if curves:
                figures.append(
                    plots.plot_curves(
                        curves,
                        Path(out) / ARTICLE / f"{runs.experiment_name(f'{model_name}_{file}', mode)}.png",
                        ylabel=label,
                        title=f"MNIST, {name}: {label} (mean, min-max over seeds)",
                    )
                )
    print("\nfigures: " + ", ".join(str(f) for f in figures))


def parser():
    """The command line (reproduce.py checks it before running anything)."""
    return cli.parser(__doc__)


def main(argv=None):
    args = cli.parse(parser(), argv)
    print(f"backend {keras.backend.backend()}, mode {args.mode}, records in {args.out}")
    todo = jobs(args)  # built first: a seed out of range stops the run before it writes anything

    errors = rounding_demo()
    runs.write_json_atomic(
        Path(args.out) / ARTICLE / "rounding_demo.json",
        {"max_additivity_error": errors, "pairs": 10000, "range": [-1, 1], "function": "rounding_nonlinearity"},
    )
    print(
        f"\n1. Rounding as a nonlinearity: max |f(a+b) - f(a) - f(b)| over 10k pairs in [-1, 1]: "
        f"float64 {errors['float64']:.1e}, float32 {errors['float32']:.1e}"
    )

    print("\n2-3. Training (each seed writes its record as it finishes):")
    records = runs.run_jobs(ARTICLE, todo, args, train_seed)
    summary(records, args.out, args.mode)
    report.print_judgement(CLAIM, records, ARTICLE, args.mode)
    return records


if __name__ == "__main__":
    cli.run(main)
