"""What each article claims, how a run is judged against it, and the tables that say so.

Each ``<article>/train.py`` states its headline claim as a ``Claim``: the numbers it rests on
(``Row``: an experiment's metric, with the blog's value where the article published one) and the
criterion, in code (``holds``) and in words. ``Claim.judge`` reads the records of one run and of the
reference and returns the verdict with a markdown table: the blog's number, the reference (the full
protocol, mean ± std over its seeds), this run's number (with what the run was), and whether this
run reproduces the claim. ``reproduce.py`` prints one per article and writes them to a report file;
each train.py prints its own at the end.
"""

from collections.abc import Callable
from dataclasses import dataclass

from utils import runs

REPRODUCED, NOT_REPRODUCED, INCOMPLETE = "reproduced", "NOT reproduced", "incomplete"
MISSING = object()  # a number a record does not have


@dataclass
class Row:
    """One number a claim rests on: ``metric`` of experiment ``experiment`` (the base name; the quick
    mode's records are ``<experiment>-quick``), called ``key`` in ``Claim.holds``. ``metric`` is a key
    of the record's metrics, or a function of the record (e.g. a value from its history)."""

    key: str
    experiment: str
    metric: str | Callable
    label: str
    blog: float | None = None
    digits: int = 4

    def value(self, record):
        """The number in ``record``, None if it diverged (NaN is stored as null), ``MISSING`` if the
        record has no such number (e.g. a run with fewer epochs)."""
        if not callable(self.metric):
            return record["metrics"].get(self.metric, MISSING)
        try:
            return self.metric(record)
        except (KeyError, IndexError, TypeError):
            return MISSING


@dataclass
class Claim:
    """An article's headline claim.

    Attributes:
        statement: the claim, as the article makes it.
        criterion: how one run is judged, in words (the same test as ``holds``).
        rows: the numbers the claim rests on.
        holds: ``{row key: mean over the run's seeds} -> bool``.
        blog_source: where the blog column comes from.
    """

    statement: str
    criterion: str
    rows: list
    holds: Callable
    blog_source: str = ""

    def values(self, records, mode):
        """``{row key: list of per-seed values}`` from one run's records (mode ``full`` or ``quick``)."""
        out = {}
        for row in self.rows:
            name = runs.experiment_name(row.experiment, mode)
            values = [row.value(r) for r in records if r["experiment"] == name]
            out[row.key] = [v for v in values if v is not MISSING]
        return out

    def verdict(self, records, mode):
        """REPRODUCED, NOT_REPRODUCED or INCOMPLETE (a number the claim needs is missing or diverged)."""
        means = {key: runs.mean_std(values)[0] for key, values in self.values(records, mode).items()}
        if any(mean is None for mean in means.values()):
            return INCOMPLETE
        return REPRODUCED if self.holds(means) else NOT_REPRODUCED

    def judge(self, records, reference, mode):
        """``(verdict, markdown lines)``: the claim, the criterion, a table of every row (blog,
        reference, this run) and the verdict."""
        verdict = self.verdict(records, mode)
        run_values, ref_values = self.values(records, mode), self.values(reference, "full")
        names = {runs.experiment_name(row.experiment, mode) for row in self.rows}
        used = [r for r in records if r["experiment"] in names]
        protocols = sorted({r.get("protocol", "") for r in used})
        versions = sorted({runs.describe_version(r.get("code_version")) for r in used})
        current = runs.describe_version(runs.code_version())
        lines = [
            f"Claim: {self.statement}",
            f"Criterion: {self.criterion}",
            "",
            "| number | blog | reference (full protocol) | this run |",
            "|---|---|---|---|",
        ]
        for row in self.rows:
            blog = "-" if row.blog is None else f"{row.blog:g}"
            lines.append(
                f"| {row.label} | {blog} | {_cell(ref_values[row.key], row.digits)} | "
                f"{_cell(run_values[row.key], row.digits)} |"
            )
        lines += ["", f"This run: {'; '.join(p for p in protocols if p) or 'no records'}."]
        if used:
            other = "" if versions == [current] else f" (this checkout is {current}: --force reruns them with it)"
            lines.append(f"Code of this run's records: {', '.join(versions)}{other}.")
        if self.blog_source:
            lines.append(f"Blog column: {self.blog_source}.")
        lines += ["", f"**Verdict: {verdict}**"]
        return verdict, lines


def print_judgement(claim, records, article, mode):
    """What every train.py prints last: ``claim`` judged on this run's records against the reference
    (``results/``). Returns the verdict."""
    verdict, lines = claim.judge(records, runs.load_results(runs.REFERENCE, article), mode)
    print("\n" + "\n".join(lines), flush=True)
    return verdict


def _cell(values, digits):
    finite = [v for v in values if v is not None]
    if not values:
        return "not measured"
    if not finite:
        return "diverged"
    return f"{runs.format_mean_std(values, digits)} ({len(values)} seed{'s' if len(values) > 1 else ''})"


# --------------------------------------------------------------------------------------------------
# RESULTS.md: a table over the reference records


def experiment_table(records):
    """Markdown rows, one per experiment: the headline metric, the blog's number, ours (mean ± std),
    the seeds, what ran, every distinct command behind the row, the dates, the machine and the code
    version."""
    rows = [
        "| experiment | metric | blog | ours (mean ± std) | seeds | protocol | commands | date | machine | code |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    experiments = {}
    for r in records:
        experiments.setdefault(r["experiment"], []).append(r)
    for experiment, rs in experiments.items():
        head = rs[0].get("headline") or {}
        metric = head.get("metric")
        blog = head.get("blog")
        dates = sorted({r["date"] for r in rs})
        date = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        first = rs[0]
        machine = (
            f"{first['machine']}; {first['device']}; {first['backend']} {first['versions'].get(first['backend'], '')}"
        )
        commands = "<br>".join(f"`{c}`" for c in sorted({r["command"] for r in rs}))
        protocols = "; ".join(sorted({r.get("protocol") or r["config"].get("mode", "") for r in rs}))
        versions = ", ".join(sorted({runs.describe_version(r.get("code_version")) for r in rs}))
        seeds = ",".join(str(r["seed"]) for r in rs)
        rows.append(
            f"| {experiment} | {head.get('label', metric)} | {'none' if blog is None else blog} | "
            f"{runs.format_mean_std([r['metrics'].get(metric) for r in rs])} | {len(rs)} ({seeds}) | "
            f"{protocols} | {commands} | {date} | {machine} | {versions} |"
        )
    sources = sorted({(r.get("headline") or {}).get("blog_source") for r in records} - {None})
    return rows + [""] + [f"Blog column: {source}." for source in sources]
