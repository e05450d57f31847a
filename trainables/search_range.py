"""How one hyperparameter is searched: a grid (the papers' values) and, where the value is
continuous, an interval (uniform or log-uniform).

``--search grid`` trains every point of the grid (`002`'s protocol); tpe, random and nsga2
draw from the interval when there is one (a grid only samples what its author happened to
print), else from the grid as a categorical choice. One schema for a common hyperparameter's
range in a space, a method's own declared range (``Hyperparameter.search``) and a user's
range in a space file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from trainables.errors import ConfigError

#: The keys of a range written as a mapping (YAML: ``lr: {low: 1e-4, high: 1e-2, log: true}``).
KEYS = ("grid", "low", "high", "log", "integer")


@dataclass(frozen=True)
class SearchRange:
    """A search distribution. ``grid``: the values ``--search grid`` trains (may be empty only
    for a continuous range); ``low``/``high``: the closed interval tpe/random/nsga2 draw from
    (None: they draw from the grid instead); ``log``: log-uniform on the interval (for values
    that span orders of magnitude: learning rates, scales); ``integer``: integers only."""

    grid: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(self.grid))
        if (self.low is None) != (self.high is None):
            raise ConfigError("a continuous range needs both low and high")
        if not self.continuous:
            if self.log or self.integer:
                raise ConfigError("log and integer apply to a continuous range (give low and high)")
            if not self.grid:
                raise ConfigError("a search range needs a grid of values or low and high")
            return
        for key in ("low", "high"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{key} of a range must be a finite number, got {value!r}")
        low, high = self.interval()
        if not low < high:
            raise ConfigError(f"low must be below high, got low={low!r}, high={high!r}")
        if self.log and low <= 0:
            raise ConfigError(f"a log range needs low > 0, got low={low!r}")
        if self.integer and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"an integer range needs integer ends, got low={low!r}, high={high!r}")

    @property
    def continuous(self) -> bool:
        """Whether tpe/random/nsga2 draw from an interval (else from the grid)."""
        return self.low is not None

    def interval(self) -> tuple[float, float]:
        """``(low, high)`` of a continuous range (one place that knows both ends are set)."""
        if self.low is None or self.high is None:
            raise ConfigError(f"the range {self.describe()} has no interval (it is a grid)")
        return self.low, self.high

    @classmethod
    def of(cls, value: Any, name: str = "") -> SearchRange:
        """A range from what a space or a space file gives: a SearchRange as it is; a list or
        tuple: a categorical grid, exactly those values; a mapping with the keys of ``KEYS``.
        A bad value is a one-line ``ConfigError`` naming ``name``."""
        label = f"{name}: " if name else ""
        if isinstance(value, SearchRange):
            return value
        try:
            if isinstance(value, Mapping):
                unknown = sorted(set(value) - set(KEYS), key=str)
                if unknown:
                    names = ", ".join(map(str, unknown))
                    raise ConfigError(f"unknown key(s) {names} in a search range (keys: {', '.join(KEYS)})")
                grid = value.get("grid", ())
                if not isinstance(grid, (list, tuple)):
                    raise ConfigError(f"the grid of a search range must be a list, got {grid!r}")
                return cls(
                    grid=tuple(grid),
                    low=_number("low", value.get("low")),
                    high=_number("high", value.get("high")),
                    log=_flag("log", value.get("log", False)),
                    integer=_flag("integer", value.get("integer", False)),
                )
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ConfigError("a search range needs at least one value")
                return cls(grid=tuple(value))
        except ConfigError as err:
            raise ConfigError(f"{label}{err}") from None
        raise ConfigError(f"{label}a search range is a list of values or a mapping of {', '.join(KEYS)}, got {value!r}")

    def suggest(self, trial: Any, key: str) -> Any:
        """Draw the value of ``key`` on an Optuna trial (define-by-run)."""
        if not self.continuous:
            return trial.suggest_categorical(key, list(self.grid))
        low, high = self.interval()
        if self.integer:
            return trial.suggest_int(key, int(low), int(high), log=self.log)
        return trial.suggest_float(key, float(low), float(high), log=self.log)

    def grid_values(self, name: str) -> list[Any]:
        """The grid ``--search grid`` trains; a range without one is a ``ConfigError``."""
        if not self.grid:
            raise ConfigError(f"{name} has a continuous range {self.describe()} and no grid: --search grid needs "
                              f"its values (give it a grid, or fix it with --param {name.split('.')[-1]}=...)")
        return list(self.grid)

    def values_to_check(self) -> list[Any]:
        """Every value a search may give, as far as bounds go: the grid and both ends."""
        return [*self.grid, *((self.low, self.high) if self.continuous else ())]

    def first(self) -> Any:
        """One value of the range (the grid's first, else the low end), for a dry build."""
        if self.grid:
            return self.grid[0]
        low = self.interval()[0]
        return int(low) if self.integer else low

    def describe(self) -> str:
        """One line for listings, e.g. ``log-uniform [0.0005, 0.01]; grid 0.01, 0.005``."""
        parts = []
        if self.continuous:
            kind = ("log-" if self.log else "") + ("uniform integer" if self.integer else "uniform")
            parts.append(f"{kind} [{self.low:g}, {self.high:g}]")
        if self.grid:
            parts.append(("grid " if self.continuous else "one of ") + ", ".join(_show(v) for v in self.grid))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able mapping (the keys ``of`` reads back)."""
        out: dict[str, Any] = {"grid": list(self.grid)}
        if self.continuous:
            out.update(low=self.low, high=self.high, log=self.log, integer=self.integer)
        return out

    def __iter__(self) -> Iterator[Any]:
        """Iterating a range gives its grid (what ``--search grid`` trains)."""
        return iter(self.grid)


def _number(key: str, value: Any) -> float | None:
    """A mapping's ``low``/``high``: YAML reads ``1e-4`` (no dot) as text, so text is parsed."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{key} of a range must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} of a range must be a number, got {value!r}") from None


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} of a range must be true or false, got {value!r}")
    return value


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
