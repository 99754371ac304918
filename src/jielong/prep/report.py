"""The report of a `jielong data clean` run: a per-step table, report.md and charts.

    jielong data stats runs/data     # prints the table, rewrites runs/data/report.md + charts/

Everything comes from OUT/stats.json, which the run writes: per step the documents and
characters that came out and the documents dropped by reason; length histograms of the
input and the output (bins of powers of two); the language and script mix; the
de-duplication counts.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.artist import setp
from matplotlib.figure import Figure  # drawn without pyplot: no backend, no global figures

from jielong.files import atomic_path, write_text


def _reasons(stats: dict) -> dict[str, int]:
    total: dict[str, int] = {}
    for row in stats["steps"]:
        for reason, n in row.get("dropped", {}).items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _step_of(stats: dict, reason: str) -> str:
    return next((r["step"] for r in stats["steps"] if reason in r.get("dropped", {})), "?")


def _advice(stats: dict, step: str, reason: str) -> str:
    """What would keep the documents a step dropped for `reason`."""
    preset = stats.get("options", {}).get("quality_preset", "web")
    if step in ("quality", "repetition"):
        if preset == "web":
            return ("the web preset's Gopher/C4/FineWeb rules are for crawled pages; "
                    "`--quality_preset literature` keeps poems, lyrics, classical prose and other "
                    f"short complete texts (or `--skip {step}`)")
        return f"`--skip {step}` turns the {step} rules off"
    if reason.startswith("lang_"):
        return f"`--languages` leaves {reason[5:]} out; add it, or leave the option off to keep every language"
    if reason.startswith("harmful_"):
        return ("each dropped document's `metadata.harmful` names the terms that matched; "
                "`--skip harmful` turns the step off")
    if reason in ("exact_duplicate", "near_duplicate"):
        return "the input repeats itself; `--skip exact_dedup near_dedup` keeps the copies"
    if reason in ("unreadable", "no_text"):
        return (f"`dropped/{reason}.jsonl` names each file:line and why; `--field NAME` if the "
                "text is under another field")
    if reason == "low_quality":
        return "a lower `--min_quality` keeps more"
    return f"see `dropped/{reason}.jsonl`"


def drop_note(stats: dict, most: float = 0.5) -> str | None:
    """One line when a run dropped more than `most` of what it read: which rule dropped the
    most, and which preset or option would keep those documents. None otherwise."""
    read = stats["steps"][0]["docs"]
    kept = stats.get("output", {}).get("unique_docs", stats["steps"][-1]["docs"])
    reasons = _reasons(stats)
    if not read or kept >= (1 - most) * read or not reasons:
        return None
    reason, n = next(iter(reasons.items()))
    step = _step_of(stats, reason)
    return (f"note: {_pct(read - kept, read)} of the {read:,} documents read were dropped, "
            f"most by the {step} step's `{reason}` rule ({n:,}, {_pct(n, read)}); "
            f"{_advice(stats, step, reason)}.")


def table_rows(stats: dict) -> list[list[str]]:
    rows = []
    for r in stats["steps"]:
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(r["dropped"].items(), key=lambda kv: -kv[1]))
        if r.get("added"):
            dropped = f"+{r['added']:,} copies"
        secs = r.get("seconds")
        rows.append([r["step"], "" if r["docs_in"] is None else f"{r['docs_in']:,}", f"{r['docs']:,}",
                     _pct(r["docs"], r["docs_in"]) if r["docs_in"] is not None else "",
                     f"{r['chars']:,}", f"{secs:.2f}" if secs else "", dropped])
    return rows


HEAD = ["step", "docs in", "docs out", "kept", "chars out", "seconds", "dropped (by reason)"]


def format_table(stats: dict) -> str:
    rows = [HEAD] + table_rows(stats)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD) - 1)]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:], strict=True)]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
        if j == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _bin_label(k: int) -> str:
    if k == 0:
        return "0"
    lo = 2 ** (k - 1)
    return f"{lo:,}+" if lo >= 1024 else str(lo)


def _mixes(stats: dict) -> list[tuple[str, dict, dict]]:
    """(key, as detected by the language step, in the output) for lang and script."""
    return [(k, stats.get("input", {}).get(k) or {}, stats.get("output", {}).get(k) or {})
            for k in ("lang", "script")]


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def charts(out: Path, stats: dict) -> dict[str, Path]:
    """PNG charts under OUT/charts/; returns {name: path}."""
    d = out / "charts"
    d.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    steps = stats["steps"]
    names = [r["step"] for r in steps]

    fig = Figure(figsize=(8, 6), dpi=110)
    a1, a2 = fig.subplots(2, 1, sharex=True)
    a1.bar(names, [r["docs"] for r in steps], color="tab:blue")
    a1.set(ylabel="documents", title="documents and characters after each step")
    a2.bar(names, [r["chars"] for r in steps], color="tab:orange")
    a2.set(ylabel="characters")
    for ax in (a1, a2):
        ax.grid(alpha=0.3, axis="y")
    setp(a2.get_xticklabels(), rotation=30, ha="right")
    made["funnel"] = d / "funnel.png"
    _save(fig, made["funnel"])

    hin = {int(k): v for k, v in stats.get("input", {}).get("length_hist", {}).items()}
    hout = {int(k): v for k, v in stats.get("output", {}).get("length_hist", {}).items()}
    if hin or hout:
        ks = list(range(min([*hin, *hout]), max([*hin, *hout]) + 1))
        fig = Figure(figsize=(8, 4), dpi=110)
        ax = fig.subplots()
        x = range(len(ks))
        ax.bar([i - 0.2 for i in x], [hin.get(k, 0) for k in ks], 0.4, label="read")
        ax.bar([i + 0.2 for i in x], [hout.get(k, 0) for k in ks], 0.4, label="output")
        ax.set_xticks(list(x), [_bin_label(k) for k in ks], rotation=45, ha="right")
        ax.set(xlabel="document length (characters, from)", ylabel="documents",
               title="document lengths")
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
        made["lengths"] = d / "lengths.png"
        _save(fig, made["lengths"])

    mixes = _mixes(stats)
    if any(a or b for _, a, b in mixes):
        fig = Figure(figsize=(8, 3.5), dpi=110)
        axes = fig.subplots(1, 2)
        for ax, (key, before, after) in zip(axes, mixes, strict=True):
            names = sorted(set(before) | set(after), key=lambda k: -before.get(k, after.get(k, 0)))
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], [before.get(k, 0) for k in names], 0.4, label="detected")
            ax.bar([i + 0.2 for i in x], [after.get(k, 0) for k in names], 0.4, label="output")
            ax.set_xticks(list(x), names)
            ax.set(title={"lang": "language", "script": "Chinese script"}[key], ylabel="documents")
            ax.grid(alpha=0.3, axis="y")
            ax.legend()
        made["mix"] = d / "mix.png"
        _save(fig, made["mix"])

    reasons = list(_reasons(stats).items())[:15]
    if reasons:
        fig = Figure(figsize=(8, 0.4 * len(reasons) + 1.2), dpi=110)
        ax = fig.subplots()
        ax.barh([k for k, _ in reasons][::-1], [v for _, v in reasons][::-1], color="tab:red")
        ax.set(xlabel="documents dropped", title="top drop reasons")
        ax.grid(alpha=0.3, axis="x")
        made["reasons"] = d / "drop_reasons.png"
        _save(fig, made["reasons"])
    return made


def write_report(out: str | Path, stats: dict) -> Path:
    """OUT/report.md with its charts; returns the report's path."""
    out = Path(out)
    made = charts(out, stats)
    first, last = stats["steps"][0], stats["steps"][-1]
    o = stats.get("output", {})
    lines = ["# Data cleaning report", "",
             f"{first['docs']:,} documents read ({first['chars']:,} characters) from "
             f"{len(stats.get('inputs', []))} files; {o.get('docs', last['docs']):,} written "
             f"({o.get('chars', last['chars']):,} characters, {_pct(o.get('chars', last['chars']), first['chars'])} "
             f"of the characters read) to {len(o.get('shards', []))} {o.get('format', '')} "
             f"shard{'s' * (len(o.get('shards', [])) != 1)} in `data/`.",
             "", "## Steps", "", "Seconds are the time spent inside each step, summed over the tasks "
             "that ran it (the readers' time is not tracked).", "", _md_table(HEAD, table_rows(stats)), ""]
    if "funnel" in made:
        lines += ["![documents and characters per step](charts/funnel.png)", ""]
    reasons = _reasons(stats)
    note = drop_note(stats)
    if note:
        lines[3:3] = ["", "**" + note[0].upper() + note[1:] + "**"]
    if reasons:
        lines += ["## Drop reasons", "", "The dropped documents are in `dropped/<reason>.jsonl`, "
                  "each with its reason (`filter_reason`) and the step that dropped it (`dropped_by`).", "",
                  _md_table(["reason", "documents", "share of read"],
                            [[k, f"{v:,}", _pct(v, first["docs"])] for k, v in reasons.items()]), ""]
        if "reasons" in made:
            lines += ["![top drop reasons](charts/drop_reasons.png)", ""]
    dd = stats.get("dedup")
    if dd:
        lines += ["## De-duplication", "",
                  f"{dd.get('exact_duplicate', 0):,} exact and {dd.get('near_duplicate', 0):,} near "
                  f"duplicates removed; {dd.get('clusters', 0):,} clusters of more than one document "
                  f"(MinHash LSH threshold ≈ {dd.get('threshold', 0)} Jaccard). Each survivor carries "
                  "`dup_cluster_size`, the number of documents it stands for.", ""]
    if "lengths" in made:
        lines += ["## Lengths", "", "![document lengths](charts/lengths.png)", ""]
    mixes = _mixes(stats)
    if any(a or b for _, a, b in mixes):
        lines += ["## Language and script", ""]
        for key, before, after in mixes:
            for when, mix in (("detected", before), ("output", after)):
                if mix:
                    total = sum(mix.values())
                    lines.append(f"- {key}, {when}: " + ", ".join(
                        f"{k} {v:,} ({_pct(v, total)})" for k, v in sorted(mix.items(), key=lambda kv: -kv[1])))
        lines += ["", "![language and script mix](charts/mix.png)", ""] if "mix" in made else [""]
    opts = stats.get("options", {})
    if opts:
        lines += ["## Settings", "", "```", *(f"{k}: {v}" for k, v in opts.items()), "```", ""]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
