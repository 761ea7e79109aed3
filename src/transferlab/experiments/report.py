"""Study and comparison reports: ``report.md`` and one self-contained ``report.html``.

The HTML file needs nothing but itself: CSS is inline, every plot is a base64 PNG ``data:``
URI, there is no script and no external link, so it opens offline, attaches to an e-mail and
archives as one file. ``transferlab report DIR`` rebuilds both from any study folder (its
``study.json`` + ``results.jsonl``) or comparison folder (``results.jsonl`` alone).

Tables follow the paper's layout (rows and columns as the paper has them). Each score is the
mean ± sample std over seeds; the best value of a column is bold only when it is ahead of the
runner-up by more than the two standard deviations together (with one seed there is no spread,
so nothing is bold). Cost columns add pre-training and fine-tuning of a row, per seed, averaged.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..utils import atomic_write_text
from ..evaluation.metrics import higher_is_better, mean_std

COSTS = (("flops", "FLOPs"), ("minutes", "minutes"), ("energy_kwh", "kWh"), ("co2e_kg", "CO2e (kg)"),
         ("price_usd", "$"))


@dataclass
class Table:
    """A rendered table: header, string cells, and which cells are bold."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" if j == 0 else "--:" for j in range(len(self.header))) + "|"]
        for i, r in enumerate(self.rows):
            lines.append("| " + " | ".join(f"**{c}**" if (i, j) in self.bold else c for j, c in enumerate(r)) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join((f"<td><b>{e(c)}</b></td>" if (i, j) in self.bold else f"<td>{e(c)}</td>")
                                         for j, c in enumerate(r)) + "</tr>" for i, r in enumerate(self.rows))
        note = f"<p class='note'>{e(self.note)}</p>" if self.note else ""
        return f"<h3>{e(self.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def best_beyond_spread(cells: Sequence[tuple[float, float, int] | None], higher: bool) -> int | None:
    """Index of the best (mean, std, n) when it leads the runner-up by more than both stds; else None."""
    ok = [(i, c) for i, c in enumerate(cells) if c is not None and math.isfinite(c[0])]
    if len(ok) < 2:
        return None
    ok.sort(key=lambda ic: ic[1][0], reverse=higher)
    (i1, (m1, s1, n1)), (_, (m2, s2, n2)) = ok[0], ok[1]
    if n1 < 2 or n2 < 2:  # one seed: no spread to be ahead of
        return None
    return i1 if abs(m1 - m2) > s1 + s2 else None


def _ms(mean: float, std: float, n: int, digits: int = 4) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}g} ± {std:.2g}" if n > 1 else f"{mean:.{digits}g}"


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.2e}" if abs(x) >= 1e5 or abs(x) < 1e-3 else f"{x:.3g}"


# ------------------------------------------------------------------------------ study tables
def study_tables(plan: Any, rows: list[dict[str, Any]]) -> tuple[list[Table], dict[str, list[dict[str, Any]]],
                                                                 dict[str, dict[str, Any]]]:
    """The study's table(s), the per-task compare summaries and the per-row totals."""
    from .tables import summarize

    study, s = plan.study, plan.setting
    summaries = {t: summarize(rows, plan.compare_config(t)) for t in s.tasks}
    specs = {r.name: plan.row_dir(r).name for r in plan.rows}
    lm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r.get("task") == "lm" and specs.get(r["method"]) == r["spec"] and int(r["seed"]) in s.seeds:
            lm.setdefault(r["method"], {})[int(r["seed"])] = r  # a later row wins
    totals: dict[str, dict[str, Any]] = {}
    for row in plan.rows:
        tot: dict[str, Any] = {}
        pre = list(lm.get(row.name, {}).values())
        gs = [g for t in s.tasks for g in summaries[t] if g["method"] == row.name]
        secs = sum(g["train_seconds"] for g in gs) + (sum(p["train_seconds"] for p in pre) / len(pre) if pre else 0.0)
        tot["minutes"] = secs / 60
        for key, _ in COSTS:
            if key == "minutes":
                continue
            parts = [g.get(key) for g in gs]
            pv = [p.get("cost", {}).get(key) for p in pre]
            if gs and all(isinstance(v, (int, float)) for v in parts) and (not pre or all(isinstance(v, (int, float)) for v in pv)):
                tot[key] = sum(parts) + (sum(pv) / len(pv) if pv else 0.0)
            elif not gs and pv and all(isinstance(v, (int, float)) for v in pv):
                tot[key] = sum(pv) / len(pv)
        ppl = [p["val_ppl"] for p in pre if isinstance(p.get("val_ppl"), (int, float))]
        if ppl:
            m, sd = mean_std(ppl)
            tot["ppl"] = (m, sd, len(ppl))
        tot["seconds"] = secs
        totals[row.name] = tot

    def cell(task: str, name: str, size: int | None) -> tuple[float, float, int] | None:
        for g in summaries[task]:
            if g["method"] == name and (size is None or g["train_size"] == str(size)):
                return (g["mean"], g["std"], g["n"])
        return None

    def metric(task: str) -> str:
        from ..finetune.metrics import primary_metric
        from .studies import TASK_TYPES

        return primary_metric(TASK_TYPES[task])

    tables = []
    descr = list(dict.fromkeys(k for r in plan.rows for k in r.cols))
    cost_head = [h for _, h in COSTS]
    if study.layout == "curve":
        for t in s.tasks:
            sizes = plan.sizes()
            tab = Table(f"{study.title}: {t} ({metric(t)}, test)", ["method"] + [f"n={n}" for n in sizes] + cost_head)
            grid = [[cell(t, r.name, n) for n in sizes] for r in plan.rows]
            for r, cells in zip(plan.rows, grid):
                tab.rows.append([r.name] + [("-" if c is None else _ms(*c)) for c in cells]
                                + [_num(totals[r.name].get(k)) for k, _ in COSTS])
            for j, _ in enumerate(sizes):
                b = best_beyond_spread([g[j] for g in grid], higher_is_better(metric(t)))
                if b is not None:
                    tab.bold.add((b, 1 + j))
            tab.note = _note(s)
            tables.append(tab)
        return tables, summaries, totals
    header = ["row"] + descr + [f"{t} ({metric(t)})" for t in s.tasks] + (["LM ppl"] if study.lm_ppl else [])
    if study.vanilla:
        header.append(f"helps on (of {len(s.tasks)})")
    header += cost_head
    tab = Table(f"{study.title} ({study.paper})", header)
    grid = [[cell(t, r.name, None) for t in s.tasks] for r in plan.rows]
    vi = next((i for i, r in enumerate(plan.rows) if r.name == study.vanilla), None)
    for i, (r, cells) in enumerate(zip(plan.rows, grid)):
        line = [r.name] + [r.cols.get(k, "") for k in descr]
        line += [("n/a" if not r.fits(_tt(t)) else "-" if c is None else _ms(*c)) for t, c in zip(s.tasks, cells)]
        if study.lm_ppl:
            p = totals[r.name].get("ppl")
            line.append("-" if p is None else _ms(*p, digits=4))
        if study.vanilla:
            line.append("-" if i == vi or vi is None else str(helps(cells, grid[vi], [metric(t) for t in s.tasks])))
        line += [_num(totals[r.name].get(k)) for k, _ in COSTS]
        tab.rows.append(line)
    off = 1 + len(descr)
    for j, t in enumerate(s.tasks):
        b = best_beyond_spread([g[j] for g in grid], higher_is_better(metric(t)))
        if b is not None:
            tab.bold.add((b, off + j))
    if study.lm_ppl:
        b = best_beyond_spread([totals[r.name].get("ppl") for r in plan.rows], False)
        if b is not None:
            tab.bold.add((b, off + len(s.tasks)))
    tab.note = _note(s)
    tables.append(tab)
    return tables, summaries, totals


def helps(cells: Sequence[tuple[float, float, int] | None], vanilla: Sequence[tuple[float, float, int] | None],
          metrics: Sequence[str]) -> int:
    """Tasks where ``cells`` beat ``vanilla`` by more than both seed stds together."""
    n = 0
    for c, v, m in zip(cells, vanilla, metrics):
        if c is None or v is None or c[2] < 2 or v[2] < 2:
            continue
        d = (c[0] - v[0]) if higher_is_better(m) else (v[0] - c[0])
        n += d > c[1] + v[1]
    return n


def _tt(task: str) -> str:
    from .studies import TASK_TYPES

    return TASK_TYPES[task]


def _note(s: Any) -> str:
    budget = f"{s.pretrain_steps} steps" if s.pretrain_steps else f"{s.pretrain_minutes:g} minutes"
    return (f"Mean ± sample std over {len(s.seeds)} seed(s) (test split, model chosen on validation); "
            f"pre-training {budget} per row and seed, batch {s.batch_size} x {s.seq_len} tokens; "
            f"fine-tuning {json.dumps(s.finetune, sort_keys=True)}. Bold: ahead of the runner-up beyond the "
            "seed spread (never with one seed). Cost: pre-training + fine-tuning of a row, per seed.")


# ------------------------------------------------------------------------------ plots
def loss_curves(plan: Any, path: Path) -> Path | None:
    """Pre-training loss (solid: train, dashed: validation) of each pre-trained row, first seed."""
    from ..training.runlog import read_rows
    from .plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    drawn = 0
    for r in plan.rows:
        if not r.objective or r.scratch:
            continue
        f = plan.row_dir(r) / f"seed{plan.setting.seeds[0]}" / "metrics.jsonl"
        if not f.exists():
            continue
        recs = read_rows(f, warn=False)  # old and current log schemas alike
        tr = [(x["step"], x["loss"]) for x in recs if x.get("split") == "train" and "loss" in x]
        va = [(x["step"], x["loss"]) for x in recs if x.get("split") == "val" and "loss" in x]
        if not tr:
            continue
        line, = ax.plot(*zip(*tr), label=r.name, lw=1.2)
        if va:
            ax.plot(*zip(*va), ls="--", color=line.get_color(), lw=1.0)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale: objectives' losses differ in scale, e.g. ELECTRA's weighted sum)")
    ax.set_yscale("log")
    ax.set_title("pre-training loss curves (solid: train, dashed: validation)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def study_plots(plan: Any, summaries: dict[str, list[dict[str, Any]]], totals: dict[str, dict[str, Any]]) -> list[Path]:
    from .plots import cost_plot, learning_curve

    d = plan.out / "plots"
    files: list[Path] = []
    p = loss_curves(plan, d / "loss_curves.png")
    if p:
        files.append(p)
    groups = {r.name: r.group for r in plan.rows}
    for t, summ in summaries.items():
        if not summ:
            continue
        if len({g["train_size"] for g in summ}) > 1:
            files.append(learning_curve(summ, d / f"learning_curve_{t}.png", title=t))
        pts = []
        for g in summ:  # a row's whole cost (its pre-training too) against its score
            tot = totals.get(g["method"], {})
            pre = tot.get("seconds", 0.0) - sum(x["train_seconds"] for tt in summaries.values() for x in tt
                                                if x["method"] == g["method"])
            pts.append({**g, "group": groups.get(g["method"], ""), "train_seconds": g["train_seconds"] + max(pre, 0.0),
                        "train_size": g["train_size"] if plan.study.layout == "curve" else ""})
        files.append(cost_plot(pts, d / f"pareto_{t}.png", cost_key="train_seconds",
                               title=f"{t} (pre-training + fine-tuning time)"))
    return files


# ------------------------------------------------------------------------------ documents
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right;white-space:nowrap}th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}img{max-width:100%;
border:1px solid #eee;margin:.5em 0}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px}
.note{font-size:12px;color:#555}"""


def _img_tag(p: Path) -> str:
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(p.stem)}</figcaption></figure>"


def render(out: Path, title: str, intro: str, tables: list[Table], images: list[Path], commands: list[str],
           vers: dict[str, str]) -> list[Path]:
    """Write ``out/report.md`` and the self-contained ``out/report.html``."""
    e = html.escape
    md = [f"# {title}", "", intro, ""] + [t.markdown() + "\n" for t in tables]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images]
    md += ["", "## Commands", "", "```"] + commands + ["```", "", "## Versions", ""]
    md += [f"- {k}: {v}" for k, v in vers.items()]
    body = [f"<h1>{e(title)}</h1>", f"<p>{e(intro)}</p>"] + [t.html() for t in tables]
    body += ["<h2>Plots</h2>"] + [_img_tag(p) for p in images]
    body += ["<h2>Commands</h2>", f"<pre>{e(chr(10).join(commands))}</pre>", "<h2>Versions</h2>",
             "<table><tbody>" + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in vers.items())
             + "</tbody></table>"]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "report.html", page)
    return [out / "report.md", out / "report.html"]


def write_study_report(out: Path) -> list[Path]:
    """Rebuild a study folder's tables, plots, report.md and report.html from its results.

    Args:
        out: the study folder (with study.json and results.jsonl).

    Returns:
        The files written.
    """
    from .grid import read_results
    from .tables import format_csv
    from .studies import STUDY_FILE, load_plan

    out = Path(out)
    plan = load_plan(out)
    meta = json.loads((out / STUDY_FILE).read_text(encoding="utf-8"))
    rows = read_results(out / "results.jsonl")
    tables, summaries, totals = study_tables(plan, rows)
    images = study_plots(plan, summaries, totals)
    flat = [g for t in plan.setting.tasks for g in summaries[t]]
    atomic_write_text(out / "summary.csv", format_csv(flat))
    atomic_write_text(out / "summary.md", "\n\n".join(t.markdown() for t in tables) + "\n")
    st = plan.study
    intro = (f"transferlab study {st.name}: {st.title}, after {st.paper}. {st.notes} Shared setting: "
             f"{'quick (tiny models, few steps)' if plan.setting.quick else 'CPU scale'}; tasks "
             f"{', '.join(plan.setting.tasks)}; seeds {plan.setting.seeds}.")
    cmds = [c["command"] for c in meta.get("commands", [])]
    return render(out, f"Study: {st.title}", intro, tables, images, cmds, meta.get("versions", {})) + [
        out / "summary.csv", out / "summary.md", *images]


def summarize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Compare rows without their config: the latest settings of each (method, task), mean ± std
    over seeds per (task, train size, method), in first-seen order (for ``transferlab report``)."""
    latest_spec: dict[tuple[str, str], str] = {}
    for r in rows:
        latest_spec[(r["method"], r["task"])] = r["spec"]
    cells: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r.get("task") == "lm" or latest_spec[(r["method"], r["task"])] != r["spec"] or "metric" not in r:
            continue
        cells.setdefault((r["task"], str(r["train_size"]), r["method"]), {})[int(r["seed"])] = r
    out = []
    for (task, size, method), by_seed in cells.items():
        rs = list(by_seed.values())
        metric = rs[0]["metric"]
        sp = "test" if all(r.get("test") for r in rs) else "validation"
        vals = [r[sp][metric] for r in rs if metric in r.get(sp, {})]
        if not vals:
            continue
        mean, std = mean_std(vals)
        vm, vs = mean_std(r["validation"].get(metric, float("nan")) for r in rs)
        g = {"task": task, "train_size": size, "method": method, "group": rs[0].get("group", ""), "metric": metric,
             "split": sp, "n": len(vals), "n_train": sum(r.get("n_train", 0) for r in rs) / len(rs), "mean": mean,
             "std": std, "val_mean": vm, "val_std": vs, "train_seconds": sum(r.get("train_seconds", 0.0) for r in rs) / len(rs)}
        for key in ("energy_kwh", "co2e_kg", "price_usd", "flops"):
            v = [r.get("cost", {}).get(key) for r in rs]
            if all(isinstance(x, (int, float)) for x in v):
                g[key] = sum(v) / len(v)
        out.append(g)
    return out


def write_compare_report(out: Path) -> list[Path]:
    """report.md / report.html of a comparison folder (results.jsonl; plots regenerated).

    Args:
        out: the comparison folder.

    Returns:
        The files written.
    """
    from .grid import read_results
    from .tables import format_table
    from .plots import cost_plot, learning_curve

    rows = read_results(out / "results.jsonl")
    summary = summarize_rows(rows)
    if not summary:
        raise ConfigError(f"{out}/results.jsonl: no finished cells to report")
    images: list[Path] = []
    for task in dict.fromkeys(g["task"] for g in summary):
        sub = [g for g in summary if g["task"] == task]
        if len({g["train_size"] for g in sub}) > 1:
            images.append(learning_curve(sub, out / "plots" / f"learning_curve_{task}.png", title=task))
        axis = "price_usd" if all("price_usd" in g for g in sub) else "train_seconds"
        images.append(cost_plot(sub, out / "plots" / f"cost_{task}.png", cost_key=axis, title=task))
    table = markdown_table(format_table(summary), "Results")
    mark_beyond_spread(table, summary)
    from .studies import versions

    intro = (f"Comparison in {out}: {len(rows)} finished cells; mean ± sample std over seeds, bold = best of a "
             "(task, train size) ahead of the runner-up beyond the seed spread (never with one seed).")
    return render(out, "Comparison report", intro, [table], images,
                  [f"transferlab report {out}"], versions()) + images


def mark_beyond_spread(table: Table, summary: list[dict[str, Any]]) -> None:
    """Re-mark the bold cells of a comparison table (one row per summary entry, in order) by the
    study rule: the best score of a (task, train size) only when it leads beyond the seed spread.

    Args:
        table: :func:`markdown_table` of :func:`~transferlab.experiments.tables.format_table`.
        summary: the entries the table was made from.
    """
    col = table.header.index("score (mean ± std)")
    table.bold.clear()
    groups: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(summary):
        groups.setdefault((g["task"], g["train_size"]), []).append(i)
    for idx in groups.values():
        higher = higher_is_better(summary[idx[0]]["metric"])
        b = best_beyond_spread([(summary[i]["mean"], summary[i]["std"], summary[i]["n"]) for i in idx], higher)
        if b is not None:
            table.bold.add((idx[b], col))


def markdown_table(text: str, title: str) -> Table:
    """A :class:`Table` from a markdown table (``**x**`` cells become bold)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    tab = Table(title, split[0])
    for i, r in enumerate(split[2:]):
        for j, c in enumerate(r):
            if len(c) > 4 and c.startswith("**") and c.endswith("**"):
                r[j] = c[2:-2]
                tab.bold.add((i, j))
        tab.rows.append(r)
    return tab


def write_report(folder: str | Path) -> list[Path]:
    """``transferlab report DIR``: a study folder or a comparison folder.

    Args:
        folder: the folder.

    Returns:
        The files written.

    Raises:
        ConfigError: ``DIR`` is neither (no study.json, no results.jsonl).
    """
    from .studies import STUDY_FILE

    out = Path(folder)
    if (out / STUDY_FILE).is_file():
        return write_study_report(out)
    if (out / "results.jsonl").is_file():
        return write_compare_report(out)
    raise ConfigError(f"{out}: not a study or comparison folder (no {STUDY_FILE} or results.jsonl)")
