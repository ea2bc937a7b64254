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

Models, as in the article's code (except that the convolutions run in bfloat16 where the hardware
has it, see --precision): MNIST / 255; trunk Conv 64-64 (3x3, relu) -> AvgPool 2 -> Conv
128-128; CNN head GlobalAveragePooling -> Dense 128 relu -> Dense 10 sigmoid, 20 epochs; capsule head:
the 128-channel feature vectors as capsules -> Capsule(10, 16, 3 routings, shared weights) -> lengths,
10 epochs; Adam, batch 128, margin loss; the test set as validation. Runs: the CNN and the capsule head
with each routing (article 4819, K-means 5112, the paper's), 3 seeds each.

Run:  python capsule/train.py                     (4 models x 3 seeds, about 66 minutes on 2 CPU cores)
      python capsule/train.py --models cnn article --seeds 1
      python capsule/train.py --quick             (CNN vs article routing, 32-64 trunk, 2 epochs, 1 seed)
      python capsule/train.py --smoke             (seconds: checks that the script runs)
Records go to runs/results/ (the committed reference: results/, written only with --reference).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # utils/ sits one folder up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from capsule.em import ClassCapsules, ConvCapsules, MarginSchedule, PrimaryCapsules, SpreadLoss  # noqa: E402
from capsule.layers import Capsule, CapsuleLength, margin_loss  # noqa: E402
from utils import cli, data, feed, plots, progress, report, runs  # noqa: E402
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
    # Matrix capsules with EM routing (5155): Conv 5x5/2 (A) -> primary capsules (B) -> ConvCaps 3x3/2 (C)
    # -> ConvCaps 3x3/1 (D) -> class capsules; spread loss, margin 0.2 -> 0.9. "em" is sized for 2 CPU
    # cores (about 7 minutes an epoch here, 2 epochs); "em_paper" has the paper's sizes, for a GPU.
    "em": {
        "head": "em",
        "routing": "em",
        "epochs": 2,
        "batch_size": 64,
        "em": {"A": 32, "B": 8, "C": 8, "D": 8, "iterations": 2},
    },
    "em_paper": {
        "head": "em",
        "routing": "em",
        "epochs": 10,
        "batch_size": 64,
        "em": {"A": 32, "B": 32, "C": 32, "D": 32, "iterations": 3},
    },
}
EM_LEARNING_RATE = 3e-3
MODES = {
    "full": {
        "train_size": None,
        "epochs": None,
        "seeds": 3,
        "models": [m for m in MODELS if m != "em_paper"],  # the paper-sized EM model: for a GPU, on request
        "pairs": None,
        "width": 64,
        "val_size": None,
    },
    # The CNN against the article's capsules, one seed, trained briefly on all of MNIST: long enough
    # for both to read single digits (about 98%) and for the gap on two digits to show.
    "quick": {
        "train_size": None,
        "epochs": 2,
        "seeds": 1,
        "models": ["cnn", "article"],
        "pairs": 2000,
        "width": 32,
        "val_size": None,
    },
    # Seconds: the pipeline end to end.
    "smoke": {
        "train_size": 512,
        "epochs": 1,
        "seeds": 1,
        "models": ["cnn", "article"],
        "pairs": 200,
        "width": 16,
        "val_size": 500,
    },
}
# The article's numbers (text of 4819 and 5112; approximate, one run, no seed).
BLOG = {
    "cnn": {"pair_acc": 0.40, "pair_acc_confident": 0.10, "test_acc": 0.993},
    "article": {"pair_acc": 0.90, "pair_acc_confident": 0.90, "test_acc": 0.993},
    "kmeans": {"pair_acc": 0.95, "pair_acc_confident": None, "test_acc": None},
    "paper": {"pair_acc": None, "pair_acc_confident": None, "test_acc": None},
    "em": {"pair_acc": None, "pair_acc_confident": None, "test_acc": None},
    "em_paper": {"pair_acc": None, "pair_acc_confident": None, "test_acc": None},
}
# The article's code (Keras 2 API) on these machines, one seed (ANCHORS.md):
# two-digit acc1, acc2, MNIST test accuracy, seconds per epoch.
ARTICLE_CODE = {
    "cnn": (0.418, 0.084, 0.9937, "50"),
    "article": (0.902, 0.902, 0.9946, "52-56"),
    "kmeans": (0.970, 0.970, 0.9930, "52-56"),
}
SOURCES = {
    "cnn": "kexue.fm/archives/4819: CNN two-digit top-2 accuracy about 40% (10% with the 2nd score > 0.5)",
    "article": "kexue.fm/archives/4819: capsule two-digit accuracy above 90% on both scores",
    "kmeans": "kexue.fm/archives/5112: K-means routing above 95% on the two-digit test",
    "paper": "the paper's routing: not run in the articles",
    "em": "kexue.fm/archives/5155 derives EM routing and runs no experiment",
    "em_paper": "kexue.fm/archives/5155 derives EM routing and runs no experiment",
}
CLAIM = report.Claim(
    statement="trained on single digits, capsules name both digits of a two-digit image far more often than "
    "a CNN with the same trunk (article: above 90% against about 40%)",
    criterion="the capsules (article routing) name both digits (acc1) at least 1.5 times as often as the CNN, "
    "and at least 0.15 more often",
    rows=[
        report.Row(
            "capsule", "article", "pair_acc", "capsules (article routing): two-digit acc1", BLOG["article"]["pair_acc"]
        ),
        report.Row("cnn", "cnn", "pair_acc", "CNN: two-digit acc1", BLOG["cnn"]["pair_acc"]),
        report.Row(
            "capsule_mnist", "article", "test_acc", "capsules: MNIST test accuracy", BLOG["article"]["test_acc"]
        ),
        report.Row("cnn_mnist", "cnn", "test_acc", "CNN: MNIST test accuracy", BLOG["cnn"]["test_acc"]),
    ],
    holds=lambda v: v["capsule"] >= 1.5 * v["cnn"] and v["capsule"] >= v["cnn"] + 0.15,
    blog_source="kexue.fm/archives/4819 (approximate, one run)",
)
# Mixed precision: the convolutions in bfloat16, the heads (routing, scores, loss) in float32. On a
# CPU with AVX512-BF16 this trains 1.6x faster than float32; on one without (AVX2 only) bfloat16 is
# emulated and several times slower. "auto" takes bfloat16 on a GPU or a CPU with AVX512-BF16 or
# AMX, float32 elsewhere; --precision float32 is the article's arithmetic.
PRECISIONS = ("auto", "mixed_bfloat16", "float32")


def auto_precision():
    """mixed_bfloat16 where the hardware computes in bfloat16 (any GPU; a CPU with AVX512-BF16 or AMX), else float32."""
    if runs.devices():
        return "mixed_bfloat16"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


"""## 1. Data: MNIST, and the two-digit test set"""


def load_mnist(train_size=None, val_size=None):
    """MNIST / 255 with one-hot labels: ``train_size`` training images (default all), the test set
    (cut to ``val_size``) as validation, as in the article, and the test labels."""
    (x, y), (x_test, y_test) = data.mnist()
    x_test, y_test = x_test[:val_size], y_test[:val_size]
    prep = lambda images: (images.astype("float32") / 255.0)[..., None]
    one_hot = lambda labels: keras.utils.to_categorical(labels, 10).astype("float32")
    return (prep(x[:train_size]), one_hot(y[:train_size])), (prep(x_test), one_hot(y_test)), y_test


NORB_SIZE, NORB_CROP = 48, 32  # the paper: downsampled to 48x48, 32x32 crops (random in training, centre at test)


def load_norb(folder, train_size=None, val_size=None):
    """smallNORB for the EM model, as the paper prepares it: the first image of each stereo pair,
    downsampled to 48x48, each image standardised (zero mean, unit variance); one-hot labels of the 5
    categories. The test set is the validation set, as for MNIST."""
    (x, y), (x_test, y_test) = data.small_norb(folder)
    prep = lambda images: data.norb_downsample_standardize(images[:, 0], size=NORB_SIZE)[..., None]
    one_hot = lambda labels: keras.utils.to_categorical(labels, 5).astype("float32")
    return (prep(x[:train_size]), one_hot(y[:train_size])), (prep(x_test[:val_size]), one_hot(y_test[:val_size]))


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


def build_model(head, routing=None, precision="float32", width=64):
    """Any image size in (the article's ``Input((None, None, 1))``), 10 scores in [0, 1] out. ``width``:
    the first convolutions' filters (the article's 64; the last two have twice as many)."""
    images = keras.Input((None, None, 1), name="images")
    x = images
    for i, filters in enumerate([width, width, None, 2 * width, 2 * width]):
        if filters is None:
            x = keras.layers.AveragePooling2D(2, dtype=precision)(x)
        else:
            x = keras.layers.Conv2D(filters, 3, activation="relu", dtype=precision, name=f"conv{i}")(x)
    if head == "cnn":
        x = keras.layers.GlobalAveragePooling2D(dtype="float32")(x)
        x = keras.layers.Dense(128, activation="relu", dtype="float32")(x)
        scores = keras.layers.Dense(10, activation="sigmoid", dtype="float32", name="scores")(x)
    else:
        x = keras.layers.Reshape((-1, 2 * width), dtype="float32")(x)  # every position's channels: a capsule
        x = Capsule(10, 16, routings=3, share_weights=True, routing=routing, dtype="float32", name="capsule")(x)
        scores = CapsuleLength(dtype="float32", name="scores")(x)
    return keras.Model(images, scores, name=f"{head}_{routing}" if routing else head)


@keras.saving.register_keras_serializable(package="kexue_capsule_train")
class CentreCrop(keras.layers.Layer):
    """smallNORB's crops (the paper's): a random ``size`` x ``size`` window in training (one offset per
    batch), the centre one otherwise."""

    def __init__(self, size, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.size, self.seed = size, seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        height, width = images.shape[1], images.shape[2]
        if training:
            top = keras.random.randint((), 0, height - self.size + 1, seed=self.generator)
            left = keras.random.randint((), 0, width - self.size + 1, seed=self.generator)
        else:
            top, left = (height - self.size) // 2, (width - self.size) // 2
        start = [0, top, left, 0]
        return keras.ops.slice(images, start, [keras.ops.shape(images)[0], self.size, self.size, images.shape[3]])

    def compute_output_shape(self, shape):
        return (shape[0], self.size, self.size, shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "seed": self.seed}


def build_em_model(sizes, height=28, width=28, coordinate_scale=None, classes=10, crop=None):
    """Matrix capsules with EM routing, the paper's MNIST/smallNORB layout at the given sizes: Conv2D A
    (5x5, stride 2, relu) -> PrimaryCapsules B (1x1) -> ConvCapsules C (3x3, stride 2) -> ConvCapsules D
    (3x3, stride 1) -> ClassCapsules 10 (coordinate addition); the class activations are the scores.
    The weights do not depend on the image size: a model built for 56x28 takes a 28x28 model's weights
    (pass its ``coordinate_scale``)."""
    images = keras.Input((height, width, 1), name="images")
    x = images if crop is None else CentreCrop(crop, name="crop")(images)
    x = keras.layers.Conv2D(sizes["A"], 5, strides=2, activation="relu", name="conv")(x)
    capsules = PrimaryCapsules(sizes["B"], name="primary")(x)
    routing = {key: sizes[key] for key in ("iterations", "inverse_temperature", "normalise_cost") if key in sizes}
    capsules = ConvCapsules(sizes["C"], 3, strides=2, name="conv_caps1", **routing)(capsules)
    capsules = ConvCapsules(sizes["D"], 3, strides=1, name="conv_caps2", **routing)(capsules)
    _, scores = ClassCapsules(classes, coordinate_scale=coordinate_scale, name="class_caps", **routing)(capsules)
    return keras.Model(images, scores, name="em_routing")


def em_scores(model, sizes, images):
    """The EM model's class activations on images of another size (the two-digit 56x28 ones): the same
    weights in a model built for that size, with the trained coordinate scale."""
    scale = model.get_layer("class_caps").coordinate_scale
    other = build_em_model(sizes, images.shape[1], images.shape[2], coordinate_scale=scale)
    other.set_weights(model.get_weights())
    return other.predict(images, batch_size=100, verbose=0)


"""## 3. Training one model with one seed"""


def train_seed(job, checkpoint):
    """Train one model with one seed and score it on the two-digit images (``utils.runs.run_jobs``
    seeds, resumes and records it)."""
    cfg, pairs = job.config, job.spec["pairs"]
    norb = cfg.get("dataset") == "smallnorb"
    if norb:
        train, test = load_norb(job.spec["smallnorb"], cfg["train_size"], job.spec["val_size"])
    else:
        train, test, _ = load_mnist(cfg["train_size"], job.spec["val_size"])
    em = cfg["head"] == "em"
    extra = [MarginSchedule(cfg["epochs"])] if em else []
    with cli.distribution(job.spec["args"]):
        if em:
            if norb:
                model = build_em_model(cfg["em"], NORB_SIZE, NORB_SIZE, classes=5, crop=NORB_CROP)
            else:
                model = build_em_model(cfg["em"])
            model.compile(
                optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
                loss=SpreadLoss(),
                metrics=["accuracy"],
                steps_per_execution=cli.steps_per_execution(10),
                # XLA fuses the routing's elementwise work: 2.5x faster on a CPU (a smoke run's few steps
                # would not repay the compilation)
                jit_compile=True if keras.backend.backend() == "tensorflow" and cfg["mode"] != "smoke" else "auto",
            )
        else:
            model = build_model(cfg["head"], cfg["routing"], cfg["precision"], cfg.get("width", 64))
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=margin_loss,
                metrics=["accuracy"],
                steps_per_execution=cli.steps_per_execution(10),
            )
        initial_epoch = checkpoint.restore(model)  # in the strategy's scope: it may build the optimizer
    model.fit(
        **feed.arrays(*train, batch_size=cfg["batch_size"], shuffle=True, seed=job.seed),
        epochs=cfg["epochs"],
        validation_data=feed.validation(*test, batch_size=cfg["batch_size"]),
        verbose=progress.fit_verbose(),
        initial_epoch=initial_epoch,
        callbacks=[*extra, EpochTimer(), PrintEpoch(), keras.callbacks.TerminateOnNaN(), checkpoint],
    )
    history = checkpoint.history
    if norb:
        metrics = {
            "test_acc": history["val_accuracy"][-1],
            "best_val_acc": max(history["val_accuracy"]),
            "epoch_time_s": float(np.median(history["epoch_time_s"])),
            "params": model.count_params(),
        }
        print(f"    smallNORB test {metrics['test_acc']:.4f}, {metrics['epoch_time_s']:.1f} s per epoch", flush=True)
        return metrics, history
    if em:
        scores = em_scores(model, cfg["em"], pairs[0])
    else:
        scores = model.predict(pairs[0], batch_size=500, verbose=0)
    acc1, acc2 = pair_scores(scores, pairs[1])
    metrics = {
        "test_acc": history["val_accuracy"][-1],
        "best_val_acc": max(history["val_accuracy"]),
        "pair_acc": acc1,
        "pair_acc_confident": acc2,
        "epoch_time_s": float(np.median(history["epoch_time_s"])),
        "params": model.count_params(),
        # for the figure: the first 8 two-digit images' scores
        "examples": np.round(scores[:8].astype("float64"), 4).tolist(),
    }
    print(
        f"    MNIST test {metrics['test_acc']:.4f}, two digits {acc1:.4f} / {acc2:.4f}, "
        f"{metrics['epoch_time_s']:.1f} s per epoch, {metrics['params']:,} parameters",
        flush=True,
    )
    return metrics, history


def jobs(args, models, pairs):
    mode = MODES[args.mode]
    out = []
    for seed in cli.seeds(args, mode["seeds"]):
        for name in models:
            spec = MODELS[name]
            epochs = args.epochs or mode["epochs"] or spec["epochs"]
            em = spec["head"] == "em"
            config = {
                "mode": args.mode,
                "model": name,
                "head": spec["head"],
                "routing": spec["routing"],
                "epochs": epochs,
                "batch_size": spec.get("batch_size", BATCH_SIZE),
                "optimizer": "adam",
                "learning_rate": EM_LEARNING_RATE if em else 1e-3,
                "loss": "spread_loss, margin 0.2 -> 0.9" if em else "margin_loss",
                "train_size": mode["train_size"],
                "pair_seed": PAIR_SEED,
                "pairs": int(len(pairs[1])),
                "precision": args.precision,
                "distribute": args.distribute,
            }
            if em:
                config["em"] = spec["em"]
                config["precision"] = "float32"
            # the article's trunk is not named (the reference records predate the option)
            if mode["width"] != 64 and not em:
                config["width"] = mode["width"]
            if mode["val_size"] is not None:
                config["val_size"] = mode["val_size"]
            size = "all 60,000" if mode["train_size"] is None else f"{mode['train_size']:,}"
            trunk = "" if mode["width"] == 64 else f", trunk {mode['width']}-{2 * mode['width']} filters"
            protocol = (
                f"{args.mode}: {epochs} epochs on {size} MNIST digits, {len(pairs[1]):,} two-digit images{trunk}, "
                f"{args.precision}"
            )
            headline = {
                "metric": "pair_acc",
                "label": "two-digit top-2 accuracy (acc1)",
                "blog": BLOG[name]["pair_acc"],
                "blog_source": SOURCES[name],
            }
            base = name
            if args.smallnorb is not None:  # the EM model on smallNORB instead: no two-digit test
                base = f"{name}-smallnorb"
                config["dataset"] = "smallnorb"
                for key in ("pair_seed", "pairs"):
                    del config[key]
                protocol = f"{args.mode}: {epochs} epochs on smallNORB (48x48, 32x32 crops), float32"
                headline = {
                    "metric": "test_acc",
                    "label": "smallNORB test accuracy",
                    "blog": None,
                    "blog_source": "the paper (Hinton et al. 2018): 0.982 (1.8% test error) on smallNORB",
                }
            out.append(
                runs.Job(
                    runs.experiment_name(base, args.mode),
                    seed,
                    config,
                    headline,
                    protocol,
                    {"args": args, "pairs": pairs, "val_size": mode["val_size"], "smallnorb": args.smallnorb},
                )
            )
    return out


"""## 4. Table and figure"""


def summary(records, out, mode, pairs):
    if pairs is None:  # smallNORB
        print("\n| model | smallNORB test acc | best epoch's | s/epoch | params | seeds |\n|---|---|---|---|---|---|")
        for name in dict.fromkeys(r["config"]["model"] for r in records):
            rs = [r for r in records if r["config"]["model"] == name]
            col = lambda key, d=4, rs=rs: runs.format_mean_std([r["metrics"][key] for r in rs], d)
            print(
                f"| {name} | {col('test_acc')} | {col('best_val_acc')} | {col('epoch_time_s', 1)} | "
                f"{rs[0]['metrics']['params']:,} | {len(rs)} |"
            )
        return
    print("\n| model | MNIST test acc | two-digit acc1 | two-digit acc2 (2nd > 0.5) | s/epoch | params | seeds |")
    print("|---|---|---|---|---|---|---|")
    by_model = {}
    for r in records:
        by_model.setdefault(r["config"]["model"], []).append(r)
    for name, rs in by_model.items():
        col = lambda key, d=4, rs=rs: runs.format_mean_std([r["metrics"][key] for r in rs], d)
        print(
            f"| {name} | {col('test_acc')} | {col('pair_acc')} | {col('pair_acc_confident')} | "
            f"{col('epoch_time_s', 1)} | {rs[0]['metrics']['params']:,} | {len(rs)} |"
        )
    print(
        "\nthe article's code on these machines (one seed): "
        + "; ".join(
            f"{m} {a:.3f} / {b:.3f}, MNIST {t:.4f}, {s} s per epoch" for m, (a, b, t, s) in ARTICLE_CODE.items()
        )
    )
    figure = draw_examples(by_model, pairs, Path(out) / ARTICLE / f"{runs.experiment_name('two_digits', mode)}.png")
    print(f"\nfigure: {figure}")


def draw_examples(by_model, pairs, path):
    """The first 8 two-digit images, each with every model's top-2 classes and scores (its first seed)."""
    images, labels = pairs
    fig, axes = plots.plt.subplots(1, 8, figsize=(16, 4.6))
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
    return plots.save(fig, path)


def parser():
    """The command line (reproduce.py checks it before running anything)."""
    p = cli.parser(__doc__)
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=None,
        help="which models (default: all but em_paper; quick mode: cnn and article; with --smallnorb: em)",
    )
    p.add_argument(
        "--smallnorb",
        type=Path,
        default=None,
        metavar="DIR",
        help="train the EM models on smallNORB from DIR (the six files from "
        "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/, gzipped or not; never downloaded) instead of MNIST",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default: mixed_bfloat16 where the hardware has bfloat16, else float32), "
        "mixed_bfloat16 (bfloat16 convolutions, float32 heads) or float32",
    )
    return p


def main(argv=None):
    args = cli.parse(parser(), argv)
    if args.precision == "auto":
        args.precision = auto_precision()
    models = args.models or MODES[args.mode]["models"]
    if args.smallnorb is not None:
        models = args.models or ["em"]
        if any(MODELS[m]["head"] != "em" for m in models):
            parser().error(f"--smallnorb trains the EM models only (em, em_paper), got --models {' '.join(models)}")
    print(
        f"backend {keras.backend.backend()}, mode {args.mode}, models {models}, precision {args.precision}, "
        f"records in {args.out}"
    )
    if args.smallnorb is not None:
        records = runs.run_jobs(ARTICLE, jobs(args, models, (None, [])), args, train_seed)
        summary(records, args.out, args.mode, None)
        return records
    _, (x_test, _), y_test = load_mnist(train_size=0)
    images, labels = two_digit_images(x_test, y_test)
    pairs = (images[: MODES[args.mode]["pairs"]], labels[: MODES[args.mode]["pairs"]])
    print(f"two-digit test set: {len(pairs[1])} images of 56x28 (pairs with equal digits dropped)")
    records = runs.run_jobs(ARTICLE, jobs(args, models, pairs), args, train_seed)
    summary(records, args.out, args.mode, pairs)
    report.print_judgement(CLAIM, records, ARTICLE, args.mode)
    return records


if __name__ == "__main__":
    cli.run(main)
