"""serving.selector: profile-table validation and loading, and choosing the most valuable option
on time, checked on hand-made tables and against a brute-force reference on seeded random
tables."""
from __future__ import annotations

import json
import math
import random

import pytest

from serving.selector import (ACCURACY_TIE, OTHER_DECODE_MODES, Option, ProfileError,
                              ProfileTable, decode_value, option_value, select, within_gflops)
from video import DECODE_MODES


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

def options(t, finish=None):
    """{Option: predicted finish} for every configuration of `t`; the finish defaults to p95."""
    finish = finish or {}
    return {Option(c.key, option_value(c, t), c.gflops, 0.0, c.p95_ms): finish.get(c.key, c.p95_ms)
            for c in t.configs}


def test_the_most_valuable_option_on_time():
    assert select(options(THREE), 30.0).key == (8, 224, 16)
    assert select(options(THREE), 50.0).key == (16, 224, 16)  # boundary: <= is on time
    assert select(options(THREE), 9.9) is None
    # the predicted finish is what counts, whatever the model alone takes
    late = options(THREE, {(8, 224, 16): 31.0})
    assert select(late, 30.0).key == (8, 128, 16)


@pytest.mark.parametrize("b_changes, winner", [
    ({"p95": 5.0, "gflops": 30.0}, "b"),              # the earlier finish wins the tie
    ({"gflops": 10.0}, "b"),                          # same finish: fewer GFLOPs
    ({"gflops": 30.0}, "a"),
])
def test_accuracy_ties_go_to_the_cheaper(b_changes, winner):
    a = dict(gflops=20.0, p95=10.0)
    b = {**a, **b_changes}
    t = table(cfg(8, 224, 16, a["gflops"], a["p95"], 0.8),
              cfg(16, 112, 8, b["gflops"], b["p95"], 0.8 + ACCURACY_TIE / 10))
    keys = {"a": (8, 224, 16), "b": (16, 112, 8)}
    assert select(options(t), 100.0).key == keys[winner]


def test_accuracy_difference_beyond_tie_wins_even_if_dearer():
    t = table(cfg(8, 224, 16, 20.0, 10.0, 0.8), cfg(16, 112, 8, 40.0, 10.0, 0.8 + 1e-6))
    assert select(options(t), 100.0).key == (16, 112, 8)


def test_no_accuracy_most_gflops_that_fit():
    assert not NO_ACC.has_accuracy
    assert select(options(NO_ACC), 30.0).key == (8, 224, 16)
    # equal GFLOPs: the earlier finish wins
    t = table(cfg(8, 224, 16, 45.0, 20.0), cfg(16, 112, 8, 45.0, 15.0), cfg(4, 96, 8, 5.0, 1.0))
    assert select(options(t), 30.0).key == (16, 112, 8)


def test_option_value_ranks_unknown_below_known_and_among_them_by_gflops():
    t = table(cfg(16, 224, 16, 90.0, 20.0), cfg(8, 224, 16, 45.0, 15.0, 0.6),
              cfg(8, 128, 16, 15.0, 10.0, 0.0), cfg(4, 96, 16, 3.0, 5.0), cfg(4, 64, 16, 2.0, 4.0))
    value = {c.key: option_value(c, t) for c in t.configs}
    assert value[(8, 224, 16)] == 0.6 and value[(8, 128, 16)] == 0.0
    assert value[(16, 224, 16)] < 0.6 and value[(4, 96, 16)] > value[(4, 64, 16)] > 0
    assert select(options(t), 25.0).key == (8, 224, 16)  # the unknown 90-GFLOP one loses
    assert select(options(t), 6.0).key == (4, 96, 16)  # only unknown ones fit: most GFLOPs
    assert [option_value(c, NO_ACC) for c in NO_ACC.configs] == pytest.approx(
        [0.999, 0.4995, 0.1665])


def test_without_accuracy_the_native_configuration_ranks_first():
    # a checkpoint trained at 8x224/16 (a public tiny): its own configuration is the one known
    # to hold; 16x224/16 costs more GFLOPs but was never trained
    d = table_dict(cfg(16, 224, 16, 90.0, 50.0), cfg(8, 224, 16, 45.0, 20.0),
                   cfg(8, 112, 16, 12.0, 8.0))
    d["meta"]["model"] = {"num_frames": 8, "img_size": 224, "patch_size": 16}
    t = ProfileTable.from_dict(d)
    assert select(options(t), 60.0).key == (8, 224, 16)
    assert select(options(t), 10.0).key == (8, 112, 16)  # native too slow: GFLOPs rank
    value = {c.key: option_value(c, t) for c in t.configs}
    assert value[(8, 224, 16)] == 1.0 > value[(16, 224, 16)] > value[(8, 112, 16)]
    # a table with accuracies ranks by them, native or not
    d["configs"][0]["accuracy"] = 0.9
    assert select(options(ProfileTable.from_dict(d)), 60.0).key == (16, 224, 16)


def test_near_options_count_as_equal_and_the_fastest_of_them_wins():
    t = table(cfg(8, 56, 8, 0.33, 9.5, 1.0), cfg(8, 56, 28, 0.034, 3.0, 0.983),
              cfg(4, 56, 28, 0.017, 2.5, 0.24))
    assert select(options(t), 100.0).key == (8, 56, 8)
    assert select(options(t), 100.0, near=0.02).key == (8, 56, 28)
    assert select(options(t), 100.0, near=0.01).key == (8, 56, 8)


def test_decode_modes_are_valued_by_what_was_measured():
    """Keyframe decoding is worth its measured accuracy; unmeasured in a table that measures
    accuracy it is not offered (None); in a table without any accuracy it ranks just under the
    exact mode of the same configuration and above the next configuration."""
    assert OTHER_DECODE_MODES == DECODE_MODES[1:]  # the selector's copy of video's modes
    t = table(cfg(8, 224, 16, 45.0, 20.0, 0.80, accuracy_by_decode={"keyframe": 0.78}),
              cfg(8, 128, 16, 15.0, 10.0, 0.70))
    big, small = t.configs
    assert decode_value(big, t, "exact") == 0.80 and decode_value(big, t, "keyframe") == 0.78
    assert big.accuracy_for("keyframe") == 0.78 and small.accuracy_for("keyframe") is None
    assert decode_value(small, t, "keyframe") is None
    values = sorted(((decode_value(c, NO_ACC, m), c.key, m) for c in NO_ACC.configs
                     for m in DECODE_MODES), reverse=True)
    assert [(k, m) for _, k, m in values] == [
        ((16, 224, 16), "exact"), ((16, 224, 16), "keyframe"), ((8, 224, 16), "exact"),
        ((8, 224, 16), "keyframe"), ((8, 128, 16), "exact"), ((8, 128, 16), "keyframe")]
    # exact and keyframe at the same value: the one that finishes first
    fast = Option(big.key, 0.8, big.gflops, 5.0, 20.0, "keyframe")
    slow = Option(big.key, 0.8, big.gflops, 50.0, 20.0, "exact")
    assert select({fast: 25.0, slow: 70.0}, 100.0) is fast


def test_within_gflops():
    opts = list(options(THREE))
    fit, ok = within_gflops(opts, 50.0)
    assert ok and {o.key for o in fit} == {(8, 224, 16), (8, 128, 16)}
    assert within_gflops(opts, None) == (tuple(opts), True)
    cheapest, ok = within_gflops(opts, 1.0)
    assert not ok and [o.key for o in cheapest] == [(8, 128, 16)]


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
    (_set(["configs", 0, "accuracy_by_decode"], {"keyframe": 2}),
     "configs[0].accuracy_by_decode.keyframe: must be a number in [0, 1] or null, got 2"),
    (_set(["configs", 0, "accuracy_by_decode"], {"fast": 0.5}),
     "configs[0].accuracy_by_decode.fast: unknown decode mode"),
    (_set(["configs", 0, "accuracy_by_decode"], [0.5]),
     "configs[0].accuracy_by_decode: must be an object"),
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
        configs.append(cfg(f, p, k, rng.choice([5.0, 10.0, rng.uniform(1, 100)]),
                           rng.uniform(1, 80), acc))
    t = ProfileTable.from_dict(table_dict(*configs))
    finish = {k: rng.choice([10.0, rng.uniform(1, 150)]) for k in keys}
    return t, options(t, finish), rng.uniform(1, 150)


def _reference_check(t, finishes, deadline, chosen):
    on_time = [o for o, f in finishes.items() if f <= deadline]
    if not on_time:
        assert chosen is None
        return
    assert chosen in on_time
    known = [c for c in t.configs if c.accuracy is not None]
    config = {c.key: c for c in t.configs}[chosen.key]
    on_time_configs = [config_ for config_ in t.configs
                       if config_.key in {o.key for o in on_time}]
    if known and config.accuracy is None:  # unknown only when no known one (>= 0.001) is
        assert all(c.accuracy is None or c.accuracy < 1e-3 for c in on_time_configs)
    for o in on_time:
        assert o.value <= chosen.value + ACCURACY_TIE
        if abs(o.value - chosen.value) <= ACCURACY_TIE:  # a tie: the chosen one is no later
            assert (finishes[chosen], chosen.gflops) <= (finishes[o], o.gflops)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_random_tables(seed):
    rng = random.Random(seed)
    for _ in range(100):
        t, finishes, deadline = _random_case(rng)
        chosen = select(finishes, deadline)
        _reference_check(t, finishes, deadline, chosen)
        shuffled = list(finishes.items())
        rng.shuffle(shuffled)
        assert select(dict(shuffled), deadline) == chosen  # order does not matter
