"""Reading ``--param KEY=VALUE`` flags into a trial config."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from trainables.config import COMMON, option_value
from trainables.errors import ConfigError
from trainables.methods import METHODS


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """['lr=0.001', 'c=0.5'] -> {'lr': '0.001', 'c': '0.5'}; malformed pairs raise."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"bad --param {pair!r}: use KEY=VALUE, e.g. --param lr=0.001")
        out[key] = value
    return out


def to_config(
    raw: Mapping[str, str], methods: Sequence[str], options: Mapping[str, Any]
) -> dict[str, Any]:
    """Map user parameters to typed config values, checking every name and value.

    Common hyperparameters and problem options (``options``: name -> default) keep their
    names; a method's own parameter may be given as ``c`` (when exactly one of ``methods`` has
    it) or as ``cagrad.c``. Each value is read through its schema (``Hyperparameter.parse``:
    type, bounds, choices), a problem option as the type of its default, so a bad value is a
    ``ConfigError`` here, on the driver, before Ray starts or a run is created.
    """
    allowed = set(COMMON) | set(options)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in COMMON:
            out[key] = COMMON[key].parse("", key, value)
            continue
        if key in options:
            out[key] = option_value(key, value, options[key])
            continue
        method, dot, name = key.partition(".")
        if dot:
            if method not in methods:
                raise ConfigError(f"--param {key}: method {method!r} is not among the methods run ({', '.join(methods)})")
            if name not in METHODS.get(method).hyperparameters:
                raise ConfigError(_unknown(key, methods, allowed))
            out[key] = METHODS.get(method).hyperparameters[name].parse(method, name, value)
            continue
        owners = [m for m in methods if key in METHODS.get(m).hyperparameters]
        if len(owners) != 1:
            raise ConfigError(_unknown(key, methods, allowed) if not owners else
                              f"--param {key} is ambiguous: write one of {', '.join(f'{m}.{key}' for m in owners)}")
        out[f"{owners[0]}.{key}"] = METHODS.get(owners[0]).hyperparameters[key].parse(owners[0], key, value)
    return out


def _unknown(key: str, methods: Sequence[str], allowed: set[str]) -> str:
    own = sorted({f"{m}.{p}" for m in methods for p in METHODS.get(m).hyperparameters})
    return (
        f"unknown parameter {key!r} (common: {', '.join(sorted(allowed))}"
        + (f"; methods: {', '.join(own)}" if own else "")
        + ")"
    )
