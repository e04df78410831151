"""Prometheus metrics of the dispatcher and the reconciler (prometheus-client).

Counters and histograms are updated where things happen; the gauges that describe the database
(queue depth by status, the trainers' latest images/s) are refreshed from it by
`refresh_from_database`, which the services call at most every few seconds. Exposition is off
unless a port is given (`SKUTRAIN_METRICS_PORT`; 0 picks a free port, for tests).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from db import repository

REGISTRY = CollectorRegistry(auto_describe=True)

QUEUE_DEPTH = Gauge("skutrain_runs", "Training runs by status.", ["status"], registry=REGISTRY)
CLAIM_SECONDS = Histogram(
    "skutrain_claim_seconds", "Time one claim_runs round trip takes (the dispatcher's claim).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY)
LAUNCHES = Counter("skutrain_launches_total", "Jobs launched and recorded.", ["launcher"],
                   registry=REGISTRY)
LAUNCH_FAILURES = Counter("skutrain_launch_failures_total",
                          "Runs failed by their launcher (at launch or when the job ended).",
                          ["launcher", "error_code"], registry=REGISTRY)
LEASE_EXPIRATIONS = Counter("skutrain_lease_expirations_total",
                            "Runs the reconciler found with an expired lease.", registry=REGISTRY)
RECONCILE_ACTIONS = Counter("skutrain_reconcile_actions_total",
                            "What the reconciler did, by kind.", ["action"], registry=REGISTRY)
TRAINER_IMAGES_PER_SECOND = Gauge(
    "skutrain_trainer_images_per_second",
    "Images/s of the last completed epoch of each running run.", ["run"], registry=REGISTRY)
RUNPOD_RATE_LIMITED = Counter("skutrain_runpod_rate_limited_total",
                              "RunPod requests refused with 429 (then retried after a backoff).",
                              registry=REGISTRY)

RUN_STATUSES = ("queued", "claimed", "running", "completed", "failed", "cancelled")


def serve(port: int, addr: str = "127.0.0.1") -> int:
    """Start the exposition HTTP server in a thread; returns the port it listens on."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server.server_port


def record_sweep(result) -> None:
    """A reconciler sweep's counts (a dataclass of ints) as reconcile actions."""
    for action, count in vars(result).items():
        if count:
            RECONCILE_ACTIONS.labels(action=action).inc(count)


async def refresh_from_database(conn) -> None:
    """Queue depth by status and the running trainers' images/s, read in two queries."""
    depth = {status: 0 for status in RUN_STATUSES}
    depth.update(await repository.metrics_queue_depth(conn))
    for status, count in depth.items():
        QUEUE_DEPTH.labels(status=status).set(count)
    TRAINER_IMAGES_PER_SECOND.clear()
    for run, images_per_second in await repository.metrics_trainer_throughput(conn):
        TRAINER_IMAGES_PER_SECOND.labels(run=run).set(images_per_second)
