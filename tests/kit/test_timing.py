"""The one timing loop: interleaved rounds, warm-up excluded, medians."""

import time

from qtool_runtime.timing import interleaved_ms


def test_work_is_interleaved_round_by_round_and_warmup_is_not_timed():
    calls: list[str] = []
    slow_first = iter([0.05, 0.05] + [0.0] * 100)  # the first two calls of "a" are slow: warm-up

    def a():
        calls.append("a")
        time.sleep(next(slow_first))

    def b():
        calls.append("b")
        time.sleep(0.01)

    medians = interleaved_ms({"a": a, "b": b}, rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5  # every round runs every piece in turn
    assert medians["a"] < 5 and 9 < medians["b"] < 40  # the slow warm-up calls are not in a's median


def test_untimed_first_call_and_repeats():
    calls: list[str] = []
    logged: list[str] = []
    medians = interleaved_ms({("g", 64): lambda: calls.append("x")}, rounds=2, warmup=1, repeat=3,
                             untimed_first=True, log=logged.append)
    assert len(calls) == 3 * (1 + 3) and set(medians) == {("g", 64)}
    assert logged == ["  latency round 1/3 (warm-up)", "  latency round 2/3", "  latency round 3/3"]
