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
      python activations/train.py --quick    (a 2-minute check of the pipeline)
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # utils/ sits one folder up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from activations.layers import Swish, XMinExp, rounding_nonlinearity  # noqa: E402
from utils import cli, data, plots, runs  # noqa: E402
from utils.callbacks import EpochTimer  # noqa: E402

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
    "full": {"train_size": 55000, "epochs": {"mlp": 20, "cnn": 10}},
    "quick": {"train_size": 6000, "epochs": {"mlp": 3, "cnn": 2}},
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


def load_mnist(train_size, flat):
    """MNIST scaled to [0, 1]: ``train_size`` training images, the last 5000 of the training set for
    validation, and the 10k test set. ``flat`` gives (n, 784) rows for the MLP, else (n, 28, 28, 1)."""
    (x, y), (x_test, y_test) = data.mnist()
    shape = (-1, 784) if flat else (-1, 28, 28, 1)
    prep = lambda images: (images.astype("float32") / 255.0).reshape(shape)
    return (
        (prep(x[:train_size]), y[:train_size].astype("int32")),
        (prep(x[-5000:]), y[-5000:].astype("int32")),
        (prep(x_test), y_test.astype("int32")),
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


def run_seed(model_name, activation, seed, args, mode):
    """Train one model with one activation and one seed; write and return its result record. A
    record that already exists with the same config is returned as it is (the run resumes)."""
    cfg = MODES[mode]
    experiment = f"{model_name}-{activation}" + ("-quick" if mode == "quick" else "")
    epochs = args.epochs or cfg["epochs"][model_name]
    config = {
        "mode": mode, "model": model_name, "activation": activation, "epochs": epochs,
        "batch_size": BATCH_SIZE, "optimizer": "adam", "learning_rate": LEARNING_RATE,
        "train_size": cfg["train_size"], "val_size": 5000, "test_size": 10000,
        "mlp_depth": MLP_DEPTH, "mlp_width": MLP_WIDTH, "distribute": args.distribute,
    }
    path = runs.result_path(args.out, ARTICLE, experiment, seed)
    done = runs.reusable(path, config, args.force)
    if done is not None:
        print(f"  {experiment} seed {seed}: done already ({path})")
        return done

    started = time.time()
    runs.set_seed(seed)
    train, val, test = load_mnist(cfg["train_size"], flat=model_name == "mlp")
    with cli.distribution(args):
        model = MODELS[model_name](activation)
        model.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    flat_init = flat_fraction(model, train[0][:1000])
    history = model.fit(
        *train, batch_size=BATCH_SIZE, epochs=epochs, validation_data=val,
        callbacks=[EpochTimer(), keras.callbacks.TerminateOnNaN()], verbose=0,
    ).history
    test_loss, test_acc = model.evaluate(*test, batch_size=1000, verbose=0)
    metrics = {
        "test_acc": test_acc, "test_loss": test_loss,
        "best_val_acc": max(history["val_accuracy"]), "final_val_acc": history["val_accuracy"][-1],
        "flat_fraction_init": flat_init, "flat_fraction_final": flat_fraction(model, train[0][:1000]),
        "epoch_time_s": float(np.median(history["epoch_time_s"])), "params": model.count_params(),
    }
    runs.save_result(args.out, ARTICLE, experiment, seed, metrics=metrics, config=config,
                     history=history, headline=HEADLINE, started=started)
    print(f"  {experiment} seed {seed}: test acc {test_acc:.4f}, flat at init {flat_init:.2f}, "
          f"{metrics['epoch_time_s']:.1f} s/epoch")
    return runs.load_result(path)


"""## 5. Table and figures"""


def report(records, out, mode):
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
            print(f"| {model_name} | {act} | {col('test_acc')} | {col('best_val_acc')} | {col('flat_fraction_init', 2)} "
                  f"| {col('flat_fraction_final', 2)} | {col('epoch_time_s', 1)} | {len(rs)} |")
            val_acc[act] = [r["history"]["val_accuracy"] for r in rs]
            train_loss[act] = [r["history"]["loss"] for r in rs]
        name = "10-layer MLP" if model_name == "mlp" else "small CNN"
        suffix = "-quick" if mode == "quick" else ""
        for curves, label, file in ((val_acc, "validation accuracy", "val_acc"), (train_loss, "training loss", "train_loss")):
            if curves:
                figures.append(plots.plot_curves(
                    curves, Path(out) / ARTICLE / f"{model_name}_{file}{suffix}.png", ylabel=label,
                    title=f"MNIST, {name}: {label} (mean, min-max over seeds)",
                ))
    print("\nfigures: " + ", ".join(str(f) for f in figures))


def main(argv=None):
    args = cli.parse(cli.parser(__doc__), argv)
    mode = "quick" if args.quick else "full"
    print(f"backend {keras.backend.backend()}, mode {mode}, seeds {cli.seeds(args)}")

    errors = rounding_demo()
    runs.write_json_atomic(Path(args.out) / ARTICLE / "rounding_demo.json", {
        "max_additivity_error": errors, "pairs": 10000, "range": [-1, 1], "function": "rounding_nonlinearity"})
    print(f"\n1. Rounding as a nonlinearity: max |f(a+b) - f(a) - f(b)| over 10k pairs in [-1, 1]: "
          f"float64 {errors['float64']:.1e}, float32 {errors['float32']:.1e}")

    print("\n2-3. Training (each seed writes its result as it finishes):")
    records = [
        run_seed(model_name, act, seed, args, mode)
        for model_name in MODELS for act in ACTIVATIONS for seed in cli.seeds(args)
    ]
    report(records, args.out, mode)
    return records


if __name__ == "__main__":
    main()
