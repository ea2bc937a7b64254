"""Score trained segmenters, alone or as an ensemble, on a bakeoff test set (bakeoff P/R/F and
OOV/IV recall, crf/scoring.py), and record the result.

    python crf/evaluate.py runs/crf/strong-pku-seed0                      # one model
    python crf/evaluate.py runs/crf/strong-pku-seed{0,1,2} --name ensemble-strong
    python crf/evaluate.py runs/crf/strong-pku-seed{0,1,2} runs/crf/article-pku-seed{0,1,2} --name ensemble-all

Several folders make an ``Ensemble`` (crf/segment.py): the members' scores are added and decoded
once. With ``--name`` the scores go to ``runs/results/crf/<name>-<corpus>/seed0.json`` (with
``--out results``, to the reference that RESULTS.md shows); the models' folders are listed in the
record. ``crf/train.py --ensembles strong all`` scores the ensembles behind crf/README.md this way.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from crf.segment import Ensemble, Segmenter  # noqa: E402
from crf.train import ARTICLE, HEADLINE, evaluate, load_corpus  # noqa: E402
from utils import cli, runs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="model folders written by crf/train.py")
    p.add_argument("--corpus", choices=["pku", "msr"], default="pku")
    p.add_argument("--name", help="record the scores as <out>/crf/<name>-<corpus>/seed0.json")
    p.add_argument(
        "--out",
        type=Path,
        default=runs.USER_RUNS,
        help="records folder (default runs/results/; results/ is the reference)",
    )
    args = p.parse_intermixed_args(argv)  # options before, between or after the model folders
    if args.name is not None and (not args.name or Path(args.name).name != args.name or args.name in (".", "..")):
        p.error(f"--name {args.name!r} must be a plain name (it names a folder of records), without a path")
    if args.name and args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file, not a folder")
    try:
        segmenter = Ensemble.load(args.models) if len(args.models) > 1 else Segmenter.load(args.models[0])
    except (FileNotFoundError, runs.ModelFileError) as err:
        p.error(str(err))
    started = time.time()
    _, test, gold, training_words = load_corpus(args.corpus)
    scores = evaluate(segmenter.cut_lines, test, gold, training_words)
    print(
        f"{len(args.models)} model(s) on the {args.corpus.upper()} test set: F1 {scores['f1']:.4f}, "
        f"P {scores['precision']:.4f}, "
        f"R {scores['recall']:.4f}, OOV recall {scores['oov_recall']:.4f}, IV recall {scores['iv_recall']:.4f}, "
        f"{scores['chars_per_s']:,.0f} chars/s"
    )
    if args.name:
        config = {"mode": "evaluation", "corpus": args.corpus, "models": [m.name for m in args.models]}
        label = (
            f"{HEADLINE['label']}; {len(args.models)} trained models as one ensemble (ensembles were compared "
            "on this test set, see crf/README.md)"
            if len(args.models) > 1
            else HEADLINE["label"]
        )
        path = runs.save_result(
            args.out,
            ARTICLE,
            f"{args.name}-{args.corpus}",
            0,
            metrics={f"test_{k}": v for k, v in scores.items()},
            config=config,
            headline={**HEADLINE, "label": label},
            started=started,
        )
        print(f"recorded in {path}")
    return scores


if __name__ == "__main__":
    cli.run(main)
