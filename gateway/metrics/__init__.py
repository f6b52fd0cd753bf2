"""Prometheus metrics: per-route recorders on the request path, a collector at scrape.

- ``histogram``: the cheap histogram and the bucket bounds.
- ``recorder``: ``RouteMetrics`` (one route's figures) and ``RouteRecorders`` (by name,
  for the life of the process).
- ``collector``: the figures as metric families, read when Prometheus scrapes.
- ``endpoint``: the ``GET /metrics`` handler for the admin listener.
"""
