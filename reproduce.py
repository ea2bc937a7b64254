"""Reproduce every article on this machine, and say how close each came.

    python reproduce.py                  quick mode: every article's claim in about 15 minutes on 2 CPU
                                         cores (one seed, shorter training), into runs/results/
    python reproduce.py --full           every experiment behind every README number (hours on a CPU;
                                         each seed is saved as it finishes, so rerunning resumes)
    python reproduce.py --only capsule crf
    python reproduce.py --smoke          seconds per article: checks that every script runs here (verdicts
                                         mean nothing)
    python reproduce.py --table-only     only rebuild RESULTS.md from the reference (results/)
    python reproduce.py --report-only    only judge the records already in runs/results/ (or --out) again
    python reproduce.py --reference      write into results/ (refresh the reference) and rebuild RESULTS.md

Each article's train.py runs in its own process (a clean Keras state) with the same backend
(``KERAS_BACKEND``) and data folder (``KEXUE_DATA``). Records go to runs/results/ (not committed);
the committed results/ are the reference and are only written with --reference. Afterwards the job
prints, per article, its claim and criterion, the blog's numbers, the reference, this run's numbers
and a verdict (does this run reproduce the claim?), and writes the same as runs/report.md.
Anything else on the command line goes to every train.py (e.g. --seeds 2, --force); every article's
command line is checked before any runs, and the records the report reads too, so a bad option or a
damaged record stops the job at once rather than after hours.
"""

import argparse
import datetime
import importlib
import subprocess
import sys
import time
from pathlib import Path

from utils import report, runs

REPO = Path(__file__).resolve().parent

ARTICLES = {
    "activations": {
        "title": "浅谈神经网络中激活函数的设计 (On designing activation functions)",
        "url": "https://kexue.fm/archives/4647",
        "full": [],
        "quick_s": 70,  # measured with `python reproduce.py` here (README), for the time estimate
    },
    "attention": {
        "title": "《Attention is All You Need》浅读（简介+代码） (A first reading of Attention is All You Need)",
        "url": "https://kexue.fm/archives/4765",
        "full": [],
        "quick_s": 270,
    },
    "capsule": {
        "title": "揭开迷雾，来一顿美味的Capsule盛宴 / 再来一顿贺岁宴：从K-Means到Capsule / "
        "三味Capsule：矩阵Capsule与EM路由 (Capsules, their K-means reading, and matrix capsules with EM routing)",
        "url": "https://kexue.fm/archives/4819",
        "full": [],
        "quick_s": 230,
    },
    "crf": {
        "title": "简明条件随机场CRF介绍（附带纯Keras实现） (A concise CRF, with a pure-Keras implementation)",
        "url": "https://kexue.fm/archives/5542",
        # every variant and ensemble in crf/README.md
        "full": [
            "--variant",
            "article",
            "bmes",
            "strong",
            "strong_bd",
            "strong_ema",
            "fast",
            "fast_deep",
            "fast_fine",
            "fast_e32",
            "fast_deep_d3",
            "fast_deep_cos",
            "fast_deep_cos2",
            "fast_deep_d1",
            "fast_deep_w160",
            "fast_pre",
            "fast_lstm",
            "fast_latest",
            "fast_deep_latest",
            "fast_small",
            "fast_tiny",
            "fast_refit",
            "fast_deep_refit",
            "fast_small_refit",
            "fast_deep_m0",
            "fast_deep_m1",
            "fast_deep_m2",
            "fast_deep_kd",
            "fast_deep_kd1",
            "fast_deep_kd1_refit",
            "fast_deep_f0",
            "fast_deep_f1",
            "fast_deep_f2",
            "fast_deep_oof",
            "fast_deep_swap",
            "fast_deep_kd1_swap",
            "fast_deep_kd1_swap_refit",
            "--ensembles",
            "strong",
            "all",
            "fast_deep_m",
        ],
        "quick_s": 100,
    },
    "vae": {
        "title": "变分自编码器（一）：原来是这么一回事 (Variational autoencoders (1): so that is what they are)",
        "url": "https://kexue.fm/archives/5253",
        "full": [],
        "quick_s": 75,
    },
    "poetry": {
        "title": "基于CNN和VAE的作诗机器人：随机成诗 (A poem generator from a CNN and a VAE)",
        "url": "https://kexue.fm/archives/5332",
        # the variants and the quatrain model of poetry/README.md, besides the article's recipe
        "full": ["--variants", "article", "anneal", "free_bits", "deeper", "wide", "quatrain"],
        "quick_s": 230,
    },
}


def claim(name):
    """The article's ``CLAIM`` (its train.py states it; importing it loads Keras once, trains nothing)."""
    return importlib.import_module(f"{name}.train").CLAIM


def expected_seconds(name, mode):
    """What an article's run took on our machines: the quick mode's measured time, or the sum of the
    reference records' wall times for the full protocol (None for smoke runs)."""
    if mode == "quick":
        return ARTICLES[name]["quick_s"]
    if mode == "full":
        return sum(r.get("wall_time_s") or 0 for r in runs.load_results(runs.REFERENCE, name)) or None
    return None


def train_args(name, mode, extra):
    """The command line of an article's train.py in this job."""
    return [*(ARTICLES[name]["full"] if mode == "full" else [f"--{mode}"]), *extra]


def check_train_args(names, mode, extra):
    """The first article whose train.py would refuse its command line, with the reason; None if every
    one accepts it. Checked before anything runs: a bad option must not cost the articles before it."""
    from utils import cli

    for name in names:
        problem = cli.check(importlib.import_module(f"{name}.train").parser(), train_args(name, mode, extra))
        if problem:
            return name, problem
    return None


def run_article(name, mode, extra, position, names, started, spent):
    """Run one article's train.py; print where the job is and an estimate of what remains (the
    expected times of the articles left, scaled by how this machine did on those done)."""
    script = f"{name}/train.py"
    command = [sys.executable, script, *train_args(name, mode, extra)]
    elapsed = time.time() - started
    expected = [expected_seconds(n, mode) for n in names]
    estimate = ""
    if None not in expected:
        # how this machine compares, from the articles that trained (not those whose records were reused)
        trained = [(spent[n], e) for n, e in zip(names[:position], expected) if spent.get(n, 0) > 0.2 * e]
        scale = sum(t for t, _ in trained) / sum(e for _, e in trained) if trained else 1.0
        estimate = f", about {runs.duration(sum(expected[position:]) * scale)} left"
    print(
        f"\n=== [{position + 1}/{len(names)}] {name}: {' '.join(command[1:])} "
        f"({runs.duration(elapsed)} so far{estimate})",
        flush=True,
    )
    begin = time.time()
    code = subprocess.run(command, cwd=REPO).returncode
    spent[name] = time.time() - begin
    return code


def write_report(names, out, reference_dir, mode, path, spent, failed):
    """The report: per article, the claim, its numbers (blog, reference, this run) and the verdict."""
    env = {}
    lines = [
        f"# Reproduction report ({mode} mode)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, code {runs.describe_version(runs.code_version())}, "
        f"{runs.machine()}. Records: `{runs.relative(out)}`. Reference: `results/` (the full protocol, committed).",
    ]
    verdicts = {}
    for name in names:
        records = runs.load_results(out, name)
        if records:
            env = {k: records[-1].get(k) for k in ("backend", "device")}
        reference = runs.load_results(reference_dir, name)
        verdict, table = claim(name).judge(records, reference, mode)
        if name in failed:
            verdict = f"{verdict} (train.py failed: see its output)"
        verdicts[name] = verdict
        took = f", {runs.duration(spent[name])}" if name in spent else ""
        lines += ["", f"## {name}: {ARTICLES[name]['title']}", "", f"{ARTICLES[name]['url']}{took}", "", *table]
    if env:
        lines[2] += f" Backend {env['backend']}, device {env['device']}."
    if spent:
        lines[2] += f" Training took {runs.duration(sum(spent.values()))} in all."
    lines += ["", "## Verdicts", "", *[f"- {n}: {v}" for n, v in verdicts.items()]]
    text = "\n".join(lines) + "\n"
    runs.write_text_atomic(path, text)
    return text, verdicts


def write_results_md(path, reference_dir=runs.REFERENCE):
    """RESULTS.md: a table over the reference records (results/), per article."""
    lines = [
        "# Results",
        "",
        f"Generated by `python reproduce.py --table-only` from the reference records in `results/` "
        f"({datetime.date.today().isoformat()}). Each row is one experiment: its headline metric as the "
        "mean ± sample std over seeds, the article's own number where it published one, what ran, every "
        "command behind the row, and where and with which code it was measured. Per-seed details (full "
        "config, history, versions, wall time) are in `results/<article>/<experiment>/seed<k>.json`. "
        "`python reproduce.py` compares your own run with these (runs/report.md). Records written before "
        "2026-11-30 carry neither a protocol nor a code version (shown as `full` and `not recorded`); the next "
        "refresh of the reference (`python reproduce.py --full --reference --force`) records both.",
    ]
    for name, info in ARTICLES.items():
        records = runs.load_results(reference_dir, name)
        lines += ["", f"## {name}: {info['title']}", "", f"Article: {info['url']}. Details: `{name}/README.md`.", ""]
        lines += report.experiment_table(records) if records else ["No reference records yet."]
    text = "\n".join(lines) + "\n"
    runs.write_text_atomic(path, text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--full", action="store_true", help="every experiment behind the READMEs, instead of quick mode")
    modes.add_argument("--smoke", action="store_true", help="seconds per article: checks that every script runs")
    p.add_argument("--only", nargs="+", choices=sorted(ARTICLES), help="run only these articles")
    p.add_argument("--table-only", action="store_true", help="do not train; rebuild RESULTS.md from results/")
    p.add_argument("--report-only", action="store_true", help="do not train; write the report from the records there")
    p.add_argument(
        "--reference", action="store_true", help="write into results/ (the reference), then rebuild RESULTS.md"
    )
    p.add_argument("--out", type=Path, default=None, help="records folder (default: runs/results/)")
    p.add_argument(
        "--reference-dir", type=Path, default=runs.REFERENCE, help="the reference records (default: results/)"
    )
    p.add_argument("--report", type=Path, default=REPO / "runs" / "report.md", help="where the report goes")
    p.add_argument("--results-md", type=Path, default=REPO / "RESULTS.md", help="where --table-only writes the table")
    args, extra = p.parse_known_args(argv)  # anything else goes to every train.py (e.g. --seeds 2)
    if args.reference and args.out is not None:
        p.error("--reference writes to results/; drop --out")
    names = args.only or list(ARTICLES)
    mode = "full" if args.full else "smoke" if args.smoke else "quick"
    if args.reference and mode != "full":
        p.error("the reference holds the full protocol: use --full --reference")
    trains = not (args.table_only or args.report_only)
    if extra and not trains:
        which = "--table-only" if args.table_only else "--report-only"
        p.error(f"{' '.join(extra)}: not an option of reproduce.py, and {which} runs no train.py to pass it to")
    for option, path in (("--report", args.report), ("--results-md", args.results_md)):
        if path.is_dir():
            p.error(f"{option} {path} is a folder: give a file name")
    if not args.reference_dir.is_dir():
        p.error(f"--reference-dir {args.reference_dir} is not a folder (the reference records are in results/)")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file, not a folder")

    try:
        if args.table_only:
            print(write_results_md(args.results_md, args.reference_dir))
            print(f"wrote {args.results_md}")
            return
        out = runs.REFERENCE if args.reference else (args.out or runs.USER_RUNS).resolve()
        extra += ["--reference"] if args.reference else (["--out", str(out)] if args.out else [])
        refused = check_train_args(names, mode, extra) if trains else None
        if refused:
            p.error(f"{refused[0]}/train.py would refuse its command line ({refused[1]}); nothing was run")
        for name in names:  # the report reads these at the end: a record it cannot read stops the job now
            runs.load_results(args.reference_dir, name)
            if "--force" not in extra:  # (with --force, train.py replaces its own unreadable records)
                runs.load_results(out, name)
        failed, spent, started = [], {}, time.time()
        for position, name in enumerate([] if args.report_only else names):
            if run_article(name, mode, extra, position, names, started, spent) != 0:
                failed.append(name)
        text, verdicts = write_report(names, out, args.reference_dir, mode, args.report, spent, failed)
        print("\n" + text + f"\nreport written to {args.report} ({runs.duration(time.time() - started)} in all)")
        if args.reference:
            write_results_md(args.results_md, args.reference_dir)
            print(f"rebuilt {args.results_md} from the reference")
    except runs.RecordError as err:
        sys.exit(f"reproduce.py: {err}")
    if failed:
        sys.exit(f"these articles failed: {', '.join(failed)} (see their output above)")


if __name__ == "__main__":
    main()
