"""The report's page, section by section: each section appends its HTML and its Markdown from the same figures, so
the two say the same thing. ``render`` lays out the sections in order."""

from __future__ import annotations

import base64
import html
import time

from analysis.figures import Figures
from analysis.quality import NONE_SOLVED
from analysis.report_analysis import Analysis
from analysis.report_format import html_table, md_table
from analysis.report_operating import FIGURES as OPERATING_FIGURES
from analysis.families import section as families_section
from analysis.report_operating import section as operating_section
from analysis.report_reproduction import section as reproduction_section
from analysis.report_headlines import NO_ENERGY_WORDS, headlines
from analysis.report_tables import (agreement_table, comparison_tables, different_table, no_reference,
                                    preparation_table, quality_display, stats_overview, summary_tables,
                                    validity_table)
from analysis.stats import ALPHA, CONFIDENCE, fmt_p
from analysis.study import STUDY_ID, STUDY_SETUP
from runners.meters.validity import METHOD_TEXT

STUDY_COLUMNS = {"study_model": "study's model", "our_source": "our source", "our_prompts": "our prompts",
                 "our_new_tokens_per_prompt": "our new tokens/prompt", "our_j_per_prompt": "our J/prompt",
                 "study_j_per_prompt": "study J/prompt", "energy_ratio": "energy ours÷study",
                 "our_s_per_prompt": "our s/prompt", "study_s_per_prompt": "study s/prompt",
                 "time_ratio": "time ours÷study", "our_hardware": "our hardware"}
GLOSSARY = ("Energy of the generate window, within its energy boundary (the components it covers and whether "
            "they were measured or estimated). net = raw − idle power × duration (same component, same source). "
            "J/token = energy ÷ new tokens; J/prompt = energy ÷ prompts; tokens/Wh = new tokens ÷ Wh; "
            "Wh/1000 prompts as AI Energy Score reports. EDP = energy-delay product per inference, as the edge-SLM "
            "study defines it: J/prompt × mean per-prompt latency (J·s; a batch's latency for each of its prompts). "
            "EDP/B and Wh/B = per billion parameters. agreement = share of prompts whose tokens equal the reference "
            "configuration's (NaN with 'no reference' when there was none).")
ESTIMATED_NOTE = ("ESTIMATED, not measured: no hardware energy counter (RAPL, NVML) was available, so energy comes "
                  "from codecarbon's model (CPU load × a per-thread power figure, plus a modelled RAM power). Use it "
                  "to rank configurations on this machine with care; it is not a measurement of joules.")
DIFFERENT_RULE = ("Same work is checked, not assumed: a configuration in the reference's precision ({precision}) whose "
                  "share of prompts token-identical to the reference ({engine} {precision}) is below the threshold "
                  "({threshold:.0%}, [agreement] threshold) did different work. Lower precisions are expected to "
                  "diverge after some tokens (rounding moves near-ties) and are judged by their own rule: different "
                  "work only when they diverge at the first token on every prompt; their quality is judged by pass@1. "
                  "Different work is listed here with its figures and kept out of every comparison.")
QUALITY_NOTE = ("HumanEval, full prompts, greedy; each completion cut at the first stop sequence (\\ndef, \\nclass, "
                "\\nif, \\nprint, \\n#) and run against its task's tests in a locked-down sandbox container, "
                "outside every measured window. pass@1 = tasks passed ÷ tasks, mean over trials, Wilson 95 % "
                "interval for n = tasks. Net J/token and net J per solved task = net generate energy (idle "
                f"subtracted) ÷ new tokens and ÷ tasks passed (medians over trials; '{NONE_SOLVED}' when nothing "
                "passed). The Pareto front is per model and energy boundary, over the rows every comparison uses. "
                "Gained/lost: tasks one configuration passes and the reference (torch fp32) does not, and the "
                "reverse; McNemar's exact test, Holm-corrected per model. same-work: every configuration generated "
                "the same number of tokens (EOS ignored), so energies compare; as-served: each stopped where it "
                "stopped.")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1300px;padding:1.5em;
color:#1b1b1b;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em} h3{margin-top:1.4em}
.muted{color:#666} .banner{padding:.8em 1em;border-radius:6px;margin:1em 0;font-weight:500}
.estimated{background:#fff3cd;border:2px solid #e0a800} .measured{background:#d1e7dd;border:2px solid #198754}
.mixed{background:#f8d7da;border:2px solid #dc3545} .warn{background:#f8f9fa;border-left:4px solid #e0a800;
padding:.4em .8em;margin:.3em 0}
table.t{border-collapse:collapse;font-size:.82em;margin:.6em 0;display:block;overflow-x:auto}
table.t th,table.t td{border:1px solid #ddd;padding:.25em .5em;text-align:left;white-space:nowrap}
table.t td.w{white-space:normal;min-width:24em} /* long text (a test's result, a failure's reason) wraps */
table.t th{background:#f3f3f3} table.t .n{text-align:right}
ul.headline li{margin:.35em 0} img{max-width:100%;border:1px solid #eee;margin:.5em 0}
nav a{margin-right:1em} details{margin:.5em 0} summary{cursor:pointer;font-weight:600}
"""


def _banner(a: Analysis) -> tuple[str, str]:
    """The sources, and the boundary of every comparison: what each compared energy figure covers."""
    s = a.sources
    bounds = a.ok.groupby(a.ok["energy_boundary"].astype(object).fillna("no energy figure"))["config"].agg(
        lambda x: ", ".join(sorted(set(x))))
    words = " Energy boundaries compared (a comparison never crosses one): " + "; ".join(
        f"[{b}] {cfgs}" for b, cfgs in bounds.items()) + "."
    if not s:
        return "mixed", f"NO ENERGY FIGURE: energy is {NO_ENERGY_WORDS}; only time and output are compared." + words
    if s == ["estimated"]:
        return "estimated", "All energy figures in this report are " + ESTIMATED_NOTE + words
    if s == ["measured"]:
        return "measured", "All energy figures are measured by hardware counters." + words
    return "mixed", ("Energy sources differ between configurations — measured and estimated figures are never "
                     "added, and figures of different boundaries or sources are never compared." + words
                     + " Estimated means " + ESTIMATED_NOTE)


def render(a: Analysis, figs: Figures, title: str) -> tuple[str, str]:
    """(HTML, Markdown)."""
    ctx = {"heads": headlines(a), "tables": summary_tables(a), "overview": stats_overview(a), "figs": figs,
           "title": title}
    h: list[str] = []
    md: list[str] = []
    for section in (_head, _headline_section, _reproduction_section, _tables_section, _families_section,
                    _operating_section, _statistics_section, _quality_section, _validity_section, _savings_section,
                    _study_section, _plots_section, _failures_section):
        section(a, h, md, ctx)
    h.append("</body></html>")
    return "\n".join(h), "\n".join(md)


def _head(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Title, runs and hosts, the banner, the navigation."""
    title = ctx["title"]
    kind, banner = _banner(a) if not a.ok.empty else ("mixed", "No successful trial.")
    runs = ", ".join(sorted(a.tables.trials["run_id"].astype(str).unique()))
    hosts = a.tables.trials[["hostname", "cpu_model", "gpu_model"]].drop_duplicates()
    host_words = "; ".join(" / ".join(str(v) for v in r if isinstance(v, str)) for r in hosts.itertuples(index=False))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    h.append(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>")
    h.append(f"<h1>{html.escape(title)}</h1><p class='muted'>Runs: {html.escape(runs)} · hosts: "
             f"{html.escape(host_words)} · generated {html.escape(stamp)}</p>")
    h.append(f"<div class='banner {kind}'>{html.escape(banner)}</div>")
    h.append("<nav><a href='#headline'>Headline</a>"
             + ("<a href='#reproduction'>Reproduction</a>" if a.reproductions else "") + "<a href='#tables'>Tables</a>"
             + ("<a href='#families'>Runtime families</a>" if not a.families.empty else "")
             + ("<a href='#operating'>Operating points</a>" if a.operating is not None and not a.operating.empty
                else "") + "<a href='#stats'>Statistics</a>"
             "<a href='#quality'>pass@1</a><a href='#validity'>Meter validity</a><a href='#savings'>Savings</a>"
             "<a href='#study'>Study</a><a href='#plots'>Plots</a><a href='#failures'>Failures</a></nav>")
    md += [f"# {title}", "", f"Runs: {runs} · hosts: {host_words} · generated {stamp}", "", f"> **{banner}**", ""]


def _headline_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The headline sentences and warnings."""
    heads = ctx["heads"]
    h.append("<h2 id='headline'>Headline</h2><ul class='headline'>"
             + "".join(f"<li>{html.escape(s)}</li>" for s in heads) + "</ul>")
    md += ["## Headline", ""] + [f"- {s}" for s in heads] + [""]
    if a.warnings:
        h.append("".join(f"<div class='warn'>⚠ {html.escape(w)}</div>" for w in a.warnings))
        md += [f"> ⚠ {w}" for w in a.warnings] + [""]


def _tables_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The summary tables, agreement with the reference, work kept out of comparisons, preparation."""
    tables = ctx["tables"]
    h.append(f"<h2 id='tables'>Tables</h2><p class='muted'>{html.escape(GLOSSARY)}</p>")
    md += ["## Tables", "", GLOSSARY, ""]
    for name, df in tables.items():
        h.append(f"<h3>{html.escape(name)}</h3>{html_table(df)}")
        md += [f"### {name}", "", md_table(df)]

    spec = a.agreement  # the run's reference policy (run.json), defaults where it set none
    title, agreement = f"Agreement with the reference ({spec.describe()})", agreement_table(a)
    h.append(f"<h3>{html.escape(title)}</h3>" + html_table(agreement))
    md += [f"### {title}", "", md_table(agreement)]

    diff = different_table(a)
    if not diff.empty:
        rule = DIFFERENT_RULE.format(threshold=spec.threshold, engine=spec.engine, precision=spec.precision)
        h.append(f"<h3>Not the same output (kept out of every comparison)</h3><p class='muted'>{html.escape(rule)}</p>"
                 + html_table(diff))
        md += ["### Not the same output (kept out of every comparison)", "", rule, "", md_table(diff)]

    prep = preparation_table(a)
    if not prep.empty:
        h.append("<h3>Preparation (model conversion, outside every measured window)</h3>" + html_table(prep))
        md += ["### Preparation (model conversion, outside every measured window)", "", md_table(prep)]


def _reproduction_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The original's figures beside the reproduction's (only in a run made by orchestrate.py reproduce)."""
    reproduction_section(a.reproductions, h, md)


def _families_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Engines of one runtime library against each other (only where a family has two in one comparison)."""
    families_section(a.families, h, md)


def _operating_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The curves against the operating point (only for a sweep, or several values of an axis)."""
    operating_section(a.operating, ctx["figs"], h, md)


def _statistics_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The tests per model and size group."""
    overview = ctx["overview"]
    h.append(f"<h2 id='stats'>Statistics</h2><p class='muted'>Per model and per size group, configuration as the "
             f"factor. Shapiro–Wilk per configuration; Kruskal–Wallis across configurations; Dunn's post-hoc with "
             f"Holm correction; Cliff's δ with Romano et al.'s magnitudes (|δ| &lt; 0.147 negligible, &lt; 0.33 "
             f"small, &lt; 0.474 medium, else large); medians with {100 * CONFIDENCE:.0f} % bootstrap CIs (BCa). "
             f"α = {ALPHA}. No test is run for a configuration with fewer than {a.min_n} repetitions.</p>")
    md += ["## Statistics", "", f"Kruskal–Wallis per model and size group (α = {ALPHA}; configurations with fewer "
           f"than {a.min_n} repetitions are not tested).", "", md_table(overview)]
    h.append(html_table(overview))
    for c in a.comparisons:
        if c.metric == "net_energy_j":
            continue  # in the overview; details for raw energy and time keep the report readable
        groups, pairs = comparison_tables(c)
        h.append(f"<details><summary>{html.escape(c.scope)} {html.escape(c.name)} — {html.escape(c.metric)}: "
                 f"{html.escape(c.verdict())}</summary>{html_table(groups)}"
                 + (f"<p>Dunn post-hoc (Holm) and Cliff's δ</p>{html_table(pairs)}" if not pairs.empty else "")
                 + "</details>")
        md += [f"### {c.scope} {c.name} — {c.metric}", "", c.verdict(), "", md_table(groups)]
        if not pairs.empty:
            md += ["Dunn post-hoc (Holm) and Cliff's δ:", "", md_table(pairs)]



def _quality_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """pass@1, J per solved task, tasks gained and lost against the reference."""
    if a.quality_table.empty:
        return
    h.append(f"<h2 id='quality'>Does it work? HumanEval pass@1 and energy per solved task</h2>"
             f"<p class='muted'>{html.escape(QUALITY_NOTE)}</p>{html_table(quality_display(a))}")
    md += ["## Does it work? HumanEval pass@1 and energy per solved task", "", QUALITY_NOTE, "",
           md_table(quality_display(a))]
    if not a.quality_pairs.empty:
        pairs = a.quality_pairs.rename(columns={"mcnemar_p": "McNemar p", "p_holm": "p (Holm)",
                                                "lost_tasks": "tasks lost"})
        pairs["McNemar p"] = pairs["McNemar p"].map(fmt_p)
        pairs["p (Holm)"] = pairs["p (Holm)"].map(fmt_p)
        h.append("<h3>Tasks gained and lost against the reference</h3>" + html_table(pairs))
        md += ["### Tasks gained and lost against the reference", "", md_table(pairs)]


def _validity_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Meter-validity flags and configurations without an agreement reference."""
    vt = validity_table(a)
    h.append(f"<h2 id='validity'>Meter validity ({len(vt)} flagged trial(s))</h2>")
    md += [f"## Meter validity ({len(vt)} flagged trial(s))", ""]
    h.append(html_table(vt))
    md += [md_table(vt)]
    # what the counters see and do not see, so a reader knows what an external meter would add
    h.append(f"<h3>What the counters measure</h3><p class='muted'>{html.escape(METHOD_TEXT)}</p>")
    md += ["### What the counters measure", "", METHOD_TEXT, ""]
    nr = no_reference(a)
    if not nr.empty:
        words = ("NO REFERENCE: token agreement could not be checked for these configurations — it is unknown, "
                 "not identical.")
        h.append(f"<div class='banner mixed'>{html.escape(words)}</div>{html_table(nr)}")
        md += [f"> **{words}**", "", md_table(nr)]


def _savings_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Best vs worst and the named pairs."""
    h.append("<h2 id='savings'>Savings</h2><p class='muted'>From median energy per model × configuration: best vs "
             "worst = (worst − best) / worst; a pair A vs B = (B − A) / B (negative: A used more).</p>")
    md += ["## Savings", ""]
    bw = a.best_worst.rename(columns={"best_value": "best J", "worst_value": "worst J", "savings_pct": "saved %"})
    h.append(f"<h3>Best vs worst configuration per model and energy boundary</h3>{html_table(bw)}")
    md += ["### Best vs worst configuration per model and energy boundary", "", md_table(bw)]
    for (pa, pb), df in a.pairs.items():
        h.append(f"<h3>{pa} vs {pb}</h3>")
        md += [f"### {pa} vs {pb}", ""]
        if df.empty:
            h.append("<p class='muted'>Not in this run (no model has both configurations).</p>")
            md += ["_Not in this run (no model has both configurations)._", ""]
        else:
            d = df.rename(columns={"a_value": f"{pa} J", "b_value": f"{pb} J", "savings_pct": "saved %"})
            h.append(html_table(d))
            md += [md_table(d)]


def _study_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The study's recomputed figures and ours beside them."""
    h.append(f"<h2 id='study'>Comparison with the study ({STUDY_ID})</h2>")
    md += [f"## Comparison with the study ({STUDY_ID})", ""]
    if a.study:
        s = a.study
        lines = [f"Study setup: {STUDY_SETUP}.",
                 f"{s['pair'][0]} vs {s['pair'][1]}, recomputed from the published medians: "
                 f"{s['pair_savings_range']['low']:.2f} %–{s['pair_savings_range']['high']:.2f} % "
                 f"(study: 37.99 %–89.16 %).",
                 f"Best vs worst CPU engine, recomputed: {s['cpu_best_worst_range']['low']:.2f} %–"
                 f"{s['cpu_best_worst_range']['high']:.2f} % (study: 8.98 %–72.04 %; its lower end was typed by "
                 "hand, the table gives 8.91 %). JIT rows are left out, as in the study (one forward pass, no "
                 "generation)."]
        h.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
        md += [f"- {x}" for x in lines] + [""]
        sc = a.study_comparison
        note = ("DIFFERENT HARDWARE AND WORKLOAD: ours vs the study's per prompt (the study's 164-prompt totals "
                "÷ 164; about 113–118 new tokens per prompt there). Ratios = ours ÷ study; they say how far apart "
                "the setups are, not whether either is right.")
        h.append(f"<div class='banner mixed'>{html.escape(note)}</div>")
        md += [f"> **{note}**", ""]
        if sc is None or sc.empty:
            h.append("<p class='muted'>No model × configuration of this run is in the study's table.</p>")
            md += ["_No model × configuration of this run is in the study's table._", ""]
        else:
            sc = sc.rename(columns=STUDY_COLUMNS)
            h.append(html_table(sc))
            md += [md_table(sc)]
    else:
        h.append("<p class='muted'>No study medians table given.</p>")
        md += ["_No study medians table given._", ""]


def _plots_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """The figures, embedded."""
    figs = ctx["figs"]
    h.append("<h2 id='plots'>Plots</h2>")
    md += ["## Plots", ""]
    for name, png in figs.png.items():
        if name in OPERATING_FIGURES:  # shown in their own section
            continue
        b64 = base64.b64encode(png).decode()
        cap = html.escape(figs.captions.get(name, name))
        h.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                 f"<figcaption class='muted'>{cap}</figcaption></figure>")
        md += [f"![{figs.captions.get(name, name)}](plots/{name}.png)", ""]
    for name, why in figs.absent.items():  # a figure with nothing finite to draw: said, not drawn
        if name in OPERATING_FIGURES:
            continue
        h.append(f"<p class='muted'>{html.escape(why)}</p>")
        md += [f"_{why}_", ""]


def _failures_section(a: Analysis, h: list[str], md: list[str], ctx: dict) -> None:
    """Failed trials and records that do not match the schema."""
    failures = a.tables.failures.drop(columns=["record"], errors="ignore")
    problems = a.tables.problems
    h.append(f"<h2 id='failures'>Failures ({len(failures)})</h2>")
    md += [f"## Failures ({len(failures)})", ""]
    h.append(html_table(failures))
    md += [md_table(failures)]
    if not problems.empty:
        h.append(f"<h3>Records that do not match the runner's schema</h3>{html_table(problems)}")
        md += ["### Records that do not match the runner's schema", "", md_table(problems)]
