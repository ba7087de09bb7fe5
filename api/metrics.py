"""Prometheus metrics. Under `ledger serve` every worker writes its counters to
PROMETHEUS_MULTIPROC_DIR and /metrics adds them up, whichever worker answers; the projection's
lag is read from Redis and the store at scrape time, so it is the same from every worker."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    # Each increment asks its process's id, to notice a fork and write to a file of the child's
    # own: getpid() is a system call, four a request (issue 20). The id kept, and made again in
    # a forked child, tells the library the same; set before any metric is made.
    _pid = [os.getpid()]
    os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))
    values.ValueClass = values.MultiProcessValue(lambda: _pid[0])  # type: ignore[no-untyped-call]

REQUESTS = Counter(
    "ledger_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "ledger_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
VERIFICATIONS = Counter(
    "ledger_token_verifications_total",
    "Bearer tokens verified, by outcome (valid, invalid, not_ready)",
    ["outcome"],
)


@cache  # bounded: label values here are few (outcomes, methods, route templates, statuses)
def labelled(metric: Any, *values: str) -> Any:
    """The child of `metric` for these label values; labels() takes a lock on every call."""
    return metric.labels(*values)


class ProjectionLag(Collector):
    """The read model's position against the store's head (Projector.status), read when scraped."""

    GAUGES = (
        ("ledger_projection_position", "position", "Last event applied to the read model"),
        ("ledger_projection_head", "head", "Last event in the store"),
        ("ledger_projection_lag_events", "lagEvents", "Events not yet applied to the read model"),
        ("ledger_projection_lag_seconds", "lagSeconds", "Age of the oldest unapplied event"),
    )

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self.status()
        for name, key, doc in self.GAUGES:
            if status.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=status[key])


def exposition(status: Callable[[], dict[str, Any]]) -> tuple[bytes, str]:
    """The body and content type of /metrics."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)  # type: ignore[no-untyped-call]
    else:
        counters = REGISTRY
    gauges = CollectorRegistry()
    gauges.register(ProjectionLag(status))
    return generate_latest(counters) + generate_latest(gauges), CONTENT_TYPE_LATEST
