"""The request scheduler: which request runs next, at which configuration, and on which stage.

A request enters once its upload is complete and its video probed, and leaves with its answer.
It passes two stages that use different resources and overlap: decode (and preprocess) in one
of `decode_slots` decoding processes, then the model, which runs one batch at a time. While the
model runs one request, the decoders work on the next ones.

The `deadline` policy (the default; SuperServe's slack-driven choice on a weight-shared network,
NSDI 2025, and Clockwork's deadline order, OSDI 2020):

- Deadline = arrival + budget_ms - margin_ms (the margin is what the answer needs to reach the
  client). A request without a latency budget (a GFLOP budget only, or none) gets arrival +
  default_deadline_ms.
- Order: first the requests that have waited age_bound_ms, oldest first (nothing starves);
  then those with a latency budget that they can still meet; then those without one and those
  that can no longer meet theirs (late work must not make the rest late too); least slack
  first within each tier.
- The configuration is chosen when the decode starts (it fixes how many frames are decoded and
  at which size), across the queue: for each option of the request at the head, a rollout gives
  every request behind it, in order, the most valuable option that still meets its deadline,
  and the head takes the option whose rollout meets the most deadlines, then has the highest
  summed value (expected accuracy). A cheaper option for one request so that the ones behind it
  finish in time is the point. While others wait (the server is the bottleneck), an option
  within near_value of the most valuable counts as good as it, and the fastest of them runs:
  on 2 cores, 8 x 56 px / patch 28 (98.3%) costs a quarter of the model time of patch 8 (100%),
  time that the requests behind it need.
- A request that can meet its deadline at no option runs the most valuable one among those
  predicted to finish about as early as the fastest (within late_slack_ms plus late_slack of its
  time so far): late, but not also wrong. With `strict` it is refused instead, as soon as that
  is known: at submission (with the budget that would be feasible under the current queue), or
  when it reaches the head.
- On a CPU the decoders and the model share the cores, and work started beside a request slows
  it down: a request that can wait (no latency budget, or slack for twice its work) does not
  start while a request in flight has less slack than that work, and leaves one decoder free
  while requests that cannot wait keep coming, so that the next one starts at once (Clockwork
  keeps capacity for the deadline it knows of; this keeps it for the next one).
- With urgent_slots, a request with a latency budget that cannot wait, and whose decode could
  still end before its deadline, may take an urgent slot while every decode slot is busy; the
  caller runs the decode slots at a lower priority (niced processes), so the urgent decode gets
  the cores at once. Work that can wait never takes an urgent slot.
- The model takes the ready request with the least slack. On devices that batch (max_batch > 1),
  ready requests of the same configuration join it while the predicted batch time keeps every
  member within its deadline (the most urgent one's slack decides).

The `fifo` policy is the path before this scheduler, kept for comparison: arrival order, one
request at a time through decode and model, the configuration chosen with only the time already
spent in view.

The scheduler is pure: no threads and no clock of its own. Its methods take `now` (ms) and
return what to start (`Decode`, `Model`) or whom to refuse (`Refuse`); `serving.runner` drives
it with the real stages, and `simulate` below with a fake clock and fake stages (tests).
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .selector import Key, Option, select

POLICIES = ("deadline", "fifo")


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str = "deadline"
    decode_slots: int = 2           # decodes at once (decoding processes kept busy)
    max_batch: int = 1              # requests per model run (1 on CPUs: a batch costs its sum)
    margin_ms: float = 5.0          # the deadline is this much before arrival + budget_ms
    default_deadline_ms: float = 1000.0   # for requests without a latency budget
    age_bound_ms: float = 1000.0    # requests that waited this long go first
    late_slack_ms: float = 5.0      # "about as early as the fastest" for a late request:
    late_slack: float = 0.1         # within this many ms plus this share of its time so far
    near_value: float = 0.02        # under load, options this close to the most valuable count
                                    # as good as it, and the fastest of them runs
    safety: float = 0.1             # on time: predicted finish plus this share of the work
                                    # predicted from now, within the deadline
    shared_cores: bool = False      # the stages share the cores (a CPU): work that can wait
                                    # does not start beside a request that cannot, and leaves
    urgent_window_ms: float = 1000.0  # one decoder free for such a request while one came
                                    # in this window
    urgent_slots: int = 0           # decodes beyond decode_slots for requests that cannot wait,
                                    # run at normal priority while the decode_slots run niced
                                    # (the caller's decoding processes), so the kernel gives
                                    # the urgent decode the cores
    lookahead: int = 16             # requests behind the head that a rollout considers

    def __post_init__(self):
        problems = []
        if self.name not in POLICIES:
            problems.append(f"policy must be one of {', '.join(POLICIES)}, not {self.name!r}")
        for name in ("decode_slots", "max_batch", "lookahead"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.urgent_slots < 0:
            problems.append(f"urgent_slots must be at least 0, not {self.urgent_slots}")
        for name in ("margin_ms", "default_deadline_ms", "age_bound_ms", "late_slack_ms",
                     "late_slack", "near_value", "safety", "urgent_window_ms"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be a finite number >= 0, not {v!r}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclasses.dataclass(eq=False)
class Request:
    """One request as the scheduler sees it. `options`: the configurations it may run (within
    its GFLOP budget), with predicted stage times for its video; `payload`: the caller's."""

    arrival: float                        # ms on the scheduler's clock
    options: tuple[Option, ...]
    budget_ms: float | None = None
    strict: bool = False
    payload: Any = None
    # set by the scheduler
    id: int = -1
    submitted: float = math.nan           # when it reached the scheduler
    deadline: float = math.inf
    option: Option | None = None          # chosen when the decode starts
    lane: str | None = None               # its decode's slot: "urgent" or "background"
    state: str = "new"                    # pending, decoding, ready, running, done, refused
    late: bool = False                    # predicted to miss its deadline (then: cause)
    cause: str | None = None              # queue, upload, decode or model
    slack_ms: float | None = None         # deadline - predicted finish, at decode dispatch
    predicted_finish: float | None = None
    decode_start: float | None = None
    decode_end: float | None = None
    model_start: float | None = None
    model_end: float | None = None
    batch_size: int = 1

    @property
    def budgeted(self) -> bool:
        return self.budget_ms is not None

    @functools.cached_property
    def fastest(self) -> Option:
        return min(self.options, key=lambda o: (o.total_ms, -o.value, o.key))

    @functools.cached_property
    def frontier(self) -> list[Option]:
        """The options worth considering (`_frontier`), computed once."""
        return _frontier(self.options)


# ----------------------------------------------------------------------------- actions
@dataclasses.dataclass(frozen=True)
class Decode:
    """Start decoding `request` at `request.option`."""
    request: Request


@dataclasses.dataclass(frozen=True)
class Model:
    """Run the model on these requests (one configuration) as one batch."""
    batch: tuple[Request, ...]

    @property
    def key(self) -> Key:
        return self.batch[0].option.key


@dataclasses.dataclass(frozen=True)
class Refuse:
    """A strict request that cannot meet its budget: refuse it now."""
    request: Request
    feasible_budget_ms: float     # the budget under which it would have been accepted now
    cause: str                    # queue, upload, decode or model
    retry_after_s: int | None     # when the cause is the queue: when it may have drained


Action = Decode | Model | Refuse


class Infeasible(Exception):
    """`submit` of a strict request that cannot meet its budget; `refusal` says why."""

    def __init__(self, refusal: Refuse):
        super().__init__(f"budget infeasible ({refusal.cause}): needs "
                         f"{refusal.feasible_budget_ms:.1f} ms")
        self.refusal = refusal


# ----------------------------------------------------------------------------- the scheduler
def default_batch_ms(option: Option, size: int) -> float:
    """A batch of `size` costs `size` runs (CPUs: no gain from batching)."""
    return option.model_ms * size


class Scheduler:
    """See the module docstring. Not thread-safe: the caller serialises the calls."""

    def __init__(self, policy: Policy = Policy(),
                 batch_ms: Callable[[Option, int], float] = default_batch_ms):
        self.policy = policy
        self.batch_ms = batch_ms
        self._ids = itertools.count()
        self.pending: list[Request] = []
        self.decoding: list[Request] = []
        self.ready: list[Request] = []
        self.running: tuple[Request, ...] = ()
        self._running_end = 0.0         # predicted end of the running batch
        self._last_urgent = -math.inf   # when the last request that could not wait came

    # -- the caller's events
    def submit(self, request: Request, now: float) -> list[Action]:
        """Queue a request (Infeasible for a strict one that cannot meet its budget now)."""
        if not request.options:
            raise ValueError("a request needs at least one option")
        p = self.policy
        request.id, request.submitted = next(self._ids), now
        if request.budgeted:
            request.deadline = request.arrival + request.budget_ms - p.margin_ms
        else:
            request.deadline = request.arrival + p.default_deadline_ms
        request.state = "pending"
        if request.strict and request.budgeted:
            refusal = self._admission_check(request, now)
            if refusal is not None:
                request.state = "refused"
                raise Infeasible(refusal)
        self.pending.append(request)
        if not self._can_wait_alone(request, now):
            self._last_urgent = now
        return self._dispatch(now)

    def decoded(self, request: Request, now: float, failed: bool = False) -> list[Action]:
        """The decode of `request` ended (failed: it leaves; its answer is an error)."""
        self.decoding.remove(request)
        request.decode_end = now
        if failed:
            request.state = "done"
        else:
            request.state = "ready"
            self.ready.append(request)
        return self._dispatch(now)

    def modelled(self, batch: Sequence[Request], now: float) -> list[Action]:
        """The model run of `batch` ended (with answers or with an error: they all leave)."""
        for r in batch:
            r.model_end = now
            r.state = "done"
        self.running = ()
        return self._dispatch(now)

    def cancel(self, request: Request, now: float) -> list[Action]:
        """The caller gave up on a request (its client went away): drop it if still pending."""
        if request in self.pending:
            self.pending.remove(request)
            request.state = "done"
        return self._dispatch(now)

    @property
    def idle(self) -> bool:
        return not (self.pending or self.decoding or self.ready or self.running)

    def depth(self) -> dict:
        return {"pending": len(self.pending), "decoding": len(self.decoding),
                "ready": len(self.ready), "running": len(self.running)}

    # -- dispatch
    def _dispatch(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self.pending:
            head, lane = self._next_decode(now)
            if head is None:
                break
            actions.append(self._start_decode(head, now, lane))
        if not self.running and self.ready:
            actions.append(self._start_model(now))
        return actions

    def _busy(self, lane: str) -> int:
        return sum(r.lane == lane for r in self.decoding)

    def _next_decode(self, now: float) -> tuple[Request | None, str | None]:
        """The request whose decode starts now and its lane, or (None, None). In priority order,
        the first that has a lane free: the urgent lane takes only requests that cannot wait
        (`_urgent`), the background lane any request, except that on shared cores work that can
        wait is held back (`_can_wait`; with the lane too: measured, starting it niced at once
        met fewer budgets), and then so is everything behind it, but for the urgent lane."""
        p = self.policy
        if p.name == "fifo":
            if self.decoding or self.ready or self.running:
                return None, None  # one request at a time through both stages
            return self._head(now), "background"
        background_free = self._busy("background") < p.decode_slots
        urgent_free = self._busy("urgent") < p.urgent_slots
        if not (background_free or urgent_free):
            return None, None
        held = False  # a request that can wait holds the background lane for those behind it
        for r in sorted(self.pending, key=lambda q: self._priority(q, now)):
            if urgent_free and self._urgent(r, now):
                return r, "urgent"
            if background_free and not held:
                if not (p.shared_cores and self._can_wait(r, now)):
                    return r, "background"
                held = True
            if held and not urgent_free:
                break
        return None, None

    def _urgent(self, r: Request, now: float) -> bool:
        """A request with a latency budget that cannot wait (`_can_wait_alone`) and whose
        decode could still end before its deadline: one predicted a little late may still be
        on time at the client (the predictions are padded p95s), and the lane is kept for
        such requests anyway."""
        return r.budgeted and now - r.arrival < self.policy.age_bound_ms and \
            not self._can_wait_alone(r, now) and now + r.fastest.decode_ms <= r.deadline

    def _can_wait_alone(self, r: Request, now: float) -> bool:
        """No latency budget, or slack for twice its own work; and not yet waited age_bound_ms
        (nothing starves)."""
        if now - r.arrival >= self.policy.age_bound_ms:
            return False
        work = r.fastest.total_ms
        return not r.budgeted or r.deadline - self._padded(now + work, now) >= 2 * work

    def _can_wait(self, r: Request, now: float) -> bool:
        """Shared cores: should `r`, which can wait, wait rather than start now? It does beside
        a request in flight whose slack is smaller than the work `r` would add, and it leaves
        one decoder free while requests that cannot wait keep coming (one came within
        urgent_window_ms), so that the next one starts at once. Measured on 2 cores with the
        mixed budgets (`benchmarks/serve_load.py --mixed`, concurrency 4 and 8): 73% and 66%
        of the budgets met without these rules (40 requests/s), 91% and 86% with them (31-33
        requests/s)."""
        if not self._can_wait_alone(r, now):
            return False
        if len(self.decoding) >= self.policy.decode_slots - 1 and self.policy.decode_slots > 1 \
                and now - self._last_urgent <= self.policy.urgent_window_ms:
            return True
        work = r.fastest.total_ms
        return any(not q.late and q.budgeted and q.slack_ms < work
                   for q in (*self.decoding, *self.ready, *self.running))

    def _head(self, now: float) -> Request:
        if self.policy.name == "fifo":
            return min(self.pending, key=lambda r: r.id)
        return min(self.pending, key=lambda r: self._priority(r, now))

    def _rank(self, r: Request, now: float, on_time: bool, work_ms: float) -> tuple:
        """Smaller runs first: requests that waited age_bound_ms (in arrival order), then those
        with a latency budget they can still meet, then the rest (without a budget, or late);
        least slack (deadline minus the work left) first within a tier."""
        if now - r.arrival >= self.policy.age_bound_ms:
            return 0, r.arrival, r.id
        return 1 if r.budgeted and on_time else 2, r.deadline - work_ms, r.id

    def _priority(self, r: Request, now: float) -> tuple:
        """For the decoders: the work left is the fastest option's."""
        fast = r.fastest
        return self._rank(r, now, self._finish_lower_bound(r, fast, now) <= r.deadline,
                          fast.total_ms)

    def _model_free(self, now: float) -> float:
        return max(now, self._running_end) if self.running else now

    def _finish_lower_bound(self, r: Request, o: Option, now: float) -> float:
        """No earlier than this can `r` finish at `o` if its decode started now."""
        return max(now + o.decode_ms, self._model_free(now)) + o.model_ms

    def _start_decode(self, r: Request, now: float, lane: str = "background") -> Action:
        self.pending.remove(r)
        r.lane = lane
        if self.policy.name == "fifo":
            option, finish = self._choose_alone(r, now)
            r.late = r.budgeted and finish > r.deadline
        else:
            option, finish = self._choose(r, now)
            r.late = r.budgeted and self._padded(finish, now) > r.deadline
        if r.late and r.strict:
            r.state = "refused"
            return self._refusal(r, now)
        r.option, r.predicted_finish = option, finish
        r.slack_ms = r.deadline - finish
        r.cause = self._cause(r, now) if r.late else None
        r.state, r.decode_start = "decoding", now
        self.decoding.append(r)
        return Decode(r)

    def _start_model(self, now: float) -> Action:
        if self.policy.name == "fifo":
            head = min(self.ready, key=lambda r: r.id)
        else:
            head = min(self.ready, key=lambda r: self._model_priority(r, now))
        batch = [head]
        if self.policy.max_batch > 1:
            same = sorted((r for r in self.ready
                           if r is not head and r.option.key == head.option.key),
                          key=lambda r: self._model_priority(r, now))
            alone = {m: now + self.batch_ms(m.option, 1) <= m.deadline for m in same}
            alone[head] = now + self.batch_ms(head.option, 1) <= head.deadline
            single = self.batch_ms(head.option, 1)
            for r in same[:self.policy.max_batch - 1]:
                cost = self.batch_ms(head.option, len(batch) + 1)
                if cost >= self.batch_ms(head.option, len(batch)) + single:
                    break  # no gain: a batch would only make its first member wait
                # every member that would be on time alone stays on time
                if all(now + cost <= m.deadline for m in (*batch, r) if alone[m]):
                    batch.append(r)
                else:
                    break
        for r in batch:
            self.ready.remove(r)
            r.state, r.model_start, r.batch_size = "running", now, len(batch)
        self.running = tuple(batch)
        self._running_end = now + self.batch_ms(head.option, len(batch))
        return Model(self.running)

    def _model_priority(self, r: Request, now: float) -> tuple:
        """For the model: the work left is its run."""
        return self._rank(r, now, now + r.option.model_ms <= r.deadline, r.option.model_ms)

    # -- choosing a configuration
    def _choose_alone(self, r: Request, now: float) -> tuple[Option, float]:
        """fifo: the most valuable option that fits the time left, with nothing else in view
        (nothing else runs); the fastest when none fits."""
        finishes = {o: now + o.total_ms for o in r.options}
        o = select(finishes, r.deadline) or r.fastest
        return o, finishes[o]

    def _padded(self, finish: float, now: float) -> float:
        """A predicted finish with room for the prediction's error, which grows with the work
        predicted: on time means padded finish <= deadline."""
        return finish + self.policy.safety * (finish - now)

    def _choose(self, head: Request, now: float) -> tuple[Option, float]:
        """The head's option by rollout over the queue (module docstring)."""
        base = self._timeline(now)
        behind = sorted(self.pending, key=lambda r: self._priority(r, now))
        behind = behind[:self.policy.lookahead]
        # others waiting: the server is the bottleneck, and time saved is time for them
        near = self.policy.near_value if behind or self.ready or self.decoding else 0.0
        alone = {o: base.finish(o) for o in head.options}   # behind the committed work
        padded = {o: self._padded(f, now) for o, f in alone.items()}
        if select(padded, head.deadline) is not None:
            allowed = [o for o in head.options if padded[o] <= head.deadline]
        else:  # late whatever it runs: only options about as fast as the fastest
            first = min(alone.values())
            tolerance = self.policy.late_slack_ms + self.policy.late_slack * (first - head.arrival)
            allowed = [o for o in head.options if alone[o] <= first + tolerance]
        scores = {o: self._rollout(base, head, o, behind, near, now) for o in _frontier(allowed)}
        most = max(met for met, _ in scores.values())
        contenders = {o: alone[o] for o, (met, _) in scores.items() if met == most}
        if near:
            best = select(contenders, math.inf, near)
        else:
            best = max(contenders, key=lambda o: (scores[o][1], o.value, -alone[o], -o.gflops))
        return best, alone[best]

    def _rollout(self, base: _Timeline, head: Request, option: Option,
                 behind: list[Request], near: float, now: float) -> tuple[int, float]:
        """(deadlines met, summed value of the answers on time) when `head` runs `option` and
        every request behind it, in order, the option `select` gives it (the most valuable on
        time, else its fastest)."""
        t = base.copy()
        finish = self._padded(t.add(option), now)
        met, value = (1, option.value) if finish <= head.deadline else (0, 0.0)
        for r in behind:
            finishes = {o: self._padded(t.finish(o), now) for o in r.frontier}
            best = select(finishes, r.deadline, near) or min(finishes, key=finishes.get)
            if self._padded(t.add(best), now) <= r.deadline:
                met += 1
                value += best.value
        return met, value

    def _timeline(self, now: float) -> _Timeline:
        """The decode slots and the model after the work already committed (requests decoding
        or ready, in the order they reach the model)."""
        reach = [(max(now, r.decode_start + r.option.decode_ms), r.option.model_ms)
                 for r in self.decoding]
        free = self.policy.decode_slots + self.policy.urgent_slots - len(reach)
        slots = [t for t, _ in reach] + [now] * max(0, free)
        reach += [(now, r.option.model_ms) for r in self.ready]
        model_free = self._model_free(now)
        for available, model_ms in sorted(reach):
            model_free = max(model_free, available) + model_ms
        return _Timeline(slots, model_free)

    # -- infeasible budgets
    def _admission_check(self, r: Request, now: float) -> Refuse | None:
        """None when a strict request can meet its budget behind the work ahead of it (each
        at its fastest option); else its refusal."""
        t = self._timeline(now)
        mine = self._priority(r, now)
        ranked = sorted((self._priority(q, now), q.id, q) for q in self.pending)
        for rank, _, q in ranked:
            if rank < mine:
                t.add(q.fastest)
        finish = self._padded(min(t.finish(o) for o in r.options), now)
        if finish <= r.deadline:
            return None
        return self._refusal(r, now, finish)

    def _refusal(self, r: Request, now: float, finish: float | None = None) -> Refuse:
        """`finish`: the earliest it could answer, with room for the prediction's error."""
        if finish is None:
            finish = self._padded(self._timeline(now).finish(r.fastest), now)
        cause = self._cause(r, now)
        need = finish - r.arrival + self.policy.margin_ms
        retry = None
        if cause == "queue":
            backlog = finish - now - r.fastest.total_ms
            retry = max(1, math.ceil(backlog / 1e3))
        return Refuse(r, math.ceil(need * 10) / 10, cause, retry)

    def _cause(self, r: Request, now: float) -> str:
        """Why `r` misses its deadline: decoding its video alone takes longer than its budget
        (decode), decode and the model take longer than what its upload and probe left, and
        those took a real share of it (upload) or not (model), or it would have fitted on an
        idle server (queue)."""
        room = r.deadline - r.arrival
        fastest = r.fastest
        before = r.submitted - r.arrival        # upload and probe
        if min(o.decode_ms for o in r.options) > room:
            return "decode"
        if r.submitted + fastest.total_ms > r.deadline:
            # the upload is to blame when it took a real share of the budget
            return "upload" if before > max(10.0, 0.1 * room) else "model"
        return "queue"


class _Timeline:
    """Predicted free times of the decode slots (a heap) and of the model, as requests are
    added in order: each decodes in the first free slot and reaches the model after the ones
    added before it."""

    __slots__ = ("slots", "model_free")

    def __init__(self, slots: list[float], model_free: float):
        self.slots = list(slots)
        heapq.heapify(self.slots)
        self.model_free = model_free

    def copy(self) -> _Timeline:
        return _Timeline(self.slots, self.model_free)

    def finish(self, o: Option) -> float:
        """When a request at `o` added now would finish (nothing changes)."""
        return max(self.model_free, self.slots[0] + o.decode_ms) + o.model_ms

    def add(self, o: Option) -> float:
        decoded = heapq.heappop(self.slots) + o.decode_ms
        heapq.heappush(self.slots, decoded)
        self.model_free = max(self.model_free, decoded) + o.model_ms
        return self.model_free


def _frontier(options: Iterable[Option]) -> list[Option]:
    """The options no other option beats on value, decode time and model time at once."""
    options = sorted(options, key=lambda o: (-o.value, o.decode_ms, o.model_ms, o.gflops, o.key))
    kept: list[Option] = []
    for o in options:
        if not any(k.decode_ms <= o.decode_ms and k.model_ms <= o.model_ms for k in kept):
            kept.append(o)
    return kept


# ----------------------------------------------------------------------------- simulation
@dataclasses.dataclass
class Outcome:
    request: Request
    finish: float | None          # ms; None when refused
    refused: Refuse | None = None

    @property
    def met(self) -> bool:
        r = self.request
        return self.finish is not None and (
            r.budget_ms is None or self.finish - r.arrival <= r.budget_ms)


def simulate(scheduler: Scheduler, arrivals: Sequence[Request] = (), *,
             clients: int = 0, count: int = 0,
             make: Callable[[int, float], Request] | None = None, think_ms: float = 0.0,
             decode_ms: Callable[[Request], float] | None = None,
             model_ms: Callable[[Sequence[Request]], float] | None = None) -> list[Outcome]:
    """Run requests through `scheduler` on a fake clock: the `arrivals` given (open loop), and/or
    `clients` closed-loop clients that send `count` requests in all, each `think_ms` after its
    previous answer (`make(i, arrival)` makes request i). The stages take what `decode_ms(request)`
    and `model_ms(batch)` say (by default exactly the chosen option's prediction: a machine that
    behaves as predicted). Returns one outcome per request, in the order they were sent."""
    decode_ms = decode_ms or (lambda r: r.option.decode_ms)
    model_ms = model_ms or (lambda batch: scheduler.batch_ms(batch[0].option, len(batch)))
    events: list = []             # (time, seq, kind, payload)
    seq = itertools.count()
    outcomes: dict[int, Outcome] = {}
    sent = itertools.count()

    def push(t, kind, payload):
        heapq.heappush(events, (t, next(seq), kind, payload))

    def start(actions, now):
        for a in actions:
            if isinstance(a, Decode):
                push(now + decode_ms(a.request), "decoded", a.request)
            elif isinstance(a, Model):
                push(now + model_ms(a.batch), "modelled", a.batch)
            else:
                answered(a.request, None, now, refused=a)

    def answered(r, finish, now, refused=None):
        outcomes[id(r)].finish, outcomes[id(r)].refused = finish, refused
        if r.payload == "closed loop":
            push(now + think_ms, "send", None)

    for r in arrivals:
        push(r.arrival, "arrive", r)
    for c in range(clients):
        push(0.0, "send", None)
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "send":
            i = next(sent)
            if i >= count:
                continue
            payload = make(i, now)
            payload.payload = "closed loop"
            kind = "arrive"
        if kind == "arrive":
            outcomes[id(payload)] = Outcome(payload, None)
            try:
                start(scheduler.submit(payload, now), now)
            except Infeasible as e:
                answered(payload, None, now, refused=e.refusal)
        elif kind == "decoded":
            start(scheduler.decoded(payload, now), now)
        else:
            for r in payload:
                answered(r, now, now)
            start(scheduler.modelled(payload, now), now)
    return sorted(outcomes.values(), key=lambda o: o.request.id)
