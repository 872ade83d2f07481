"""litelvlm_kernels.timing: the interleaved medians, spreads and noise flags every printed timing goes through
(the demo, prefill_metrics / format_metrics, the examples). Synthetic timings, so the flags are deterministic."""

from __future__ import annotations

import itertools

import pytest

from litelvlm_kernels import demo
from litelvlm_kernels.timing import MIN_ROUNDS, Timing, format_ratio, interleaved, noise_flag, summarize


def test_summarize_quantiles():
    t = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.p50_ms, t.p20_ms, t.p80_ms, t.rounds) == (3.0, 1.8, 4.2, 5)  # linear interpolation, as numpy
    assert str(t) == "3 ms (p20-p80 1.8-4.2)"
    one = summarize([7.5])
    assert (one.p50_ms, one.p20_ms, one.p80_ms, one.rounds) == (7.5, 7.5, 7.5, 1)


@pytest.mark.parametrize("bad", [[], [1.0, -0.5], [float("nan")], [float("inf")]])
def test_summarize_refuses(bad):
    with pytest.raises(ValueError, match="samples_ms"):
        summarize(bad)


def test_overlapping_intervals_are_flagged():
    a = summarize([10.0, 10.5, 11.0, 30.0, 10.2])  # a busy-machine outlier widens a's interval
    b = summarize([10.8, 11.2, 11.0, 11.1, 10.9])
    assert a.p80_ms > b.p20_ms and b.p80_ms > a.p20_ms
    assert noise_flag(a, b) == noise_flag(b, a) == "within noise"
    assert format_ratio(b, a) == f"{b.p50_ms / a.p50_ms:.2f} (within noise)"


def test_ratio_above_one_inside_the_noise_says_so():
    """The examples' "prefill time" ratio read 1.07 (pruned slower) on a busy machine: printed flagged, not bare."""
    stock = Timing(p50_ms=10.0, p20_ms=9.0, p80_ms=12.0, rounds=5)
    pruned = Timing(p50_ms=10.7, p20_ms=8.0, p80_ms=11.0, rounds=5)
    assert format_ratio(pruned, stock, ".3f") == "1.070 (within noise)"


def test_separated_intervals_are_not_flagged():
    slow = summarize([20.0, 21.0, 19.5, 20.5, 22.0])
    fast = summarize([5.0, 5.5, 4.8, 5.2, 6.0])
    assert noise_flag(slow, fast) == ""
    assert format_ratio(slow, fast, ".1f", "x") == f"{slow.p50_ms / fast.p50_ms:.1f}x"


def test_touching_intervals_count_as_overlap():
    a, b = Timing(2.0, 1.0, 3.0, 5), Timing(4.0, 3.0, 5.0, 5)
    assert noise_flag(a, b) == "within noise"
    assert noise_flag(a, Timing(4.0, 3.001, 5.0, 5)) == ""


def test_too_few_rounds_is_flagged():
    """One or two rounds give no spread: even far-apart times cannot be told apart from noise."""
    slow, fast = summarize([20.0] * (MIN_ROUNDS - 1)), summarize([1.0] * (MIN_ROUNDS - 1))
    assert noise_flag(slow, fast) == "too few rounds"
    assert format_ratio(fast, slow).endswith("(too few rounds)")
    assert noise_flag(summarize([20.0] * MIN_ROUNDS), summarize([1.0] * MIN_ROUNDS)) == ""


def test_interleaved_rotates_and_times_every_round(monkeypatch):
    """Each round calls every callable once, the order rotated; the clock is faked so the times are exact."""
    clock = itertools.count()
    monkeypatch.setattr("litelvlm_kernels.timing.time.perf_counter", lambda: next(clock) / 1000.0)  # 1 ms a tick
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    out = interleaved(fns, rounds=4, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab") + list("abc")
    assert set(out) == set("abc") and all(t.rounds == 4 and t.p50_ms == pytest.approx(1.0) for t in out.values())


@pytest.mark.parametrize("kw,match", [(dict(rounds=0), "rounds"), (dict(rounds=True), "rounds"),
                                      (dict(rounds=3, warmup=-1), "warmup")])
def test_interleaved_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        interleaved({"a": lambda: None}, **kw)
    with pytest.raises(ValueError, match="fns"):
        interleaved({}, rounds=3)


def test_demo_rows_carry_spread_and_flag(capsys):
    rows = demo.main(["--retain", "64", "--repeat", "3", "--texts", "1"])
    out = capsys.readouterr().out
    assert "p20-p80" in out and "interleaved" in out
    (row,) = rows
    assert row["reference"].rounds == row["ops"].rounds == 3
    assert row["reference"].p20_ms <= row["reference_ms"] <= row["reference"].p80_ms
    assert row["speedup"] == format_ratio(row["reference"], row["ops"], ".1f", "x")
    assert row["same_set"] and row["same_order"]


def _side(visual, ms, spread):
    return {"visual_tokens": visual, "tokens": visual + 20, "prefill_flops": 1e9 * visual,
            "kv_cache_bytes": 1e3 * visual, "prefill_ms": ms, "prefill_time": Timing(ms, ms - spread, ms + spread, 5),
            "peak_memory_bytes": None}


@pytest.mark.parametrize("spread,flagged", [(3.0, True), (0.3, False)])
def test_format_metrics_flags_a_noisy_time_ratio(spread, flagged):
    """prefill_metrics' table: times with their spread; the time ratio next to the FLOPs ratios is flagged when
    the stock and pruned intervals overlap (here pruned reads slower: 10.7 vs 10.0 ms)."""
    from litelvlm_kernels.integrations.metrics import format_metrics

    m = {"stock": _side(192, 10.0, spread), "pruned": _side(64, 10.7, spread)}
    (row,) = [line for line in format_metrics(m).splitlines() if line.startswith("prefill time")]
    assert f"10 ms (p20-p80 {10 - spread:.3g}-{10 + spread:.3g})" in row
    assert row.endswith("1.070 (within noise)" if flagged else "1.070")
