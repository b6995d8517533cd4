"""What benchmarks/serve_load.py reports: percentiles and summaries per budget and per level
(every budgeted request counted at the client), the mixed-budget summary, plots and the JSON."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, machine, save
from benchmarks.load.clients import Budget, Result


def pct(values, q: float) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else None


def by_status(results: list[Result], include_ok: bool = False) -> dict:
    """{"429": 3, "exc": 1, ...}: answers by HTTP status (without 200 unless include_ok)."""
    counts = collections.Counter(str(r.status) if r.status else "exc" for r in results
                                 if include_ok or r.status != 200)
    return dict(sorted(counts.items()))


def summarize(results: list[Result], wall_s: float, budget: str | None = None) -> dict:
    ok = [r for r in results if r.ok]
    client = [r.client_ms for r in ok]
    overhead = [r.timing("total") - r.timing("decode") - r.timing("preprocess") - r.timing("model")
                for r in ok]
    # "all": feasibility and hits over the requests that had a budget
    with_budget = [r for r in ok if r.budget != "none"]
    # what a client sees: every request with a latency budget, errors included
    timed = [r for r in results if r.budget_ms is not None]
    budgeted = bool(with_budget)
    feasible = [r for r in with_budget if r.body["budget"]["feasible"]]
    configs = collections.Counter(
        "{frames}x{pixels}/{patch}".format(**r.body["config"]) for r in ok)
    labelled = [r for r in ok if r.label is not None]
    row = {
        "budget": budget or "all", "requests": len(results), "ok": len(ok),
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else None,
        "client_ms": {"p50": pct(client, 50), "p95": pct(client, 95), "p99": pct(client, 99)},
        "server_total_ms": {"p50": pct([r.timing("total") for r in ok], 50),
                            "p99": pct([r.timing("total") for r in ok], 99)},
        "overhead_ms_p50": pct(overhead, 50),
        "queue_ms_p50": pct([r.timing("queue") for r in ok], 50),
        "stage_ms_p50": {s: pct([r.timing(s) for r in ok], 50)
                         for s in ("upload", "probe", "queue", "decode", "preprocess", "model")},
        "with_budget": len(with_budget),
        "feasible": len(feasible) if budgeted else None,
        "met": sum(r.body["budget"]["met"] for r in with_budget) if budgeted else None,
        "met_among_feasible": sum(r.body["budget"]["met"] for r in feasible) if budgeted else None,
        "hit_rate": (sum(r.body["budget"]["met"] for r in feasible) / len(feasible)
                     if budgeted and feasible else None),
        "latency_budgeted": len(timed),
        "met_at_client": (sum(r.met_at_client for r in timed) / len(timed)
                          if timed else None),
        "configs": dict(configs.most_common()),
        "errors_by_status": by_status(results),
        "top1": (sum(r.body["labels"][0]["label"] == r.label for r in labelled) / len(labelled)
                 if labelled else None),
    }
    return row


def fmt_ms(v):
    return "-" if v is None else round(v, 1)


def table_row(s: dict, concurrency: int | None = None) -> dict:
    row = {"conc": concurrency, "budget": s["budget"], "n": s["requests"],
           "req/s": "-" if s["throughput_rps"] is None else round(s["throughput_rps"], 2),
           "p50": fmt_ms(s["client_ms"]["p50"]), "p95": fmt_ms(s["client_ms"]["p95"]),
           "p99": fmt_ms(s["client_ms"]["p99"]), "srv p50": fmt_ms(s["server_total_ms"]["p50"]),
           "ovh p50": fmt_ms(s["overhead_ms_p50"]), "queue p50": fmt_ms(s["queue_ms_p50"]),
           "feas": "-" if s["feasible"] is None else f"{s['feasible']}/{s['with_budget']}",
           "met": "-" if s["met_at_client"] is None else f"{s['met_at_client']:.0%}",
           "config": next(iter(s["configs"]), "-"),
           "errors": " ".join(f"{k}:{v}" for k, v in s["errors_by_status"].items()) or "-"}
    if s["top1"] is not None:
        row["top1"] = f"{s['top1']:.0%}"
    return row


def summarize_mixed(results: list[Result], wall_s: float, mix: list[Budget]) -> dict:
    """What a client sees: every request with a latency budget counts, errors included."""
    timed = [r for r in results if r.budget_ms is not None]
    met = [r for r in timed if r.met_at_client]
    correct = [r for r in met if r.label is not None and r.body["labels"][0]["label"] == r.label]
    labelled = all(r.label is not None for r in timed)
    rows = []
    for b in mix:
        mine = [r for r in results if r.budget == b.name]
        ok = [r for r in mine if r.ok]
        rows.append({
            "budget": b.name, "requests": len(mine), "ok": len(ok),
            "met": sum(r.met_at_client for r in mine) if b.ms is not None else None,
            "client_ms": {"p50": pct([r.client_ms for r in ok], 50),
                          "p99": pct([r.client_ms for r in ok], 99)},
            "configs": dict(collections.Counter(
                "{frames}x{pixels}/{patch}".format(**r.body["config"]) for r in ok).most_common()),
            "reasons": dict(collections.Counter(r.body["budget"]["reason"] for r in ok
                                                if r.body["budget"]["reason"])),
            "errors_by_status": by_status(mine)})
    return {
        "requests": len(results), "ok": sum(r.ok for r in results), "wall_s": round(wall_s, 2),
        "throughput_rps": sum(r.ok for r in results) / wall_s if wall_s else None,
        "latency_budgeted": len(timed), "met": len(met),
        "met_share": len(met) / len(timed) if timed else None,
        "effective_accuracy": len(correct) / len(timed) if timed and labelled else None,
        "top1_answered": (sum(r.body["labels"][0]["label"] == r.label for r in results
                              if r.ok and r.label is not None)
                          / max(1, sum(r.ok and r.label is not None for r in results))
                          if labelled else None),
        "errors_by_status": by_status(results), "budgets": rows}


def plot_load(levels: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels):
        rows = level["budgets"]
        x = np.arange(len(rows))
        for j, (q, colour) in enumerate((("p50", "C0"), ("p95", "C1"), ("p99", "C3"))):
            ax.bar(x + (j - 1) * 0.27, [r["client_ms"][q] or 0 for r in rows], 0.27, label=q,
                   color=colour)
        highest = max([r["client_ms"]["p99"] or 0 for r in rows] + [1e-3])
        shown = [highest]
        for i, r in enumerate(rows):
            ms = Budget.parse(r["budget"]).ms
            if ms is not None and ms <= 2 * highest:  # a far larger budget would squash the bars
                ax.hlines(ms, i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=1)
                shown.append(ms)
        ax.set_ylim(0, 1.12 * max(shown))
        ax.set_xticks(x, [r["budget"] for r in rows], rotation=30, fontsize=8)
        ax.set_title(f"concurrency {level['concurrency']}: "
                     f"{level['all']['throughput_rps']:.1f} req/s", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("client latency (ms); dashed: budget_ms")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_soak(rss: dict, path: Path) -> Path | None:
    if not rss.get("samples"):
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    t, mb = zip(*rss["samples"])
    ax.plot(t, mb, marker=".", label="all")
    roles = sorted({r for _, by in rss.get("by_role", []) for r in by})
    for role in roles if len(roles) > 1 else ():
        ax.plot([t for t, _ in rss["by_role"]], [by.get(role, 0) for _, by in rss["by_role"]],
                label=role, linewidth=1)
    if rss.get("warmup_s"):
        ax.axvline(rss["warmup_s"], color="k", linestyle=":", linewidth=1, label="warm-up end")
    ax.legend(fontsize=8)
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("server process tree RSS (MiB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mixed(out: dict, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("met_share", "latency budgets met at the client"),
              ("effective_accuracy", "effective accuracy"),
              ("throughput_rps", "answers per second"))
    for ax, (key, title) in zip(axes, panels):
        for run in out["runs"]:
            conc = [lv["concurrency"] for lv in run["levels"]]
            ax.plot(conc, [lv[key] if lv[key] is not None else np.nan for lv in run["levels"]],
                    marker="o", label=run["policy"])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("closed-loop clients")
        ax.set_xticks([lv["concurrency"] for lv in out["runs"][0]["levels"]])
        ax.grid(alpha=0.3)
        if key != "throughput_rps":
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle("mixed budgets " + ", ".join(out["mix"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(name: str, payload: dict, out_dir: Path) -> Path:
    if out_dir.resolve() == RESULTS.resolve():
        return save(name, payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
