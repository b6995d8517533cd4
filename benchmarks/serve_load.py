"""Load benchmark of the real BentoML server (issue 5), with a soak mode (issue 7).

Starts `bentoml serve` from the repository root on a free loopback port (or uses a running one,
--url), waits for /readyz, uploads real H.264 clips to POST /classify from bounded concurrent
clients, cycling over the budgets, and prints one table per concurrency level:

    python benchmarks/serve_load.py --concurrency 1,4 --requests 40
    python benchmarks/serve_load.py --checkpoint runs/nano --duration 60 \\
        --budgets ms:40,ms:80,ms:200,gflops:0.1,none
    python benchmarks/serve_load.py --checkpoint runs/nano --data data/synthetic/manifest.csv
                                                    # the test split's clips; top-1 per budget
    python benchmarks/serve_load.py --url http://127.0.0.1:3000 --concurrency 8 --requests 200
    python benchmarks/serve_load.py --soak 600 --hostile 0.1      # issue 7, concurrency 8

Columns (200 answers only, except `errors` and `met`): req/s answered per second of the
level's wall time; p50/p95/p99 client-side latency (upload to parsed answer); `srv p50` the
server's timing_ms.total (arrival to answer); `ovh p50` total - (decode + preprocess + model),
i.e. upload, probe, queue and handling; `queue p50` the waits for a decoder and the model;
`feas` answers whose budget the server predicted feasible (budget.feasible) out of those with a
budget; `met` the
share of requests with budget_ms answered 200 within it at the client, every such request
counted (late ones, errors and the ones predicted infeasible too; the JSON also keeps
`hit_rate`, budget.met among the answers predicted feasible, which hides those);
`config` the configuration run most often (frames x pixels / patch); `errors` non-200 answers by
status (`exc` a transport error or timeout); `top1` with --data, the answer's first label
against the manifest's.

Budgets: `ms:80` (budget_ms), `gflops:0.1` (budget_gflops), `none`, or both joined with `+`
(`ms:80+gflops:0.1`). Clips: by default --clips synthetic-benchmark clips (video/synthetic.py,
--clip-size px, --clip-frames frames, 16 fps, H.264) rendered into a temporary directory.

Checkpoint: --checkpoint, else STRETCHYSNAKE_CHECKPOINT, else the service's default
(checkpoints/stretchysnake_nano); while that is not trained yet, fresh `--preset` weights with the
synthetic benchmark's 21 classes (latencies are real, labels noise; said on stderr and in the
JSON). Uploads go to a fresh STRETCHYSNAKE_TMPDIR, checked for leftovers at the end.

Soak (--soak SECONDS): mixed traffic at --concurrency (default 8) for that long, a --hostile share
of it hostile uploads (empty, a text file named .mp4, a truncated mp4, a bit-flipped mp4, a PNG
image) that must be answered 4xx, never 5xx; reports the 5xx count, statuses of hostile and
valid requests, the RSS of the server's process tree over time (psutil; by role: root, workers,
decoding processes) and its growth after --soak-warmup, worker restarts (a new worker pid),
temporary files left behind, p99 and budgets met per budget. Exit status 1 when a check fails
(RSS growth is judged over 60 s or more after warm-up, "not measured" on shorter soaks).

Mixed budgets (--mixed, issue 29): every request draws its budget from --mix (default: 60, 100,
150, 250 and 500 ms, or none), the same sequence for every policy of --policies (default
deadline,fifo: one server each, all started first, so that one run shows them side by side; a
policy may carry settings of its own, deadline:URGENT_SLOTS=0 for the scheduler without its
urgent lane). The policies take turns at each level, in --rounds slices of it (this host's speed
drifts within minutes: 3 rounds put each policy in every part of the run). Per
concurrency level and policy: the share of latency budgets met at the client (a 200 answer
within budget_ms of sending it; every budgeted request counts, errors and late answers too),
the effective accuracy (correct and within budget, over all budgeted requests; needs --data),
throughput, and p50/p99 client latency per budget. Writes serve_mixed.{json,png}:

    python benchmarks/serve_load.py --mixed --data data/synthetic/manifest.csv \
        --concurrency 1,4,8 --duration 60 --rounds 3

Frontier (--frontier, with --data at concurrency 1): after the budgeted requests, every profiled
configuration forced on the same clips, and per budget the best fixed configuration that fits
(met on >= 99% of the clips) against the budgeted server's top-1.

Writes benchmarks/results/serve_load.{json,png} or serve_soak.{json,png} (--out-dir elsewhere).
A progress line goes to stderr. This file holds the runs and the command line; the clients, the
server's lifecycle and what is reported are in benchmarks/load/ (clients.py, servers.py,
report.py).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, print_table  # noqa: E402
from benchmarks.load.clients import (DEFAULT_BUDGETS, DEFAULT_MIX, HOSTILE_KINDS,  # noqa: E402
                                     Budget, Upload, dataset_clips, hostile_uploads, mixed_job,
                                     render_clips, run_clients, send)
from benchmarks.load.report import (by_status, fmt_ms, pct, plot_load, plot_mixed,  # noqa: E402
                                    plot_soak, summarize, summarize_mixed, table_row, write)
from benchmarks.load.servers import (ServerTree, leak_verdict, leftovers,  # noqa: E402
                                     policy_env, profile_configs, server, server_profile)
from serving.testing import REPO  # noqa: E402


# ----------------------------------------------------------------------------- the runs
def warm_up(url: str, clips: list[Upload], budgets: list[Budget], n: int, timeout: float):
    if n <= 0:
        return
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for i in range(n):
            send(client, clips[i % len(clips)], budgets[i % len(budgets)])


def run_load(args, url: str, clips: list[Upload], budgets: list[Budget]) -> dict:
    def job(i):
        return clips[(i // len(budgets)) % len(clips)], budgets[i % len(budgets)]

    levels = []
    for conc in args.concurrency:
        results, wall = run_clients(url, job, conc, None if args.duration else args.requests,
                                    args.duration, args.timeout, f"concurrency {conc}")
        rows = [summarize([r for r in results if r.budget == b.name], wall, b.name)
                for b in budgets]
        overall = summarize(results, wall, "all")
        levels.append({"concurrency": conc, "wall_s": round(wall, 2), "budgets": rows,
                       "all": overall})
        print_table([table_row(r) for r in rows + [overall]],
                    [c for c in table_row(overall) if c != "conc"],
                    title=f"concurrency {conc}: {len(results)} requests in {wall:.1f} s, "
                          f"{overall['throughput_rps']:.2f} req/s answered")
    return {"levels": levels}


def run_mixed(args, work: Path, clips: list[Upload], mix: list[Budget]) -> dict:
    """Every policy's server runs at once (idle while another is measured), and the levels are
    measured in --rounds rounds, each policy in turn within a level and a round: the host's
    speed drifts within minutes, and policies measured one after the other (as before) were
    measured on different hosts."""
    job = mixed_job(clips, mix, args.seed)
    rounds = args.rounds
    with contextlib.ExitStack() as stack:
        servers = []
        for policy in args.policies:
            url, _, tmpdir, info = stack.enter_context(server(args, work, policy))
            info["profile"] = server_profile(url)
            warm_up(url, clips, [Budget.parse("none")],
                    3 * len(mix) if args.warmup is None else args.warmup, args.timeout)
            servers.append((policy, url, tmpdir, info))
        results_of = collections.defaultdict(list)   # (policy, level) -> its slices' results
        wall_of = collections.Counter()                # and their seconds
        for r in range(rounds):
            # each round a sequence of draws of its own, the same for every policy and level
            offset = r * 10 ** 9

            def draw(i, offset=offset):
                return job(offset + i)
            for conc in args.concurrency:
                for policy, url, _, _ in servers:
                    results, wall = run_clients(
                        url, draw, conc,
                        None if args.duration else max(1, -(-args.requests // rounds)),
                        args.duration / rounds if args.duration else None, args.timeout,
                        f"{policy}, concurrency {conc}"
                        + (f", round {r + 1}/{rounds}" if rounds > 1 else ""))
                    results_of[policy, conc] += results
                    wall_of[policy, conc] += wall
        runs = []
        for policy, _, tmpdir, info in servers:
            info["tmp_files_left"] = leftovers(tmpdir)
            runs.append({"policy": policy, "server": info, "rounds": rounds, "levels": [
                {"concurrency": conc,
                 **summarize_mixed(results_of[policy, conc], wall_of[policy, conc], mix)}
                for conc in args.concurrency]})
    rows = []
    for conc in args.concurrency:
        for run in runs:
            level = next(lv for lv in run["levels"] if lv["concurrency"] == conc)
            row = {"conc": conc, "policy": run["policy"],
                   "req/s": round(level["throughput_rps"], 1),
                   "met": f"{level['met']}/{level['latency_budgeted']}"
                          f" {level['met_share']:.1%}" if level["met_share"] is not None else "-",
                   "eff. acc": "-" if level["effective_accuracy"] is None
                   else f"{level['effective_accuracy']:.1%}",
                   "errors": " ".join(f"{k}:{v}" for k, v in level["errors_by_status"].items())
                   or "-"}
            for b in level["budgets"]:
                ms = b["client_ms"]
                row[b["budget"]] = f"{fmt_ms(ms['p50'])}/{fmt_ms(ms['p99'])}"
            rows.append(row)
    print_table(rows, list(rows[0]), title="mixed budgets, closed-loop clients: latency budgets "
                "met at the client, effective accuracy (correct and in time, over all budgeted "
                "requests), throughput; per budget p50/p99 client ms")
    return {"mix": [b.name for b in mix], "runs": runs}


def run_frontier(args, url: str, clips: list[Upload], budgets: list[Budget], served: dict,
                 configs: list[dict]) -> dict:
    """Issue 5's accuracy target: every profiled configuration as a fixed one (the frames,
    pixels and patch overrides, no budget) on every clip at concurrency 1, then per budget the
    best fixed configuration that fits it (met on >= 99% of the clips, measured by the server's
    total time; GFLOPs <= a GFLOP budget) against what the budgeted server answered on the same
    clips (`served`: the concurrency-1 level of run_load)."""
    fixed = []
    for c in configs:
        key = f"{c['frames']}x{c['pixels']}/{c['patch']}"
        only = Budget(f"fixed {key}", {n: str(c[n]) for n in ("frames", "pixels", "patch")})
        results, _ = run_clients(url, lambda i, b=only: (clips[i % len(clips)], b), 1,
                                 len(clips), None, args.timeout, f"fixed {key}")
        row = summarize(results, 1.0, only.name)
        totals = [r.timing("total") for r in results if r.ok]
        fixed.append({"config": key, "gflops": c["gflops"], "top1": row["top1"],
                      "ok": row["ok"], "total_ms": {"p50": pct(totals, 50),
                                                    "p99": pct(totals, 99)},
                      "totals": totals})
    by_budget = {r["budget"]: r for r in served["budgets"]}
    rows = []
    for b in budgets:
        gflops = float(b.params["budget_gflops"]) if "budget_gflops" in b.params else None
        if b.ms is None and gflops is None:
            continue
        fits = [f for f in fixed if f["ok"] == len(clips) and f["top1"] is not None
                and (gflops is None or f["gflops"] <= gflops)
                and (b.ms is None or np.mean(np.asarray(f["totals"]) <= b.ms) >= 0.99)]
        best = max(fits, key=lambda f: (f["top1"], -f["gflops"]), default=None)
        got = by_budget[b.name]["top1"]
        rows.append({"budget": b.name, "served_top1": got, "served_configs":
                     by_budget[b.name]["configs"],
                     "best_fixed": best and best["config"],
                     "best_fixed_top1": best and best["top1"],
                     "fixed_that_fit": [f["config"] for f in fits],
                     "served_at_least_fixed": None if best is None or got is None
                     else got >= best["top1"]})
    for f in fixed:
        del f["totals"]
    print_table([{"config": f["config"], "gflops": round(f["gflops"], 3),
                  "top1": "-" if f["top1"] is None else f"{f['top1']:.1%}",
                  "srv p50": fmt_ms(f["total_ms"]["p50"]), "srv p99": fmt_ms(f["total_ms"]["p99"])}
                 for f in fixed], ["config", "gflops", "top1", "srv p50", "srv p99"],
                title=f"fixed configurations, {len(clips)} clips each, concurrency 1")
    print_table([{"budget": r["budget"],
                  "served": "-" if r["served_top1"] is None else f"{r['served_top1']:.1%}",
                  "best fixed that fits": r["best_fixed"] or "none fits",
                  "its top1": "-" if r["best_fixed_top1"] is None
                  else f"{r['best_fixed_top1']:.1%}",
                  "served >= fixed": {None: "-", True: "yes", False: "NO"}[
                      r["served_at_least_fixed"]]} for r in rows],
                ["budget", "served", "best fixed that fits", "its top1", "served >= fixed"],
                title="accuracy at each budget: budgeted server vs the best fixed configuration "
                      "that fits (>= 99% of clips within the budget)")
    return {"clips": len(clips), "fixed": fixed, "budgets": rows}


def run_soak(args, url: str, clips: list[Upload], budgets: list[Budget], hostile: list[Upload],
             pid: int | None) -> dict:
    rng = random.Random(args.seed)
    plan_lock = threading.Lock()
    plan: list[tuple[Upload, Budget]] = []   # request i -> what it sends, drawn in order of i
    counts = collections.Counter()

    def job(i):
        with plan_lock:  # the same mix whatever the thread interleaving
            while len(plan) <= i:
                budget = budgets[len(plan) % len(budgets)]
                if rng.random() < args.hostile:
                    upload = hostile[counts["hostile"] % len(hostile)]
                    counts["hostile"] += 1
                else:
                    upload = clips[counts["valid"] % len(clips)]
                    counts["valid"] += 1
                plan.append((upload, budget))
            return plan[i]

    every = max(0.5, min(5.0, args.soak / 60))
    with ServerTree(pid, every) as tree:
        results, wall = run_clients(url, job, args.concurrency[0], None, args.soak, args.timeout,
                                    f"soak, concurrency {args.concurrency[0]}")
    valid = [r for r in results if r.kind == "valid"]
    bad = [r for r in results if r.kind != "valid"]
    by_kind = {k: by_status([r for r in bad if r.kind == k], include_ok=True)
               for k in HOSTILE_KINDS}
    not_4xx = collections.Counter(f"{r.kind}:{r.status or 'exc'}" for r in bad
                                  if not 400 <= r.status < 500)
    rows = [summarize([r for r in valid if r.budget == b.name], wall, b.name) for b in budgets]
    five = sum(r.status >= 500 for r in results)
    return {
        "seconds": args.soak, "wall_s": round(wall, 2), "concurrency": args.concurrency[0],
        "hostile_share": args.hostile, "requests": len(results),
        "throughput_rps": len(results) / wall if wall else None,
        "status_5xx": five,
        "valid": {"requests": len(valid), "ok": sum(r.ok for r in valid),
                  "errors_by_status": by_status(valid)},
        "hostile": {"requests": len(bad), "by_kind": by_kind,
                    "codes_by_kind": {k: dict(collections.Counter(
                        r.error for r in bad if r.kind == k and r.error)) for k in HOSTILE_KINDS},
                    "not_4xx": dict(sorted(not_4xx.items()))},
        "budgets": rows, "rss_mb": tree.report(args.soak_warmup),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("the server")
    g.add_argument("--url", help="use this running server instead of starting one")
    g.add_argument("--checkpoint", default=os.environ.get("STRETCHYSNAKE_CHECKPOINT") or None,
                   help="served checkpoint (default: $STRETCHYSNAKE_CHECKPOINT, else the "
                        "service's default, else fresh --preset weights)")
    g.add_argument("--preset", default="nano",
                   help="preset of the fresh weights served when no checkpoint exists (nano)")
    g.add_argument("--profile", help="STRETCHYSNAKE_PROFILE for the server (default: "
                                     "profiles/<device>.json, else a quick self-profile)")
    g.add_argument("--threads", type=int, help="STRETCHYSNAKE_THREADS (torch threads per worker)")
    g.add_argument("--workers", type=int, help="BentoML workers (each loads the model)")
    g.add_argument("--start-timeout", type=float, default=600,
                   help="seconds to wait for /readyz (600)")
    g.add_argument("--server-pid", type=int,
                   help="with --url: the server's pid, for RSS (default: the port's listener)")
    g.add_argument("--server-tmpdir", type=Path,
                   help="with --url: its STRETCHYSNAKE_TMPDIR, checked for leftovers")
    g = ap.add_argument_group("the load")
    g.add_argument("--budgets", default=DEFAULT_BUDGETS,
                   help=f"comma-separated, cycled over (default {DEFAULT_BUDGETS})")
    g.add_argument("--concurrency", help="levels run in turn, e.g. 1,4 (default 1,4; soak 8)")
    g.add_argument("--requests", type=int, default=50, help="requests per level (50)")
    g.add_argument("--duration", type=float, help="seconds per level instead of --requests")
    g.add_argument("--warmup", type=int, help="unrecorded requests first (default: one per "
                                              "budget)")
    g.add_argument("--timeout", type=float, default=120, help="per request, seconds (120)")
    g.add_argument("--frontier", action="store_true",
                   help="with --data and a first --concurrency of 1: also every profiled "
                        "configuration as a fixed one on the same clips, and per budget the "
                        "best fixed configuration that fits against the budgeted answers")
    g = ap.add_argument_group("mixed budgets (issue 29)")
    g.add_argument("--mixed", action="store_true",
                   help="each request draws its budget from --mix; one server per --policies")
    g.add_argument("--mix", default=DEFAULT_MIX, help=f"budgets drawn from (default {DEFAULT_MIX})")
    g.add_argument("--rounds", type=int, default=1,
                   help="measure each level in this many slices, the policies taking turns "
                        "(--duration split between them, --requests too, rounded up; 1)")
    g.add_argument("--policies", default="deadline,fifo",
                   help="STRETCHYSNAKE_SCHEDULER of each server, side by side, each with "
                        "settings of its own if given: deadline:URGENT_SLOTS=0 (deadline,fifo)")
    g = ap.add_argument_group("the clips")
    g.add_argument("--data", type=Path, help="a manifest.csv: its --split clips, and top-1")
    g.add_argument("--split", default="test")
    g.add_argument("--clips", type=int, help="number of clips (generated: 4; --data: all)")
    g.add_argument("--clip-size", type=int, default=128, help="generated clips' side (128)")
    g.add_argument("--clip-frames", type=int, default=64, help="generated clips' frames (64)")
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("soak (issue 7)")
    g.add_argument("--soak", type=float, metavar="SECONDS", help="soak for this long instead")
    g.add_argument("--hostile", type=float, default=0.1, help="hostile share in soak (0.1)")
    g.add_argument("--soak-warmup", type=float, default=60, metavar="SECONDS",
                   help="RSS growth is counted from this point of the soak (60)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where JSON/PNG go")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    try:
        args.budget_list = [Budget.parse(b) for b in args.budgets.split(",") if b.strip()]
        args.mix_list = [Budget.parse(b) for b in args.mix.split(",") if b.strip()]
        args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        for policy in args.policies:
            policy_env(policy)
        levels = args.concurrency or ("8" if args.soak else "1,4,8" if args.mixed else "1,4")
        args.concurrency = [int(c) for c in levels.split(",") if c.strip()]
    except ValueError as e:
        ap.error(str(e))
    if not args.budget_list:
        ap.error("--budgets is empty")
    if not args.concurrency or min(args.concurrency) < 1:
        ap.error("--concurrency takes positive integers, e.g. 1,4")
    if args.soak is not None and (args.soak <= 0 or len(args.concurrency) != 1):
        ap.error("--soak takes seconds > 0 and one --concurrency level")
    if not 0 <= args.hostile <= 1:
        ap.error("--hostile is a share between 0 and 1")
    if args.requests < 1 or (args.duration is not None and args.duration <= 0):
        ap.error("--requests and --duration must be positive")
    if args.mixed and (args.soak is not None or args.frontier or args.url):
        ap.error("--mixed starts its own servers: no --soak, --frontier or --url")
    if args.mixed and (not args.mix_list or not args.policies):
        ap.error("--mixed needs a --mix and --policies")
    if args.rounds < 1 or (args.rounds > 1 and not args.mixed):
        ap.error("--rounds takes a positive number, and more than 1 only with --mixed")
    if args.frontier and (not args.data or args.soak is not None or args.concurrency[0] != 1
                          or args.duration is not None):
        ap.error("--frontier needs --data, a first --concurrency of 1 and --requests (every "
                 "budget must see the same clips), and no --soak")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    budgets = args.budget_list
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        if args.data:
            clips = dataset_clips(args.data, args.split, args.clips)
            source = {"data": str(args.data), "split": args.split, "clips": len(clips)}
        else:
            n = args.clips or 4
            print(f"rendering {n} synthetic clips ({args.clip_frames} frames at "
                  f"{args.clip_size} px, H.264)", file=sys.stderr)
            clips = render_clips(work / "clips", n, args.clip_size, args.clip_frames, args.seed)
            source = {"generated": len(clips), "size": args.clip_size, "frames": args.clip_frames,
                      "fps": 16, "codec": "h264",
                      "bytes": [len(c.data) for c in clips]}
        if args.mixed:
            out = run_mixed(args, work, clips, args.mix_list)
            write("serve_mixed.json", {"mode": "mixed", "clips": source, **out}, args.out_dir)
            png = None if args.no_plot else plot_mixed(out, args.out_dir / "serve_mixed.png")
            if png:
                print(f"wrote {png}")
            return 0
        hostile = hostile_uploads(work / "hostile", clips[0].data) if args.soak else []
        if args.frontier:  # every budget sees every clip once
            args.requests = len(clips) * len(budgets)
        with server(args, work) as (url, pid, tmpdir, info):
            info["profile"] = server_profile(url)
            warm_up(url, clips, budgets, len(budgets) if args.warmup is None else args.warmup,
                    args.timeout)
            if args.soak:
                out = run_soak(args, url, clips, budgets, hostile, pid)
            else:
                out = run_load(args, url, clips, budgets)
                if args.frontier:
                    out["frontier"] = run_frontier(args, url, clips, budgets,
                                                   out["levels"][0], profile_configs(url))
            left = leftovers(tmpdir)
        payload = {"mode": "soak" if args.soak else "load", "server": info, "clips": source,
                   "budgets": [b.name for b in budgets], **out, "tmp_files_left": left}
    name = "serve_soak" if args.soak else "serve_load"
    status = 0
    if args.soak:
        checks = {"no_5xx": out["status_5xx"] == 0,
                  "hostile_all_4xx": not out["hostile"]["not_4xx"],
                  "no_temp_files_left": not left,
                  "rss_growth_under_10pct": leak_verdict(out["rss_mb"]),
                  "no_tracebacks_in_log": not info.get("tracebacks_in_log"),
                  # a worker that crashed is restarted by BentoML under a new pid
                  "no_worker_restarts": None if not out["rss_mb"]["worker_pids"] else
                  max(out["rss_mb"]["worker_pids"].values()) <= out["rss_mb"]["samples"][0][0]}
        payload["checks"] = checks
        print_table([{"budget": r["budget"], "n": r["requests"], "ok": r["ok"],
                      "p50": fmt_ms(r["client_ms"]["p50"]), "p99": fmt_ms(r["client_ms"]["p99"]),
                      "srv p99": fmt_ms(r["server_total_ms"]["p99"]),
                      "met": "-" if r["met"] is None else f"{r['met']}/{r['ok']}",
                      "at client": "-" if r["met_at_client"] is None
                      else f"{r['met_at_client']:.0%}",
                      "errors": " ".join(f"{k}:{v}" for k, v in r["errors_by_status"].items())
                      or "-"} for r in out["budgets"]],
                    ["budget", "n", "ok", "p50", "p99", "srv p99", "met", "at client", "errors"],
                    title=f"soak: {out['requests']} requests in {out['wall_s']} s at concurrency "
                          f"{out['concurrency']}, {out['hostile']['requests']} hostile")
        rss = out["rss_mb"]
        print(f"\n5xx: {out['status_5xx']}   valid non-200: {out['valid']['errors_by_status']}")
        print("hostile by kind: " + "; ".join(f"{k} {v}" for k, v in
                                              out["hostile"]["by_kind"].items()))
        growth = rss["growth_after_warmup"]
        print(f"server RSS MiB: start {rss['start']}, at {rss['warmup_s']:g} s "
              f"{rss['after_warmup']}, max {rss['max']}, end {rss['end']}; growth after warm-up "
              f"{'-' if growth is None else f'{growth:+.1%}'}   "
              f"temp files left: {left if left is not None else 'unknown (--server-tmpdir)'}")
        print("checks: " + ", ".join(
            f"{k} {'not measured' if v is None else 'ok' if v else 'FAILED'}"
            for k, v in checks.items()))
        status = 0 if all(v is not False for v in checks.values()) else 1
    elif left:
        print(f"temporary files left in the server's upload directory: {left}")
    write(f"{name}.json", payload, args.out_dir)
    if not args.no_plot:
        png = (plot_soak(out["rss_mb"], args.out_dir / f"{name}.png") if args.soak
               else plot_load(out["levels"], args.out_dir / f"{name}.png"))
        if png:
            png = png.resolve()
            print(f"wrote {png.relative_to(REPO) if png.is_relative_to(REPO) else png}")
    return status


if __name__ == "__main__":
    sys.exit(main())
