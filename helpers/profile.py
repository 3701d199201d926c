"""Profiles: the parameters of every notebook at one scale (``helpers/profiles/*.yaml``:
smoke, offline, full), read and checked so that a malformed file stops with an error that
names the file and the fix. What the batch runner runs and what a Colab user is shown."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import paths

# The top-level entries of a profile file and their types.
PROFILE_ENTRIES = {"description": str, "jobs": int, "minutes": dict, "defaults": dict,
                   "notebooks": dict, "gpu": list, "cluster": dict}
EXAMPLE = "notebooks:\n  01_memo_cifar100:\n    n_images: 100"


def profile_names() -> list[str]:
    return sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))


def profile_file(name: str) -> Path:
    return paths.PROFILES / f"{name}.yaml"


def load_profile(name: str) -> dict:
    """A profile: ``description``, ``defaults`` (for every notebook that has the parameter)
    and ``notebooks`` (per notebook stem, its parameters). A file that is not valid YAML
    or not of that shape is an error naming the file and the fix."""
    file = profile_file(name)
    if not file.exists():
        raise SystemExit(f"Unknown profile {name!r}; valid profiles: {', '.join(profile_names())} "
                         f"(files in {paths.PROFILES}).")
    try:
        with open(file) as stream:  # a stream, so that YAML's error names the file
            profile = yaml.safe_load(stream)
    except yaml.YAMLError as error:
        raise SystemExit(f"Profile file {file} is not valid YAML:\n{error}") from None
    profile = {} if profile is None else profile
    if not isinstance(profile, dict):
        raise SystemExit(f"Profile file {file} must be a mapping with the entries "
                         f"{', '.join(PROFILE_ENTRIES)}; it is a {type(profile).__name__}.")
    unknown = sorted(set(profile) - set(PROFILE_ENTRIES))
    if unknown:
        raise SystemExit(f"Profile file {file} has unknown entries {unknown}; valid: "
                         f"{', '.join(PROFILE_ENTRIES)}.")
    for entry, kind in PROFILE_ENTRIES.items():
        if profile.get(entry) is None and kind in (dict, list):
            profile[entry] = kind()
        elif entry in profile and not isinstance(profile[entry], kind):
            how = (f" Write it as a mapping of notebook names to their parameters, e.g.\n"
                   f"{EXAMPLE}" if entry == "notebooks" else "")
            raise SystemExit(f"`{entry}:` in profile file {file} must be a {kind.__name__}, "
                             f"not a {type(profile[entry]).__name__}.{how}")
    bad = [nb for nb, p in profile["notebooks"].items() if not isinstance(p or {}, dict)]
    if bad:
        raise SystemExit(f"In profile file {file}, the parameters of {bad} must be a mapping "
                         f"(name: value), e.g.\n{EXAMPLE}")
    if profile.get("jobs", 1) < 1:
        raise SystemExit(f"`jobs:` in profile file {file} must be at least 1.")
    return profile
