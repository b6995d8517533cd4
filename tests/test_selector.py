"""serving.selector: profile-table validation and loading, and the budget selector, checked on
hand-made tables and against a brute-force reference on seeded random tables."""
from __future__ import annotations

import copy
import json
import math
import random

import pytest

from serving.selector import ACCURACY_TIE, ProfileError, ProfileTable, Selection, select


def cfg(frames, pixels, patch, gflops, p95, accuracy=None, tokens=None, **extra):
    d = {"frames": frames, "pixels": pixels, "patch": patch,
         "tokens": tokens if tokens is not None else 1 + frames * (pixels // patch) ** 2,
         "gflops": gflops, "latency_ms": {"p50": p95 * 0.8, "p95": p95, "p99": p95 * 1.2},
         **extra}
    if accuracy is not None:
        d["accuracy"] = accuracy
    return d


def table_dict(*configs, **top):
    return {"meta": {"device": "cpu-2core", "threads": 2, "torch": "2.13.0", "date": "2025-01-01",
                     "command": "python -m serving.profile"}, "configs": list(configs), **top}


def table(*configs):
    return ProfileTable.from_dict(table_dict(*configs))


THREE = table(cfg(16, 224, 16, 90.0, 50.0, 0.90), cfg(8, 224, 16, 45.0, 20.0, 0.80),
              cfg(8, 128, 16, 15.0, 10.0, 0.70))
NO_ACC = table(cfg(16, 224, 16, 90.0, 50.0), cfg(8, 224, 16, 45.0, 20.0),
               cfg(8, 128, 16, 15.0, 10.0))


# ---- selection ----------------------------------------------------------------------------------

def test_highest_accuracy_that_fits():
    s = select(THREE, budget_ms=30.0)
    assert isinstance(s, Selection) and s.feasible
    assert s.config.key == (8, 224, 16)
    assert s.predicted_model_ms == 20.0 and s.predicted_total_ms == 20.0 and s.remaining_ms == 30.0
    assert s.reason.startswith("highest accuracy (0.8)") and "30.0 ms left" in s.reason
    assert s.cheapest_feasible_budget_ms is None and s.cheapest_feasible_budget_gflops is None
    assert select(THREE, budget_ms=50.0).config.key == (16, 224, 16)  # boundary: <= fits
    top = select(THREE)  # no budget: everything fits
    assert top.config.key == (16, 224, 16) and top.feasible and top.predicted_total_ms is None
    assert top.remaining_ms is None and "no budget" in top.reason


@pytest.mark.parametrize("b_changes, winner", [
    ({"gflops": 10.0}, "b"),                          # fewer GFLOPs wins the tie
    ({"gflops": 20.0, "p95": 5.0}, "b"),              # same GFLOPs: lower p95
    ({"gflops": 20.0, "p95": 10.0, "tokens": 50}, "b"),  # same p95: fewer tokens
    ({"gflops": 30.0}, "a"),
])
def test_accuracy_ties_go_to_the_cheaper(b_changes, winner):
    a = dict(gflops=20.0, p95=10.0, tokens=100)
    b = {**a, **b_changes}
    t = table(cfg(8, 224, 16, a["gflops"], a["p95"], 0.8, tokens=a["tokens"]),
              cfg(16, 112, 8, b["gflops"], b["p95"], 0.8 + ACCURACY_TIE / 10, tokens=b["tokens"]))
    keys = {"a": (8, 224, 16), "b": (16, 112, 8)}
    assert select(t, budget_ms=100.0).config.key == keys[winner]


def test_accuracy_difference_beyond_tie_wins_even_if_dearer():
    t = table(cfg(8, 224, 16, 20.0, 10.0, 0.8), cfg(16, 112, 8, 40.0, 10.0, 0.8 + 1e-6))
    assert select(t, budget_ms=100.0).config.key == (16, 112, 8)


def test_no_accuracy_most_gflops_that_fit():
    assert not NO_ACC.has_accuracy
    s = select(NO_ACC, budget_ms=30.0)
    assert s.config.key == (8, 224, 16) and s.feasible
    assert s.reason.startswith("no accuracy known: most GFLOPs that fit")
    # equal GFLOPs: the lower p95 wins
    t = table(cfg(8, 224, 16, 45.0, 20.0), cfg(16, 112, 8, 45.0, 15.0), cfg(4, 96, 8, 5.0, 1.0))
    assert select(t, budget_ms=30.0).config.key == (16, 112, 8)


def test_partial_accuracy_ranks_unknown_below_known():
    t = table(cfg(16, 224, 16, 90.0, 20.0), cfg(8, 224, 16, 45.0, 15.0, 0.6),
              cfg(8, 128, 16, 15.0, 10.0, 0.5), cfg(4, 96, 16, 3.0, 5.0), cfg(4, 64, 16, 2.0, 4.0))
    assert t.has_accuracy
    assert select(t, budget_ms=25.0).config.key == (8, 224, 16)  # unknown 90-GFLOP one loses
    s = select(t, budget_ms=6.0)  # only the unknown ones fit: most GFLOPs among them
    assert s.config.key == (4, 96, 16) and s.feasible
    assert s.reason.startswith("no fitting configuration has a known accuracy")


def test_infeasible_gives_cheapest_and_the_budget_that_would_fit():
    s = select(THREE, budget_ms=15.0, predicted_decode_ms=4.0, spent_ms=3.0)
    assert not s.feasible and s.config.key == (8, 128, 16)
    assert s.remaining_ms == pytest.approx(8.0)
    assert s.predicted_total_ms == pytest.approx(17.0)
    assert s.cheapest_feasible_budget_ms == pytest.approx(17.0)
    assert s.cheapest_feasible_budget_gflops is None
    assert s.reason == "infeasible: cheapest configuration, needs 10.0 ms, 8.0 ms left"
    again = select(THREE, budget_ms=s.cheapest_feasible_budget_ms, predicted_decode_ms=4.0,
                   spent_ms=3.0)
    assert again.feasible and again.config.key == (8, 128, 16)


def test_infeasible_cheapest_is_by_p95_with_ms_budget_and_by_gflops_without():
    t = table(cfg(8, 224, 16, 10.0, 30.0, 0.9), cfg(16, 112, 8, 20.0, 20.0, 0.8))
    assert select(t, budget_ms=5.0).config.key == (16, 112, 8)
    g = select(t, budget_gflops=5.0)
    assert not g.feasible and g.config.key == (8, 224, 16)
    assert g.cheapest_feasible_budget_gflops == 10.0 and g.cheapest_feasible_budget_ms is None
    assert "GFLOPs" in g.reason and g.predicted_total_ms is None


def test_gflops_budget_alone_and_with_ms():
    s = select(THREE, budget_gflops=50.0)
    assert s.config.key == (8, 224, 16) and s.feasible and s.predicted_total_ms is None
    assert "GFLOPs budget" in s.reason
    assert select(THREE, budget_gflops=100.0, budget_ms=60.0).config.key == (16, 224, 16)
    assert select(THREE, budget_gflops=20.0, budget_ms=60.0).config.key == (8, 128, 16)  # gflops binds
    assert select(THREE, budget_gflops=100.0, budget_ms=15.0).config.key == (8, 128, 16)  # ms binds
    both = select(THREE, budget_gflops=10.0, budget_ms=5.0)
    assert not both.feasible and both.cheapest_feasible_budget_ms == 10.0
    assert both.cheapest_feasible_budget_gflops == 15.0


def test_decode_and_spent_time_reduce_what_fits():
    assert select(THREE, budget_ms=52.0).config.key == (16, 224, 16)
    assert select(THREE, budget_ms=52.0, predicted_decode_ms=3.0).config.key == (8, 224, 16)
    assert select(THREE, budget_ms=52.0, spent_ms=3.0).config.key == (8, 224, 16)
    s = select(THREE, budget_ms=52.0, spent_ms=1.0, predicted_decode_ms=1.0)
    assert s.config.key == (16, 224, 16) and s.predicted_total_ms == 52.0


def test_latency_scale_changes_the_choice():
    assert select(THREE, budget_ms=30.0).config.key == (8, 224, 16)
    s = select(THREE, budget_ms=30.0, latency_scale={(8, 224, 16): 2.0})
    assert s.config.key == (8, 128, 16) and s.predicted_model_ms == 10.0
    s = select(THREE, budget_ms=30.0, latency_scale={(16, 224, 16): 0.5, (99, 1, 1): 3.0})
    assert s.config.key == (16, 224, 16) and s.predicted_model_ms == 25.0


def test_candidates_restrict_the_choice():
    s = select(THREE, budget_ms=100.0, candidates=[(8, 224, 16), [8, 128, 16]])
    assert s.config.key == (8, 224, 16)
    s = select(THREE, budget_ms=5.0, candidates={(8, 224, 16)})
    assert not s.feasible and s.config.key == (8, 224, 16) and s.cheapest_feasible_budget_ms == 20.0
    with pytest.raises(ValueError, match=r"not in the profile table: \(1, 2, 3\)"):
        select(THREE, candidates=[(1, 2, 3)])
    with pytest.raises(ValueError, match="empty"):
        select(THREE, candidates=[])


@pytest.mark.parametrize("kwargs, match", [
    ({"budget_ms": 0}, "budget_ms"), ({"budget_ms": -1.0}, "budget_ms"),
    ({"budget_ms": math.nan}, "budget_ms"), ({"budget_ms": math.inf}, "budget_ms"),
    ({"budget_ms": True}, "budget_ms"), ({"budget_ms": "50"}, "budget_ms"),
    ({"budget_gflops": 0.0}, "budget_gflops"), ({"budget_gflops": False}, "budget_gflops"),
    ({"predicted_decode_ms": -0.1}, "predicted_decode_ms"),
    ({"predicted_decode_ms": math.nan}, "predicted_decode_ms"),
    ({"spent_ms": -1}, "spent_ms"), ({"spent_ms": math.inf}, "spent_ms"),
    ({"latency_scale": {(8, 224, 16): 0.0}}, "latency_scale"),
    ({"latency_scale": {(8, 224, 16): math.inf}}, "latency_scale"),
    ({"latency_scale": {(8, 224, 16): -2.0}}, "latency_scale"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select(THREE, **kwargs)


def test_zero_decode_and_spent_are_fine_and_selection_is_hashable_free_of_state():
    a = select(THREE, budget_ms=30.0, predicted_decode_ms=0, spent_ms=0)
    assert a == select(THREE, budget_ms=30.0) and hash(a.config) == hash(a.config)


# ---- table validation ---------------------------------------------------------------------------

def _mutated(fn):
    d = table_dict(cfg(8, 224, 16, 45.0, 20.0, 0.8), cfg(16, 224, 16, 90.0, 50.0, 0.9),
                   cfg(8, 128, 16, 15.0, 10.0, 0.7), cfg(4, 96, 16, 3.0, 5.0, 0.5))
    fn(d)
    return d


def _set(path, value):
    def fn(d):
        *parents, last = path
        node = d
        for p in parents:
            node = node[p]
        node[last] = value
    return fn


def _del(path):
    def fn(d):
        *parents, last = path
        node = d
        for p in parents:
            node = node[p]
        del node[last]
    return fn


MALFORMED = [
    (_del(["configs", 3, "gflops"]), "configs[3].gflops: missing"),
    (_del(["configs", 1, "latency_ms"]), "configs[1].latency_ms: missing"),
    (_del(["configs", 2, "latency_ms", "p99"]), "configs[2].latency_ms.p99: missing"),
    (_set(["configs", 3, "latency_ms", "p95"], -1), "configs[3].latency_ms.p95: must be a positive number, got -1"),
    (_set(["configs", 0, "latency_ms", "p50"], 0.0), "configs[0].latency_ms.p50: must be a positive number"),
    (_set(["configs", 0, "latency_ms"], [1, 2, 3]), "configs[0].latency_ms: must be an object"),
    (_set(["configs", 0, "gflops"], math.nan), "configs[0].gflops: must be a positive number, got nan"),
    (_set(["configs", 0, "gflops"], math.inf), "configs[0].gflops: must be a positive number, got inf"),
    (_set(["configs", 0, "gflops"], True), "configs[0].gflops: must be a positive number, got True"),
    (_set(["configs", 0, "gflops"], "45"), "configs[0].gflops: must be a positive number"),
    (_set(["configs", 1, "frames"], 8.0), "configs[1].frames: must be a positive integer, got 8.0"),
    (_set(["configs", 1, "patch"], True), "configs[1].patch: must be a positive integer, got True"),
    (_set(["configs", 1, "pixels"], 0), "configs[1].pixels: must be a positive integer, got 0"),
    (_set(["configs", 1, "tokens"], -5), "configs[1].tokens: must be a positive integer"),
    (_set(["configs", 2, "accuracy"], 1.5), "configs[2].accuracy: must be a number in [0, 1] or null, got 1.5"),
    (_set(["configs", 2, "accuracy"], -0.1), "configs[2].accuracy: must be a number in [0, 1]"),
    (_set(["configs", 2, "accuracy"], math.nan), "configs[2].accuracy: must be a number in [0, 1]"),
    (_set(["configs", 2, "accuracy"], True), "configs[2].accuracy: must be a number in [0, 1]"),
    (_set(["configs", 2, "latency_ms", "p50"], 30.0), "configs[2].latency_ms: p50 30.0 > p95 10.0"),
    (_set(["configs", 2, "latency_ms", "p99"], 9.0), "configs[2].latency_ms: p95 10.0 > p99 9.0"),
    (_set(["configs", 3], cfg(16, 224, 16, 1.0, 1.0)),
     "configs[3]: duplicate (frames, pixels, patch) (16, 224, 16) of configs[1]"),
    (_set(["configs", 3], "oops"), "configs[3]: must be an object, got str"),
    (_set(["configs"], []), "configs: must be a non-empty list, got []"),
    (_set(["configs"], {"a": 1}), "configs: must be a non-empty list"),
    (_del(["configs"]), "configs: missing"),
    (_del(["meta"]), "meta: missing"),
    (_set(["meta"], "cpu"), "meta: must be an object, got 'cpu'"),
    (_del(["meta", "device"]), "meta.device: missing"),
    (_set(["meta", "threads"], 0), "meta.threads: must be a positive integer, got 0"),
    (_set(["meta", "torch"], 2.13), "meta.torch: must be a string, got 2.13"),
    (_set(["decode_model"], [1]), "decode_model: must be an object or null"),
    (_set(["config"], []), "config: unknown top-level key"),
]


@pytest.mark.parametrize("mutate, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_table_names_the_path(mutate, message):
    with pytest.raises(ProfileError) as e:
        ProfileTable.from_dict(_mutated(mutate))
    assert message in str(e.value)
    assert isinstance(e.value, ValueError) and len(e.value.problems) == 1


def test_every_problem_is_named_in_one_error():
    def many(d):
        del d["meta"]["date"]
        d["configs"][0]["gflops"] = -1
        d["configs"][1]["latency_ms"]["p95"] = math.inf
        d["configs"][2]["accuracy"] = 2
        d["configs"][3].update(frames=16, pixels=224)  # now duplicates configs[1]
    with pytest.raises(ProfileError) as e:
        ProfileTable.from_dict(_mutated(many))
    text = str(e.value)
    for path in ("meta.date: missing", "configs[0].gflops", "configs[1].latency_ms.p95",
                 "configs[2].accuracy", "configs[3]: duplicate"):
        assert path in text
    assert len(e.value.problems) == 5


def test_not_an_object():
    with pytest.raises(ProfileError, match="must be a JSON object, got list"):
        ProfileTable.from_dict([])


def test_valid_extras_and_null_accuracy_accepted():
    d = table_dict(cfg(8, 224, 16, 45.0, 20.0, peak_mem_mb=812.5, batch={"4": {"p95": 50.0}}),
                   cfg(4, 96, 16, 3, 5), decode_model={"per_frame_ms": 1.5})
    d["configs"][0]["accuracy"] = None
    d["configs"][1]["latency_ms"]["mean"] = 4.1
    d["meta"]["host"] = "ci"
    t = ProfileTable.from_dict(d)
    assert t.configs[0].accuracy is None and not t.has_accuracy
    assert t.configs[1].gflops == 3.0 and isinstance(t.configs[1].gflops, float)
    assert t.decode_model == {"per_frame_ms": 1.5}


# ---- loading and round trip ---------------------------------------------------------------------

def test_load_missing_invalid_and_valid(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ProfileError, match="nope.json.*cannot read"):
        ProfileTable.load(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"meta\": ", encoding="utf-8")
    with pytest.raises(ProfileError, match="bad.json.*not valid JSON"):
        ProfileTable.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_mutated(_set(["configs", 0, "gflops"], -2))), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"wrong.json: configs\[0\].gflops"):
        ProfileTable.load(wrong)
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps(_mutated(_set(["configs", 1, "latency_ms", "p99"], math.nan))))
    with pytest.raises(ProfileError, match=r"configs\[1\].latency_ms.p99.*nan"):
        ProfileTable.load(nan)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(THREE.to_dict()), encoding="utf-8")
    assert ProfileTable.load(str(good)) == THREE


def test_round_trip_keeps_everything():
    d = table_dict(cfg(8, 224, 16, 45.0, 20.0, 0.8, peak_mem_mb=812.5, batch={"4": {"p95": 50.0}}),
                   cfg(4, 96, 16, 3.0, 5.0, None), decode_model={"per_frame_ms": 1.5})
    d["configs"][1]["accuracy"] = None
    d["configs"][1]["latency_ms"]["mean"] = 4.1
    d["meta"]["host"] = "ci"
    t = ProfileTable.from_dict(d)
    out = t.to_dict()
    assert out == d
    assert ProfileTable.from_dict(json.loads(json.dumps(out))) == t
    out["configs"][0]["batch"]["4"]["p95"] = 1.0  # to_dict copies: the table is untouched
    assert t.to_dict() == d
    assert THREE.to_dict()["configs"][0]["accuracy"] == 0.9 and "decode_model" not in THREE.to_dict()


# ---- property test against a brute-force reference ----------------------------------------------

def _random_case(rng):
    keys = rng.sample([(f, p, k) for f in (4, 8, 16, 32) for p in (96, 128, 224) for k in (8, 16)],
                      rng.randint(1, 8))
    mode = rng.choice(["all", "none", "some"])
    accs = [0.5, 0.6, 0.7, 0.7 + ACCURACY_TIE / 3]  # few values: ties happen
    configs = []
    for f, p, k in keys:
        acc = None
        if mode == "all" or (mode == "some" and rng.random() < 0.5):
            acc = rng.choice(accs) if rng.random() < 0.5 else round(rng.random(), 3)
        p50 = rng.uniform(1, 80)
        d = cfg(f, p, k, rng.choice([5.0, 10.0, rng.uniform(1, 100)]), 1.0, acc,
                tokens=rng.randint(10, 2000))
        d["latency_ms"] = {"p50": p50, "p95": p50 * rng.uniform(1, 1.5),
                           "p99": p50 * rng.uniform(1.5, 2)}
        configs.append(d)
    kwargs = {}
    if rng.random() < 0.7:
        kwargs["budget_ms"] = rng.uniform(1, 150)
    if rng.random() < 0.4:
        kwargs["budget_gflops"] = rng.uniform(1, 100)
    if rng.random() < 0.5:
        kwargs["predicted_decode_ms"] = rng.uniform(0, 30)
        kwargs["spent_ms"] = rng.uniform(0, 10)
    if rng.random() < 0.3:
        kwargs["latency_scale"] = {k: rng.uniform(0.5, 2) for k in rng.sample(keys, len(keys) // 2)}
    if rng.random() < 0.3:
        kwargs["candidates"] = rng.sample(keys, rng.randint(1, len(keys)))
    return table_dict(*configs), kwargs


def _reference_check(t, kw, s):
    cands = set(kw.get("candidates", [c.key for c in t.configs]))
    configs = [c for c in t.configs if c.key in cands]
    scale = kw.get("latency_scale", {})
    ms = {c.key: c.p95_ms * scale.get(c.key, 1.0) for c in configs}
    over = kw.get("spent_ms", 0.0) + kw.get("predicted_decode_ms", 0.0)
    bms, bg = kw.get("budget_ms"), kw.get("budget_gflops")
    fit = [c for c in configs if (bms is None or over + ms[c.key] <= bms)
           and (bg is None or c.gflops <= bg)]
    c = s.config
    assert c.key in cands and s.predicted_model_ms == ms[c.key]
    assert s.feasible == bool(fit)
    if bms is not None:
        assert s.predicted_total_ms == pytest.approx(over + ms[c.key])
        assert s.remaining_ms == pytest.approx(bms - over)
    if not fit:
        if bms is not None:
            assert ms[c.key] == min(ms.values())
            assert s.cheapest_feasible_budget_ms == pytest.approx(over + min(ms.values()))
        else:
            assert c.gflops == min(x.gflops for x in configs)
        if bg is not None:
            assert s.cheapest_feasible_budget_gflops == min(x.gflops for x in configs)
        return
    assert c in fit and s.cheapest_feasible_budget_ms is None
    known = [x for x in fit if x.accuracy is not None]
    if not known:
        assert c.gflops == max(x.gflops for x in fit)
        assert ms[c.key] == min(ms[x.key] for x in fit if x.gflops == c.gflops)
        return
    assert c.accuracy is not None
    for x in known:
        assert x.accuracy <= c.accuracy + ACCURACY_TIE
        if abs(x.accuracy - c.accuracy) <= ACCURACY_TIE:  # a tie: c is no dearer
            assert (c.gflops, ms[c.key]) <= (x.gflops, ms[x.key])


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_random_tables(seed):
    rng = random.Random(seed)
    for _ in range(100):
        d, kw = _random_case(rng)
        t = ProfileTable.from_dict(d)
        s = select(t, **kw)
        _reference_check(t, kw, s)
        shuffled = copy.deepcopy(d)
        rng.shuffle(shuffled["configs"])
        assert select(ProfileTable.from_dict(shuffled), **kw) == s  # order does not matter
