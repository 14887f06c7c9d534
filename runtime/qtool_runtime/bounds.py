"""The one table of bounds for operational settings (threads, batching, waits, body size, latency targets, budgets).

Every entry point checks against it: argparse in `qtool-runtime` (`argparse_action`), click in the toolchain's
`answer`, `serve` and `fit-latency` (`click_type`), and the kit's API (`check`) for library callers. A value
outside its bounds is an OptionError naming the flag and the allowed range, before any work: unbounded values
created 100,000 threads, never answered a request (a wait of 1e308 ms) or made every health check fail (NaN).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable

from .errors import OptionError, shown


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else every core)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows: no affinity call
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Bound:
    """An integer or a finite number in low..high (`low_open`: strictly above low); `high` may be computed."""

    name: str  # the keyword argument; the flag is --name with dashes
    kind: type  # int or float
    low: float
    high: float | Callable[[], float]
    low_open: bool = False
    unit: str = ""  # what the range counts, shown in messages

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def upper(self) -> float:
        return self.high() if callable(self.high) else self.high

    def describe(self) -> str:
        """The allowed values in words, e.g. 'an integer in 1..8 (threads)'."""
        what = "an integer" if self.kind is int else "a finite number"
        low, high = _plain(self.low), _plain(self.upper)
        span = f"above {low} and at most {high}" if self.low_open else f"in {low}..{high}"
        return f"{what} {span}" + (f" ({self.unit})" if self.unit else "")

    def problem(self, value: object) -> str:
        """What is wrong with `value`, without the flag (click names it itself)."""
        return f"must be {self.describe()}, got {shown(value, 40)}"

    def fail(self, value: object) -> OptionError:
        return OptionError(f"{self.flag} {self.problem(value)}")

    def check(self, value: object) -> int | float:
        """`value` as an int or float when it is within bounds (an integer, not a bool, for integer settings);
        else OptionError."""
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise self.fail(value)
        try:
            number = int(value) if self.kind is int else float(value)
        except OverflowError:  # an int beyond any float
            raise self.fail(value) from None
        if not self.holds(number):
            raise self.fail(value)
        return number

    def holds(self, number: int | float) -> bool:
        """Whether a number (finite for floats) lies in the range."""
        if isinstance(number, float) and not math.isfinite(number):
            return False
        above = number > self.low if self.low_open else number >= self.low
        return above and number <= self.upper

    def parse(self, text: str) -> int | float:
        """A command line's text as a checked value."""
        try:
            value = int(text.strip()) if self.kind is int else float(text)
        except (ValueError, TypeError):
            raise self.fail(text) from None
        return self.check(value)


def _plain(x: float) -> str:
    """A bound as people write it: 65536, 0.5, never 6.5e+04."""
    return str(int(x)) if float(x).is_integer() else str(x)


MAX_WAIT_MS = 10_000.0  # a request waits at most this long for others to share its batch
MAX_MS = 3_600_000.0  # an hour: no latency target or budget is longer

BOUNDS: dict[str, Bound] = {b.name: b for b in (
    Bound("threads", int, 1, usable_cores, unit="threads, at most the cores this process may use"),
    Bound("port", int, 0, 65535, unit="0: any free port"),
    Bound("max_batch", int, 1, 256, unit="questions per batch"),
    Bound("max_wait_ms", float, 0, MAX_WAIT_MS, unit="milliseconds"),
    Bound("max_body_bytes", int, 1, 1 << 26, unit="bytes"),
    Bound("latency_target_ms", float, 0, MAX_MS, low_open=True, unit="milliseconds"),
    Bound("budget_ms", float, 0, MAX_MS, low_open=True, unit="milliseconds"),
    Bound("batch_size", int, 1, 1024, unit="windows per graph run"),
)}


def check(name: str, value: object, *, optional: bool = True) -> int | float | None:
    """`value` checked against BOUNDS[name]; None (the default) passes when `optional`."""
    if value is None and optional:
        return None
    return BOUNDS[name].check(value)


def check_all(**values: object) -> None:
    """Check several settings at once (None: the default)."""
    for name, value in values.items():
        check(name, value)


def argparse_action(name: str) -> type:
    """An argparse `action=` for BOUNDS[name]: the value is parsed and checked, and a value out of bounds ends in
    argparse's usage error (exit 2) whose line is the OptionError's."""
    import argparse

    bound = BOUNDS[name]

    class Bounded(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            try:
                setattr(namespace, self.dest, bound.parse(values))
            except OptionError as exc:
                parser.error(str(exc))

    return Bounded


def click_type(name: str):
    """A click ParamType for BOUNDS[name] (the toolchain's CLI); click is imported only here, the kit never needs it."""
    import click

    bound = BOUNDS[name]

    class Bounded(click.ParamType):
        name = "integer" if bound.kind is int else "float"

        def convert(self, value, param, ctx):
            try:
                return bound.check(value) if isinstance(value, (int, float)) else bound.parse(value)
            except OptionError:
                self.fail(bound.problem(value), param, ctx)

    return Bounded()
