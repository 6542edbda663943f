"""Analysis of trial records: records in (``results/<run-id>/``), tables, statistics, plots and a report out.

It never talks to Docker or a runtime. Modules:

- ``load``      records -> tidy pandas tables (trials, prompts, energy per component, failures)
- ``metrics``   derived figures per trial (J/token, Wh, EDP, per-B, CO2, agreement, Pareto front)
- ``stats``     Shapiro–Wilk, Kruskal–Wallis, Dunn–Holm, Cliff's delta, bootstrap medians, savings
- ``study``     the published medians of arXiv 2412.15441, their headline ranges, and ours next to them
- ``quality``   HumanEval pass@1, Wilson intervals, net J per solved task, tasks gained and lost (McNemar, Holm)
- ``figures``   what each plot and Pareto front shows (finite figures, one comparison group) and what it leaves out
- ``plots``     box plots, energy-vs-time with Pareto front, savings heatmap, power over time
- ``report``    one self-contained HTML file plus a Markdown summary
- ``synthetic`` schema-valid synthetic records with known effects (tests and demos)
"""
