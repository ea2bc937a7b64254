"""
Title: Capsules vs a CNN on two-digit images (揭开迷雾，来一顿美味的Capsule盛宴, kexue.fm/archives/4819;
       再来一顿贺岁宴：从K-Means到Capsule, kexue.fm/archives/5112)
Description: train on single MNIST digits, test on images holding two digits.

The article's experiment: a CNN and a capsule network share a convolutional trunk and about 270k
parameters; both learn single MNIST digits (about 99.3% test accuracy), then see 56x28 images made of
two test digits stacked, and must name both. Scoring: the two highest-scoring classes, as an unordered
pair, must be the two digits (acc1); and also the second score must pass 0.5 (acc2). The article
reports the CNN at about 40% / 10% and the capsules above 90% / 90%; the K-means routing of the second
article lifts the capsules above 95%.

Models, as in the article's code (except that the convolutions run in bfloat16 by default, see
--precision): MNIST / 255; trunk Conv 64-64 (3x3, relu) -> AvgPool 2 -> Conv
128-128; CNN head GlobalAveragePooling -> Dense 128 relu -> Dense 10 sigmoid, 20 epochs; capsule head:
the 128-channel feature vectors as capsules -> Capsule(10, 16, 3 routings, shared weights) -> lengths,
10 epochs; Adam, batch 128, margin loss; the test set as validation. Runs: the CNN and the capsule head
with each routing (article 4819, K-means 5112, the paper's), 3 seeds each.

Run:  python capsule/train.py                     (4 models x 3 seeds, about 66 minutes on 2 CPU cores)
      python capsule/train.py --models cnn article --seeds 1
      python capsule/train.py --quick             (about a minute: a check of the pipeline)
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # utils/ sits one folder up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from capsule.layers import Capsule, CapsuleLength, margin_loss  # noqa: E402
from utils import cli, data, feed, runs  # noqa: E402
from utils.callbacks import EpochTimer, PrintEpoch  # noqa: E402

ARTICLE = "capsule"
BATCH_SIZE = 128
PAIR_SEED = 2018  # the two-digit test set is the same for every model and seed
MODELS = {
    # name: head, routing, epochs (the article: CNN 20, capsules 10)
    "cnn": {"head": "cnn", "routing": None, "epochs": 20},
    "article": {"head": "capsule", "routing": "article", "epochs": 10},
    "kmeans": {"head": "capsule", "routing": "kmeans", "epochs": 10},
    "paper": {"head": "capsule", "routing": "paper", "epochs": 10},
}
MODES = {"full": {"train_size": None}, "quick": {"train_size": 6000, "epochs": 2}}
# The article's numbers (text of 4819 and 5112; approximate, one run, no seed).
BLOG = {
    "cnn": {"pair_acc": 0.40, "pair_acc_confident": 0.10, "test_acc": 0.993},
    "article": {"pair_acc": 0.90, "pair_acc_confident": 0.90, "test_acc": 0.993},
    "kmeans": {"pair_acc": 0.95, "pair_acc_confident": None, "test_acc": None},
    "paper": {"pair_acc": None, "pair_acc_confident": None, "test_acc": None},
}
# The article's code (Keras 2 API) on these machines, one seed (issue 5, from ../shared/ARTICLES.md):
# two-digit acc1, acc2, MNIST test accuracy, seconds per epoch.
ARTICLE_CODE = {
    "cnn": (0.418, 0.084, 0.9937, "50"), "article": (0.902, 0.902, 0.9946, "52-56"),
    "kmeans": (0.970, 0.970, 0.9930, "52-56"),
}
SOURCES = {
    "cnn": "kexue.fm/archives/4819: CNN two-digit top-2 accuracy about 40% (10% with the 2nd score > 0.5)",
    "article": "kexue.fm/archives/4819: capsule two-digit accuracy above 90% on both scores",
    "kmeans": "kexue.fm/archives/5112: K-means routing above 95% on the two-digit test",
    "paper": "the paper's routing: not run in the articles",
}
# Mixed precision: the convolutions in bfloat16, the heads (routing, scores, loss) in float32. On a
# CPU with AVX512-BF16 (these machines) this trains 1.6x faster than float32; --precision float32
# restores the article's arithmetic.
PRECISIONS = ("mixed_bfloat16", "float32")


"""## 1. Data: MNIST, and the two-digit test set"""


def load_mnist(train_size=None):
    (x, y), (x_test, y_test) = data.mnist()
    prep = lambda images: (images.astype("float32") / 255.0)[..., None]
    one_hot = lambda labels: keras.utils.to_categorical(labels, 10).astype("float32")
    return (prep(x[:train_size]), one_hot(y[:train_size])), (prep(x_test), one_hot(y_test)), y_test


def two_digit_images(x_test, y_test, seed=PAIR_SEED):
    """Each test image stacked above a partner drawn by a random permutation (56x28), pairs with equal
    labels dropped, as in the article. Returns images (m, 56, 28, 1) and labels (m, 2), sorted."""
    partner = np.random.default_rng(seed).permutation(len(x_test))
    keep = y_test != y_test[partner]
    images = np.concatenate([x_test[keep], x_test[partner][keep]], axis=1)
    labels = np.sort(np.stack([y_test[keep], y_test[partner][keep]], axis=1), axis=1)
    return images, labels


def pair_scores(scores, labels):
    """acc1: the two top classes are the two digits (as an unordered pair); acc2: and the second score
    is above 0.5 (the model is confident both digits are there)."""
    top2 = np.sort(np.argsort(scores, axis=1, kind="stable")[:, -2:], axis=1)  # ties: the later class wins
    hit = np.all(top2 == labels, axis=1)
    second = np.sort(scores, axis=1)[:, -2]
    return float(hit.mean()), float((hit & (second > 0.5)).mean())


"""## 2. The models: a shared trunk, a CNN head or a capsule head"""


def build_model(head, routing=None, precision="mixed_bfloat16"):
    """Any image size in (the article's ``Input((None, None, 1))``), 10 scores in [0, 1] out."""
    images = keras.Input((None, None, 1), name="images")
    x = images
    for i, filters in enumerate([64, 64, None, 128, 128]):
        if filters is None:
            x = keras.layers.AveragePooling2D(2, dtype=precision)(x)
        else:
            x = keras.layers.Conv2D(filters, 3, activation="relu", dtype=precision, name=f"conv{i}")(x)
    if head == "cnn":
        x = keras.layers.GlobalAveragePooling2D(dtype="float32")(x)
        x = keras.layers.Dense(128, activation="relu", dtype="float32")(x)
        scores = keras.layers.Dense(10, activation="sigmoid", dtype="float32", name="scores")(x)
    else:
        x = keras.layers.Reshape((-1, 128), dtype="float32")(x)  # every position's 128 channels: a capsule
        x = Capsule(10, 16, routings=3, share_weights=True, routing=routing, dtype="float32", name="capsule")(x)
        scores = CapsuleLength(dtype="float32", name="scores")(x)
    return keras.Model(images, scores, name=f"{head}_{routing}" if routing else head)


"""## 3. Training one model with one seed"""


def run_seed(name, seed, args, mode, pairs):
    spec = MODELS[name]
    epochs = args.epochs or MODES[mode].get("epochs") or spec["epochs"]
    experiment = name + ("-quick" if mode == "quick" else "")
    config = {
        "mode": mode, "model": name, "head": spec["head"], "routing": spec["routing"], "epochs": epochs,
        "batch_size": BATCH_SIZE, "optimizer": "adam", "learning_rate": 1e-3, "loss": "margin_loss",
        "train_size": MODES[mode]["train_size"], "pair_seed": PAIR_SEED, "pairs": int(len(pairs[1])),
        "precision": args.precision, "distribute": args.distribute,
    }
    path = runs.result_path(args.out, ARTICLE, experiment, seed)
    done = runs.reusable(path, config, args.force)
    if done is not None:
        print(f"  {experiment} seed {seed}: done already ({path})")
        return done

    print(f"  {experiment} seed {seed}:", flush=True)
    started = time.time()
    runs.set_seed(seed)
    train, test, _ = load_mnist(MODES[mode]["train_size"])
    with cli.distribution(args):
        model = build_model(spec["head"], spec["routing"], args.precision)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=margin_loss, metrics=["accuracy"],
                      steps_per_execution=10)
    history = model.fit(**feed.arrays(*train, batch_size=BATCH_SIZE, shuffle=True, seed=seed), epochs=epochs,
                        validation_data=feed.validation(*test, batch_size=BATCH_SIZE), verbose=0,
                        callbacks=[EpochTimer(), PrintEpoch(), keras.callbacks.TerminateOnNaN()]).history
    scores = model.predict(pairs[0], batch_size=500, verbose=0)
    acc1, acc2 = pair_scores(scores, pairs[1])
    metrics = {
        "test_acc": history["val_accuracy"][-1], "best_val_acc": max(history["val_accuracy"]),
        "pair_acc": acc1, "pair_acc_confident": acc2,
        "epoch_time_s": float(np.median(history["epoch_time_s"])), "params": model.count_params(),
        # for the figure: the first 8 two-digit images' scores
        "examples": np.round(scores[:8].astype("float64"), 4).tolist(),
    }
    runs.save_result(args.out, ARTICLE, experiment, seed, metrics=metrics, config=config, history=history,
                     headline={"metric": "pair_acc", "label": "two-digit top-2 accuracy (acc1)",
                               "blog": BLOG[name]["pair_acc"], "blog_source": SOURCES[name]},
                     started=started)
    print(f"    MNIST test {metrics['test_acc']:.4f}, two digits {acc1:.4f} / {acc2:.4f}, "
          f"{metrics['epoch_time_s']:.1f} s per epoch, {metrics['params']:,} parameters", flush=True)
    return runs.load_result(path)


"""## 4. Table and figure"""


def report(records, out, mode, pairs):
    print("\n| model | MNIST test acc | two-digit acc1 | two-digit acc2 (2nd > 0.5) | s/epoch | params | seeds |")
    print("|---|---|---|---|---|---|---|")
    by_model = {}
    for r in records:
        by_model.setdefault(r["config"]["model"], []).append(r)
    for name, rs in by_model.items():
        col = lambda key, d=4, rs=rs: runs.format_mean_std([r["metrics"][key] for r in rs], d)
        print(f"| {name} | {col('test_acc')} | {col('pair_acc')} | {col('pair_acc_confident')} | "
              f"{col('epoch_time_s', 1)} | {rs[0]['metrics']['params']:,} | {len(rs)} |")
    print("\nthe article's code on these machines (one seed): " + "; ".join(
        f"{m} {a:.3f} / {b:.3f}, MNIST {t:.4f}, {s} s per epoch" for m, (a, b, t, s) in ARTICLE_CODE.items()))
    figure = draw_examples(by_model, pairs, Path(out) / ARTICLE / f"two_digits{'-quick' if mode == 'quick' else ''}.png")
    print(f"\nfigure: {figure}")


def draw_examples(by_model, pairs, path):
    """The first 8 two-digit images, each with every model's top-2 classes and scores (its first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = pairs
    fig, axes = plt.subplots(1, 8, figsize=(16, 4.6))
    for k, ax in enumerate(axes):
        ax.imshow(images[k, :, :, 0], cmap="gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [f"digits {labels[k][0]} {labels[k][1]}"]
        for name, rs in by_model.items():
            s = np.asarray(rs[0]["metrics"]["examples"][k])
            top = np.argsort(-s)[:2]
            lines.append(f"{name}: {top[0]} ({s[top[0]]:.2f}) {top[1]} ({s[top[1]]:.2f})")
        ax.set_title("\n".join(lines), fontsize=7)
    fig.suptitle("Trained on single digits, tested on two: each model's top-2 classes (score), first seed")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                   help="which models (default: all four)")
    p.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                   help="mixed_bfloat16 (default: bfloat16 convolutions, float32 heads) or float32")
    args = cli.parse(p, argv)
    mode = "quick" if args.quick else "full"
    print(f"backend {keras.backend.backend()}, mode {mode}, seeds {cli.seeds(args)}, models {args.models}, "
          f"precision {args.precision}")
    _, (x_test, _), y_test = load_mnist(train_size=0)
    pairs = two_digit_images(x_test, y_test)
    if mode == "quick":
        pairs = (pairs[0][:1000], pairs[1][:1000])
    print(f"two-digit test set: {len(pairs[1])} images of 56x28 (pairs with equal digits dropped)")
    records = [run_seed(name, seed, args, mode, pairs) for seed in cli.seeds(args) for name in args.models]
    report(records, args.out, mode, pairs)
    return records


if __name__ == "__main__":
    main()
