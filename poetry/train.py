"""
Title: A poem generator from a CNN and a VAE (基于CNN和VAE的作诗机器人：随机成诗, kexue.fm/archives/5332)
Description: the article's VAE over five-character couplets of Tang poems, with gated convolutions,
sampled from its prior; with automatic measures of the couplets it writes.

The article trains a VAE whose encoder and decoder are gated convolutions on 10-character samples
cut from Tang poems (a five-character couplet without its punctuation) and writes new couplets by
decoding draws z ~ N(0, I) greedily. It shows samples only; its corpus file is lost. Here the
corpus is chinese-poetry's simplified Tang poems (57,591 poems), the couplets cut by the article's
rule (utils.data.couplets), and 5% of the poems are held out whole.

The article's model (vae_shi.py): Embedding(V, 64) -> 2 gated-CNN blocks with residuals -> average
pooling -> mean and log-variance of a 64-d latent; z -> Dense(640) -> reshape to 10 x 64 -> a gated-CNN
block -> a distribution over the characters at every position. Loss: the cross-entropy summed over
the 10 positions + the KL; Adam, batch 64, 100 epochs (8 here by default: see FULL_EPOCHS); one
greedy couplet printed after each epoch.

Variants, to measure what helps (the article's recipe is the default): KL annealing (the KL's weight
grows from 0 to 1 over the first 20% of the steps), free bits (each latent dimension's KL counted as
at least 0.5 nats), more blocks (4 in the encoder, 3 in the decoder), a wider latent (128), and whole
quatrains (20 characters) instead of couplets.

Evaluation of every seed: on the held-out couplets, the reconstruction accuracy (decoding the
posterior mean), the KL and the negative ELBO; on 1,000 greedy and 1,000 sampled couplets (temperature
1, top-40), the shares well-formed, novel (no line in the training poems), distinct, following the
regulated-verse tone rules, and rhyming (poetry/metrics.py), next to the same tone and rhyme shares of
the real held-out couplets.

Run:  python poetry/train.py                          (the article's recipe for 8 epochs, 3 seeds: about
                                                       20 minutes a seed on 2 CPU cores, the reference)
      python poetry/train.py --epochs 100             (the article's 100 epochs: hours a seed on a CPU)
      python poetry/train.py --variants anneal free_bits deeper wide quatrain   (4, 4, 4, 4, 30 epochs)
      python poetry/train.py --quick                  (1 epoch, 1 seed: about 4 minutes on 2 CPU cores)
      python poetry/train.py --smoke                  (seconds: checks that the script runs)
      python poetry/generate.py runs/poetry/article-seed0     (couplets from a trained seed)
Records go to runs/results/poetry/, the models to runs/poetry/ (the reference: results/ with
--reference, its models to runs/poetry-reference/; models are never committed).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # utils/ sits one folder up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from poetry import metrics  # noqa: E402
from poetry.generate import Poet, punctuate  # noqa: E402
from poetry.layers import GCNN, sequence_nll  # noqa: E402
from utils import cli, data, feed, progress, report, runs  # noqa: E402
from utils.callbacks import EpochTimer, PrintEpoch  # noqa: E402
from vae.layers import KLDivergence, Sampling, gaussian_kl  # noqa: E402

ARTICLE = "poetry"
BATCH_SIZE = 64
HIDDEN = 64
HELDOUT = 0.05  # share of the poems held out, whole
SAMPLING = {"temperature": 1.0, "top_k": 40}  # the sampled couplets' decoding
_ARTICLE = {"unit": "couplet", "latent": 64, "encoder_blocks": 2, "decoder_blocks": 1, "anneal": 0, "free_bits": 0}
VARIANTS = {
    # unit, latent size, gated-CNN blocks in the encoder and decoder, KL annealing (the share of the steps
    # over which the KL's weight grows from 0 to 1), free bits (nats per latent dimension)
    "article": _ARTICLE,
    "anneal": {**_ARTICLE, "anneal": 0.2},
    "free_bits": {**_ARTICLE, "free_bits": 0.5},
    "deeper": {**_ARTICLE, "encoder_blocks": 4, "decoder_blocks": 3},
    "wide": {**_ARTICLE, "latent": 128},
    "quatrain": {**_ARTICLE, "unit": "quatrain"},
}
LENGTH = {"couplet": 10, "quatrain": 20}
# The full protocol's epochs: what 2 CPU cores train in about 20 minutes a seed (the reference in
# results/). The article trains 100 epochs: --epochs 100 (hours a seed on a CPU; for a GPU).
FULL_EPOCHS = {"article": 8, "anneal": 4, "free_bits": 4, "deeper": 4, "wide": 4, "quatrain": 30}
MODES = {
    "full": {"epochs": None, "seeds": 3, "poems": None, "samples": 1000, "variants": ["article"]},
    # Every couplet once: enough for well-formed, varied couplets, not for good ones.
    "quick": {"epochs": 1, "seeds": 1, "poems": None, "samples": 1000, "variants": ["article"]},
    # Seconds: the pipeline end to end.
    "smoke": {"epochs": 1, "seeds": 1, "poems": 2000, "samples": 50, "variants": ["article", "quatrain"]},
}
BLOG_SOURCE = "kexue.fm/archives/5332 shows sample couplets only, no numbers"
CLAIM = report.Claim(
    statement="a VAE with gated convolutions, trained on couplets of Tang poems, writes new couplets from "
    "random draws of its prior",
    criterion="of 1,000 couplets sampled from the prior (temperature 1, top-40), 100% are well-formed (10 Chinese "
    "characters), at least 95% novel (no line found in the training couplets) and at least 95% distinct; and the "
    "held-out negative ELBO is below that of the characters' frequencies alone (an untrained model is far above it)",
    rows=[
        report.Row("formed", "article", "sampled_well_formed", "sampled couplets: well-formed", digits=3),
        report.Row("novel", "article", "sampled_novel", "sampled couplets: novel", digits=3),
        report.Row("distinct", "article", "sampled_distinct", "sampled couplets: distinct", digits=3),
        report.Row("nelbo", "article", "heldout_neg_elbo", "held-out negative ELBO (nats per couplet)", digits=2),
        report.Row("unigram", "article", "unigram_nll", "the characters' frequencies alone: -log p", digits=2),
        report.Row("greedy", "article", "greedy_distinct", "greedy couplets: distinct (not judged)", digits=3),
    ],
    holds=lambda v: v["formed"] == 1.0 and v["novel"] >= 0.95 and v["distinct"] >= 0.95 and v["nelbo"] < v["unigram"],
    blog_source=BLOG_SOURCE,
)


"""## 1. Data: couplets (or quatrains) of five-character Tang poems"""


def load_corpus(unit, poems_limit=None):
    """The texts of one unit, split by whole poems (``utils.data.split_poems``):

    - ``train``, ``heldout``: the training and held-out texts. A held-out text that also occurs in a
      training poem is dropped (the corpus repeats some poems under another title or author, and
      some couplets recur), so that no held-out text was seen in training;
    - ``vocab``: the training texts' characters (``utils.data.char_vocabulary``);
    - ``lines``: every five-character line of the training poems, whatever their form (what a
      novel line must not be);
    - ``train_poems``: the training poems (for the tone table), and ``dropped``: how many held-out
      texts were dropped."""
    poems = data.tang_poems()[:poems_limit]
    if unit == "couplet":
        per_poem = [data.couplets(p) for p in poems]
    else:
        per_poem = [[q] if (q := data.quatrain(p)) else [] for p in poems]
    train_idx, heldout_idx = data.split_poems(len(poems), HELDOUT)
    train = [t for i in train_idx for t in per_poem[i]]
    seen = set(train)
    heldout = [t for i in heldout_idx for t in per_poem[i]]
    kept = [t for t in heldout if t not in seen]
    return {
        "train": train,
        "heldout": kept,
        "dropped": len(heldout) - len(kept),
        "vocab": data.char_vocabulary(train),
        "lines": {line for i in train_idx for line in data.five_char_lines(poems[i])},
        "train_poems": [poems[i] for i in train_idx],
    }


"""## 2. The model"""


def build_vae(vocab_size, length, latent, encoder_blocks, decoder_blocks, free_bits, seed):
    """``vae`` (ids -> logits, the KL added by ``KLDivergence``), the ``encoder`` (ids -> [z_mean,
    z_log_var]) and the ``decoder`` (z -> logits, the generator that poetry/generate.py loads)."""
    ids = keras.Input((length,), dtype="int32", name="ids")
    h = keras.layers.Embedding(vocab_size, HIDDEN, name="embedding")(ids)
    for _ in range(encoder_blocks):
        h = GCNN(residual=True)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    z_mean = keras.layers.Dense(latent, name="z_mean")(h)
    z_log_var = keras.layers.Dense(latent, name="z_log_var")(h)
    encoder = keras.Model(ids, [z_mean, z_log_var], name="encoder")

    z_in = keras.Input((latent,), name="z")
    h = keras.layers.Reshape((length, HIDDEN))(keras.layers.Dense(length * HIDDEN)(z_in))
    for _ in range(decoder_blocks):
        h = GCNN(residual=True)(h)
    decoder = keras.Model(z_in, keras.layers.Dense(vocab_size, name="characters")(h), name="generator")

    z_mean, z_log_var = KLDivergence(free_bits=free_bits, name="kl")(encoder(ids))
    z = Sampling(seed=seed, name="sampling")([z_mean, z_log_var])
    return keras.Model(ids, decoder(z), name="poetry_vae"), encoder, decoder


class AnnealKL(keras.callbacks.Callback):
    """KL annealing: the KL's weight rises linearly from 0 to 1 over the first ``steps`` training steps
    (read from the optimizer's step counter, so a resumed run goes on where it was)."""

    def __init__(self, layer, steps):
        super().__init__()
        self.layer, self.steps = layer, max(1, int(steps))

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.layer.kl_weight.assign(min(1.0, step / self.steps))


class HeldOutScores(keras.callbacks.Callback):
    """After each epoch, the held-out reconstruction accuracy and KL (``heldout_scores``) go into the
    logs, so the history shows when the latent starts to carry the couplet."""

    def __init__(self, encoder, decoder, x, seed):
        super().__init__()
        self.encoder, self.decoder, self.x, self.seed = encoder, decoder, x, seed

    def on_epoch_end(self, epoch, logs=None):
        scores = heldout_scores(self.encoder, self.decoder, self.x, self.seed)
        if logs is not None:
            logs.update({k: scores[k] for k in ("heldout_recon_acc", "heldout_kl")})


class PrintCouplet(keras.callbacks.Callback):
    """The article's ``Evaluate``: one greedy couplet from a fixed draw of the prior after each epoch."""

    def __init__(self, poet_of_model, seed):
        super().__init__()
        self.poet_of_model, self.seed = poet_of_model, seed

    def on_epoch_end(self, epoch, logs=None):
        print(f"    {punctuate(self.poet_of_model().write(1, seed=self.seed)[0])}", flush=True)


"""## 3. Evaluation"""


def heldout_scores(encoder, decoder, x, seed):
    """Per held-out text: the reconstruction accuracy (characters right when the posterior mean is
    decoded greedily), the KL (closed form) and the negative ELBO (one draw of z); means."""
    rng = np.random.default_rng(seed)
    right, kls, nlls = [], [], []
    for i in range(0, len(x), 1000):
        chunk = x[i : i + 1000]
        z_mean, z_log_var = (keras.ops.convert_to_numpy(t) for t in encoder(chunk, training=False))
        kl = keras.ops.convert_to_numpy(gaussian_kl(z_mean, z_log_var))
        right.append(keras.ops.convert_to_numpy(decoder(z_mean, training=False)).argmax(-1) == chunk)
        z = (z_mean + np.exp(0.5 * z_log_var) * rng.standard_normal(z_mean.shape)).astype("float32")
        nll = keras.ops.convert_to_numpy(sequence_nll(keras.ops.convert_to_tensor(chunk), decoder(z, training=False)))
        kls.append(kl)
        nlls.append(nll + kl)
    return {
        "heldout_recon_acc": float(np.concatenate(right).mean()),
        "heldout_kl": float(np.concatenate(kls).mean()),
        "heldout_neg_elbo": float(np.concatenate(nlls).mean()),
    }


def sample_scores(poet, n, seed, prosody, training_lines, length):
    """1,000 greedy and 1,000 sampled poems (``SAMPLING``), each scored by ``metrics.score``; and ten
    greedy ones to show."""
    out, shown = {}, None
    for kind, options in (("greedy", {}), ("sampled", SAMPLING)):
        texts = poet.write(n, seed=seed, **options)
        for key, value in metrics.score(texts, prosody, training_lines, length).items():
            out[f"{kind}_{key}"] = value
        shown = shown or texts[:10]
    out["examples"] = [punctuate(t) for t in shown]
    return out


def real_scores(heldout, prosody, training_lines, length):
    """The same measures for the real held-out texts: what the tone and rhyme shares of real Tang
    poetry are under these rules, and how often a real line repeats one of the training set."""
    return {f"real_{k}": v for k, v in metrics.score(heldout, prosody, training_lines, length).items()}


def frequency_baselines(x, x_held, vocab_size):
    """-log p of the held-out texts (nats per text) under two models without a latent, fitted on the
    training ids ``x`` (add-one smoothing): every position drawn from the characters' frequencies
    (``unigram_nll``), and each position from its own frequencies (``position_unigram_nll``, the best
    a decoder that ignores z can do). A VAE's negative ELBO below the first has learnt the
    characters; below the second, its latent carries something about the text."""
    smoothed = lambda ids: np.log(np.bincount(ids, minlength=vocab_size) + 1.0) - np.log(len(ids) + vocab_size)
    overall = smoothed(x.ravel())
    by_position = [smoothed(x[:, t]) for t in range(x.shape[1])]
    return {
        "unigram_nll": float(-overall[x_held].sum(1).mean()),
        "position_unigram_nll": float(-sum(by_position[t][x_held[:, t]] for t in range(x.shape[1])).mean()),
    }


"""## 4. Training one variant with one seed"""


def train_seed(job, checkpoint):
    cfg, spec = job.config, job.spec
    corpus = spec["corpus"][cfg["unit"]]
    train, heldout, vocab = corpus["train"], corpus["heldout"], corpus["vocab"]
    x, x_held = data.encode_chars(train, vocab), data.encode_chars(heldout, vocab)
    print(
        f"    {len(train):,} training {cfg['unit']}s, {len(heldout):,} held out ({corpus['dropped']:,} more held-out "
        f"ones occur in training poems and are left out), {len(vocab):,} characters",
        flush=True,
    )
    with cli.distribution(spec["args"]):
        vae, encoder, decoder = build_vae(
            len(vocab), LENGTH[cfg["unit"]], cfg["latent"], cfg["encoder_blocks"], cfg["decoder_blocks"],
            cfg["free_bits"], job.seed,
        )  # fmt: skip
        vae.compile(
            optimizer=keras.optimizers.Adam(),
            loss=sequence_nll,
            # TensorFlow: 50 steps per call into an XLA-compiled loop (XLA is off by default on a CPU there)
            steps_per_execution=cli.steps_per_execution(50),
            jit_compile=True if keras.backend.backend() == "tensorflow" else "auto",
        )
        initial_epoch = checkpoint.restore(vae)
    if spec["summary"]:
        vae.summary()
    callbacks = [
        EpochTimer(),
        HeldOutScores(encoder, decoder, x_held, job.seed),
        PrintEpoch(keys=("loss", "val_loss", "heldout_kl", "heldout_recon_acc")),
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
    ]
    if cfg["anneal"]:
        steps = cfg["anneal"] * cfg["epochs"] * -(-len(x) // BATCH_SIZE)
        callbacks.insert(0, AnnealKL(vae.get_layer("kl"), steps))
    callbacks.insert(0, PrintCouplet(lambda: Poet(decoder, vocab), job.seed))
    vae.fit(
        **feed.arrays(x, x, batch_size=BATCH_SIZE, shuffle=True, seed=job.seed),
        epochs=cfg["epochs"],
        validation_data=feed.validation(x_held, x_held, batch_size=1000),
        validation_batch_size=1000,
        verbose=progress.fit_verbose(),
        initial_epoch=initial_epoch,
        callbacks=callbacks,
    )
    history = checkpoint.history
    if not np.isfinite(history["loss"][-1]):
        return {"heldout_recon_acc": None}, history

    poet = Poet(decoder, vocab)
    folder = spec["models"] / f"{job.experiment}-seed{job.seed}"
    poet.save(folder)
    metrics_ = heldout_scores(encoder, decoder, x_held, job.seed)
    metrics_.update(
        sample_scores(poet, cfg["samples"], job.seed, spec["prosody"], corpus["lines"], LENGTH[cfg["unit"]])
    )
    metrics_.update(corpus["real"])
    metrics_.update(
        {
            "epoch_time_s": float(np.median(history["epoch_time_s"])),
            "train_time_s": float(np.median(history["train_time_s"])),
            "params": vae.count_params(),
            "vocab_size": len(vocab),
            "train_texts": len(train),
            "heldout_texts": len(heldout),
        }
    )
    print(
        f"    held out: reconstruction accuracy {metrics_['heldout_recon_acc']:.3f}, KL {metrics_['heldout_kl']:.2f}, "
        f"negative ELBO {metrics_['heldout_neg_elbo']:.2f}; greedy: well-formed {metrics_['greedy_well_formed']:.3f}, "
        f"novel {metrics_['greedy_novel']:.3f}, distinct {metrics_['greedy_distinct']:.3f}, tone "
        f"{metrics_['greedy_tone']:.3f} (real {metrics_['real_tone']:.3f}), rhyme {metrics_['greedy_rhyme']:.3f} "
        f"(real {metrics_['real_rhyme']:.3f}); {metrics_['train_time_s']:.0f} s of training per epoch; model in "
        f"{runs.relative(folder)}",
        flush=True,
    )
    for text in metrics_["examples"][:5]:
        print(f"      {text}")
    return metrics_, history


def jobs(args, variants, corpus, prosody):
    mode = MODES[args.mode]
    out = []
    for name in variants:  # every seed of a variant before the next variant
        for seed in cli.seeds(args, mode["seeds"]):
            epochs = args.epochs or mode["epochs"] or FULL_EPOCHS[name]
            config = {
                "mode": args.mode,
                "variant": name,
                **VARIANTS[name],
                "hidden": HIDDEN,
                "epochs": epochs,
                "batch_size": BATCH_SIZE,
                "optimizer": "adam",
                "loss": "sequence_nll + KL",
                "poems": mode["poems"],
                "heldout": HELDOUT,
                "samples": mode["samples"],
                "sampling": SAMPLING,
                "distribute": args.distribute,
            }
            protocol = f"{args.mode}: {epochs} epoch{'s' * (epochs != 1)}, {mode['samples']} samples per decoding"
            headline = {
                "metric": "heldout_recon_acc",
                "label": "held-out reconstruction accuracy",
                "blog": None,
                "blog_source": BLOG_SOURCE,
            }
            spec = {
                "args": args,
                "corpus": corpus,
                "prosody": prosody,
                "models": runs.models_dir(args.out, ARTICLE),
                "summary": seed == args.seed and name == variants[0],
            }
            out.append(runs.Job(runs.experiment_name(name, args.mode), seed, config, headline, protocol, spec))
    return out


"""## 5. Table"""


def summary(records):
    print(
        "\n| variant | held-out recon. acc | held-out KL | held-out -ELBO | greedy: formed / novel / distinct / tone / "
        "rhyme | sampled: formed / novel / distinct / tone / rhyme | s/epoch | seeds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    by_variant = {}
    for r in records:
        by_variant.setdefault(r["experiment"], []).append(r)
    for name, rs in by_variant.items():
        col = lambda key, d=3, rs=rs: runs.format_mean_std([r["metrics"].get(key) for r in rs], d)
        shares = lambda kind: " / ".join(
            col(f"{kind}_{k}") for k in ("well_formed", "novel", "distinct", "tone", "rhyme")
        )
        print(
            f"| {name} | {col('heldout_recon_acc')} | {col('heldout_kl', 2)} | {col('heldout_neg_elbo', 2)} | "
            f"{shares('greedy')} | {shares('sampled')} | {col('train_time_s', 0)} | {len(rs)} |"
        )
    first = records[0]["metrics"] if records else {}
    if "real_tone" in first:
        print(
            f"\nreal held-out texts: tone {first['real_tone']:.3f}, rhyme {first['real_rhyme']:.3f}, "
            f"novel {first['real_novel']:.3f}; -log p of the held-out texts from the characters' frequencies alone "
            f"{first['unigram_nll']:.2f}, from each position's own frequencies {first['position_unigram_nll']:.2f}"
        )


def parser():
    """The command line (reproduce.py checks it before running anything)."""
    p = cli.parser(__doc__)
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=None,
        help="which variants (default: the article's recipe)",
    )
    return p


def main(argv=None):
    args = cli.parse(parser(), argv)
    mode = MODES[args.mode]
    variants = args.variants or mode["variants"]
    print(f"backend {keras.backend.backend()}, mode {args.mode}, variants {variants}, records in {args.out}")
    corpus, prosody = {}, None
    for unit in sorted({VARIANTS[v]["unit"] for v in variants}):
        texts = load_corpus(unit, mode["poems"])
        prosody = prosody or metrics.Prosody.from_poems(texts["train_poems"])  # the same split for both units
        x, x_held = (data.encode_chars(texts[k], texts["vocab"]) for k in ("train", "heldout"))
        corpus[unit] = {
            **texts,
            "real": {
                **real_scores(texts["heldout"], prosody, texts["lines"], LENGTH[unit]),
                **frequency_baselines(x, x_held, len(texts["vocab"])),
                "heldout_dropped": texts["dropped"],
            },
        }
    records = runs.run_jobs(ARTICLE, jobs(args, variants, corpus, prosody), args, train_seed)
    summary(records)
    report.print_judgement(CLAIM, records, ARTICLE, args.mode)
    return records


if __name__ == "__main__":
    cli.run(main)
