"""``gateway bench``: where the latency budget goes, measured from outside.

An open-loop run (``gateway.loadgen``) against one URL, then each response's
``Server-Timing`` and ``Gateway-Partial`` turned into figures: the client's latency
percentiles, each backend's, the gateway's own time, how often the budget was overrun
and which backend spent it. One job per module:

- ``analysis``: samples -> ``Figures`` (pure, no I/O)
- ``table``: ``Figures`` -> the text table printed at the end of a run
- ``svg`` and ``charts``: hand-made inline SVG (histogram, percentile bars, waterfalls)
- ``report``: ``Figures`` -> one self-contained HTML page
- ``command``: the command-line flags, the run with its progress line and Ctrl-C
"""
