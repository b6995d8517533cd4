"""The JSON a client gets: the answer of a request that ran, or the refusal of a strict budget.

    body = answer(request, configs, policy="deadline", now=time.perf_counter())
    raise refusal(refuse, options)          # BudgetInfeasible (422), with Retry-After for load

The budget verdict: `met` is measured (total time and GFLOPs within the budgets); `feasible` is
what the scheduler predicted when it chose the configuration; `reason` says why a budget was
missed: `gflops` (no configuration is that cheap), `decode` (decoding this video alone takes
longer than the budget), `model` (decode and the fastest configuration do), `upload` (the upload
and probe left too little), `queue` (it would have fitted on an idle server), or, when it was
predicted to fit, the stage that took longest beyond its prediction (`queue` for the wait for
the model, `decode`, `preprocess`, `model`).
"""
from __future__ import annotations

import time
from collections.abc import Mapping

from video import VideoInfo

from .errors import BudgetInfeasible
from .options import Options
from .scheduler import Refuse, Request
from .selector import Key, ProfiledConfig
from .stages import Job


def rounded(v: float | None, nd: int = 3):
    return None if v is None else round(float(v), nd)


def config_dict(c: ProfiledConfig, decode: str = "exact") -> dict:
    return {"frames": c.frames, "pixels": c.pixels, "patch": c.patch, "tokens": c.tokens,
            "decode": decode}


def video_dict(info: VideoInfo) -> dict:
    return {"duration_s": rounded(info.duration_s), "fps": rounded(info.fps), "width": info.width,
            "height": info.height, "codec": info.codec, "container": info.container,
            "size_bytes": info.size_bytes}


def timings(request: Request, now: float) -> dict:
    """ms per stage: upload, probe, queue (waiting for a decoder and for the model), decode,
    preprocess, model, total (arrival to answer), and what the choice assumed."""
    job: Job = request.payload
    waited = (request.decode_start - request.arrival) - sum(job.stages_ms.values()) \
        + (request.model_start - request.decode_end)
    t = {k: rounded(v) for k, v in job.stages_ms.items()}
    t["queue"] = rounded(max(0.0, waited))
    t.update({k: rounded(v) for k, v in job.ms.items()})
    t["total"] = rounded((now - job.arrival) * 1e3)
    p = job.predicted[request.option.key, request.option.decode]
    t["predicted"] = {"decode": rounded(p.decode), "preprocess": rounded(p.preprocess),
                      "model": rounded(p.model),
                      "total": rounded(request.predicted_finish - request.arrival)}
    return t


def _overrun(request: Request) -> str:
    """The stage that took longest beyond what the choice assumed."""
    job: Job = request.payload
    p = job.predicted[request.option.key, request.option.decode]
    foreseen_wait = request.predicted_finish - request.decode_start - p.total
    over = {"decode": job.ms["decode"] - p.decode,
            "preprocess": job.ms["preprocess"] - p.preprocess,
            "queue": (request.model_start - request.decode_end) - foreseen_wait,
            "model": job.ms["model"] - p.model}
    return max(over, key=over.get)


def answer(request: Request, configs: Mapping[Key, ProfiledConfig], policy: str,
           now: float | None = None) -> dict:
    """The 200 body of a request that ran (`now`: time.perf_counter() at the answer)."""
    job: Job = request.payload
    options: Options = job.options
    gflops_ok = job.within_gflops
    c = configs[request.option.key]
    t = timings(request, time.perf_counter() if now is None else now)
    ms_ok = options.budget_ms is None or t["total"] <= options.budget_ms
    gf_ok = options.budget_gflops is None or c.gflops <= options.budget_gflops
    reason = None
    if not gf_ok:
        reason = "gflops"
    elif not ms_ok:
        reason = request.cause if request.late else _overrun(request)
    feasible = gflops_ok and not request.late
    return {
        "labels": job.labels,
        "config": config_dict(c, request.option.decode),
        "gflops": round(c.gflops, 6),
        "accuracy": c.accuracy_for(request.option.decode),
        "timing_ms": t,
        "budget": {"ms": options.budget_ms, "gflops": options.budget_gflops,
                   "met": ms_ok and gf_ok, "feasible": feasible, "strict": options.strict,
                   "reason": reason},
        "selection": {"reason": explain(request, c, options, gflops_ok),
                      "policy": policy, "candidates": len(request.options),
                      "spent_before_selection_ms": rounded(request.decode_start - request.arrival),
                      "slack_ms": rounded(request.slack_ms), "batch": request.batch_size,
                      "lane": request.lane,
                      "frames_decoded": job.stats.frames_decoded, "seeks": job.stats.seeks,
                      "keyframes_used": job.stats.keyframes_used},
        "video": video_dict(job.info),
    }


def explain(request: Request, c: ProfiledConfig, options: Options, gflops_ok: bool) -> str:
    """Why this configuration, in the terms of the budget."""
    job: Job = request.payload
    p = job.predicted[c.key, request.option.decode]
    parts = []
    if options.budget_ms is not None:
        finish = request.predicted_finish - request.arrival
        parts.append(f"predicted to answer at {finish:.1f} ms (decode {p.decode:.1f} + "
                     f"preprocess {p.preprocess:.1f} + model p95 {p.model:.1f}, after "
                     f"{request.decode_start - request.arrival:.1f} ms spent and the work ahead"
                     f" of it) of budget_ms={options.budget_ms:g}")
    if options.budget_gflops is not None:
        within = "within" if c.gflops <= options.budget_gflops else "over"
        parts.append(f"{c.gflops:.4g} GFLOPs {within} budget_gflops={options.budget_gflops:g}")
    if not parts:
        parts.append("no budget given")
    if not gflops_ok:
        head = "no configuration is within the GFLOP budget: the cheapest"
    elif request.late:
        head = (f"late whatever runs ({request.cause}): the most accurate configuration that "
                f"answers about as early as the fastest")
    elif c.accuracy is not None:
        head = f"the most accurate configuration that fits (top-1 {c.accuracy:.4g})"
    else:
        head = "the configuration with the most GFLOPs that fits (no accuracy known for it)"
    return head + ": " + "; ".join(parts)


_CAUSES = {"queue": "the requests ahead of it take the time",
           "decode": "decoding this video alone takes longer",
           "model": "decoding and the fastest configuration take longer",
           "upload": "the upload and probe left too little of it"}


def refusal(refuse: Refuse, options: Options) -> BudgetInfeasible:
    """422 for a strict budget that cannot be met now, with the smallest budget that could."""
    need = refuse.feasible_budget_ms
    detail = {"cause": refuse.cause, "cheapest_feasible_budget_ms": need}
    headers = {}
    if refuse.retry_after_s is not None:
        detail["retry_after_s"] = refuse.retry_after_s
        headers["Retry-After"] = str(refuse.retry_after_s)
    return BudgetInfeasible(
        f"strict budget budget_ms={options.budget_ms:g} cannot be met: {_CAUSES[refuse.cause]}"
        f"; the cheapest feasible budget now is budget_ms >= {need:g}", detail=detail,
        headers=headers)


def gflops_refusal(options: Options, cheapest: float) -> BudgetInfeasible:
    return BudgetInfeasible(
        f"strict budget budget_gflops={options.budget_gflops:g} cannot be met: the cheapest "
        f"configuration needs {cheapest:.4g} GFLOPs; the cheapest feasible budget is "
        f"budget_gflops >= {cheapest:.4g}", detail={"cause": "gflops",
                                                   "cheapest_feasible_budget_gflops": cheapest})
