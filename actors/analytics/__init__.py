"""Performance metrics computed from stored trades, incrementally and from scratch.

The metrics actor (``actors.metrics``) owns one ``MetricsState``; the modules
here hold its parts: per-group sums (``stats``), the resolution-ordered trade
series behind the equity curve and time windows (``series``), daily returns
and their ratios (``returns``) and forecast scores (``forecast``).
docs/metrics.md defines every figure.
"""
