"""Prometheus metrics of the classify endpoint, served by BentoML's own `/metrics`.

BentoML runs prometheus_client in multiprocess mode: the server sets PROMETHEUS_MULTIPROC_DIR
for every worker and `/metrics` merges what all workers wrote there. prometheus_client picks
its mode when it is first imported, so it is imported here lazily, when the first metric is
created inside a worker (never at import time of the service module); counters and histograms
then add up across workers. (No plain gauges: in multiprocess mode only the `livesum`-style
gauge below has a meaning across workers.)

    stretchysnake_requests_total{frames,pixels,patch}        answered requests by configuration
    stretchysnake_errors_total{status,code}                  refused requests (4xx/5xx), by cause
    stretchysnake_budget_total{kind,outcome}                 kind ms|gflops, outcome met|missed
                                                             (refused strict budgets are errors)
    stretchysnake_stage_seconds{stage}                       histogram: upload, probe, queue,
                                                             decode, preprocess, model, total
    stretchysnake_prediction_ratio{stage}                    histogram of observed / predicted
                                                             for decode, preprocess, model, total
    stretchysnake_inflight                                   /classify requests in this server
    stretchysnake_uploading                                  of those, still reading their upload
    stretchysnake_queue_depth{stage}                         requests the scheduler holds: pending
                                                             (waiting for a decoder), decoding,
                                                             ready (waiting for the model), running
    stretchysnake_slack_seconds                              histogram: deadline - predicted answer
                                                             when the configuration was chosen
                                                             (requests with budget_ms; < 0: late)
    stretchysnake_deadline_misses_total{cause}               budget_ms missed, by cause: queue,
                                                             upload, decode, model, preprocess
    stretchysnake_budget_refusals_total{cause}               strict budgets refused, by cause:
                                                             queue, upload, decode, model, gflops
    stretchysnake_batch_size                                 histogram: requests per model run
"""
from __future__ import annotations

import threading

NAMESPACE = "stretchysnake"
STAGE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 10, 30)
RATIO_BUCKETS = (.25, .5, .67, .8, .9, 1.0, 1.1, 1.25, 1.5, 2, 3, 4, 8)
SLACK_BUCKETS = (-.25, -.1, -.05, -.025, -.01, 0, .005, .01, .025, .05, .1, .25, .5, 1)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class Metrics:
    def __init__(self):
        import prometheus_client as pc  # lazily: after BentoML set PROMETHEUS_MULTIPROC_DIR

        self.requests = pc.Counter(f"{NAMESPACE}_requests", "Classify requests answered, by the "
                                   "configuration that ran", ["frames", "pixels", "patch"])
        self.errors = pc.Counter(f"{NAMESPACE}_errors", "Classify requests refused, by HTTP "
                                 "status and error code", ["status", "code"])
        self.budget = pc.Counter(f"{NAMESPACE}_budget", "Budgets given with answered requests, "
                                 "by kind (ms, gflops) and outcome (met, missed)",
                                 ["kind", "outcome"])
        self.stage = pc.Histogram(f"{NAMESPACE}_stage_seconds", "Time per stage of a classify "
                                  "request (total: arrival to answer)", ["stage"],
                                  buckets=STAGE_BUCKETS)
        self.ratio = pc.Histogram(f"{NAMESPACE}_prediction_ratio", "Observed / predicted time "
                                  "per stage (1 = exact; above 1 = slower than predicted)",
                                  ["stage"], buckets=RATIO_BUCKETS)
        self.inflight = pc.Gauge(f"{NAMESPACE}_inflight", "Classify requests being read, queued "
                                 "or run", multiprocess_mode="livesum")
        self.uploading = pc.Gauge(f"{NAMESPACE}_uploading", "Classify requests still reading "
                                  "their upload", multiprocess_mode="livesum")
        self.queue = pc.Gauge(f"{NAMESPACE}_queue_depth", "Requests the scheduler holds, by stage "
                              "(pending, decoding, ready, running)", ["stage"],
                              multiprocess_mode="livesum")
        self.slack = pc.Histogram(f"{NAMESPACE}_slack_seconds", "Deadline minus the predicted "
                                  "answer when the configuration was chosen (budget_ms requests; "
                                  "negative: predicted late)", buckets=SLACK_BUCKETS)
        self.misses = pc.Counter(f"{NAMESPACE}_deadline_misses", "Latency budgets missed, by "
                                 "cause", ["cause"])
        self.budget_refusals = pc.Counter(f"{NAMESPACE}_budget_refusals", "Strict budgets "
                                          "refused, by cause", ["cause"])
        self.batch = pc.Histogram(f"{NAMESPACE}_batch_size", "Requests per model run (each "
                                  "answer observes its run's size)", buckets=BATCH_BUCKETS)

    def answered(self, result: dict) -> None:
        c = result["config"]
        self.requests.labels(str(c["frames"]), str(c["pixels"]), str(c["patch"])).inc()
        budget = result["budget"]
        ms_ok = budget["ms"] is None or result["timing_ms"]["total"] <= budget["ms"]
        gf_ok = budget["gflops"] is None or result["gflops"] <= budget["gflops"]
        if budget["ms"] is not None:
            self.budget.labels("ms", "met" if ms_ok else "missed").inc()
            if not ms_ok:
                self.misses.labels(budget.get("reason") or "unknown").inc()
        selection = result.get("selection", {})
        if budget["ms"] is not None and selection.get("slack_ms") is not None:
            self.slack.observe(selection["slack_ms"] / 1e3)
        if selection.get("batch"):
            self.batch.observe(selection["batch"])
        if budget["gflops"] is not None:
            self.budget.labels("gflops", "met" if gf_ok else "missed").inc()
        timing = result["timing_ms"]
        for stage in ("upload", "probe", "queue", "decode", "preprocess", "model", "total"):
            if timing.get(stage) is not None:
                self.stage.labels(stage).observe(timing[stage] / 1e3)
        for stage, predicted in timing.get("predicted", {}).items():
            if predicted and predicted > 0 and timing.get(stage) is not None:
                self.ratio.labels(stage).observe(timing[stage] / predicted)

    def refused(self, status: int, code: str, cause: str | None = None) -> None:
        self.errors.labels(str(status), code).inc()
        if code == "budget_infeasible" and cause:
            self.budget_refusals.labels(cause).inc()

    def scheduled(self, scheduler) -> None:
        """After every scheduling event: the queue depth per stage."""
        for stage, n in scheduler.depth().items():
            self.queue.labels(stage).set(n)


_lock = threading.Lock()
_metrics: Metrics | None = None


def get_metrics() -> Metrics:
    """The process's Metrics (metric names can be registered once per process)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics
