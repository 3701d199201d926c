"""Checks of notebook parameters, shared by the notebooks (a run by hand) and the batch
runner (before anything runs, naming the profile file): a wrong value stops with a message
that names the parameter and the fix, instead of a TypeError deep inside a loop or a run
on 5 of 6 images (``n_images: -1``)."""

from __future__ import annotations

import ast
import numbers


class ParameterError(ValueError):
    """A notebook parameter with a value the notebook cannot use."""


# Counts the notebooks share: the smallest value that makes sense, and whether None (all
# of them / the notebook's choice) is allowed.
COUNTS = {"n_images": (1, True), "n_held_out": (0, False), "sweep_images": (0, False),
          "batch_size": (1, False), "n_train": (1, True), "n_test": (1, True),
          "min_repeats": (1, False), "max_repeats": (1, False), "timed_steps": (1, False),
          "severity": (1, False)}


def check_count(name: str, value, minimum: int = 1, allow_none: bool = True):
    """``value`` if it is a whole number >= ``minimum`` (or None where allowed), else a
    ParameterError naming the parameter and what it takes."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        takes = f"a whole number >= {minimum}" + (" or None (all)" if allow_none else "")
        raise ParameterError(f"{name} = {value!r}: give {takes}.")
    return value


def check_counts(parameters: dict) -> dict:
    """Check every count of ``COUNTS`` that ``parameters`` holds; returns them unchanged.
    A notebook calls it once on its parameters (``check_counts(parameters)``)."""
    for name, (minimum, allow_none) in COUNTS.items():
        if name in parameters:
            check_count(name, parameters[name], minimum, allow_none)
    return parameters


# A notebook default's type and the types a profile may give instead: a list parameter
# takes a shorthand string ("all"), a name may be an index (``example: 0``).
ACCEPTED = {bool: (bool,), int: (int,), float: (int, float), str: (str, int),
            list: (list, str), dict: (dict,)}


def type_problem(value, default_source: str) -> str | None:
    """Why ``value`` cannot stand for a parameter whose default is written
    ``default_source`` (as papermill reports it), or None. Only clear cases are judged: a
    literal default of a plain type; None is always accepted (the notebooks' "all" or
    "default")."""
    try:
        default = ast.literal_eval(default_source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    accepted = ACCEPTED.get(type(default))
    if value is None or accepted is None:
        return None
    if isinstance(value, bool) and bool not in accepted:
        ok = False
    else:
        ok = isinstance(value, accepted)
    if ok:
        return None
    names = " or ".join(t.__name__ for t in accepted)
    return f"a {type(value).__name__} ({value!r}) where the notebook takes a {names} " \
           f"(its default: {default_source})"
