"""The methods by name. Each method registers itself where it is defined (``@register``), with
what a grid needs to know about it, so that adding a method is its module and its test."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

# What a method's class declares (``Adapter`` defaults them all to False).
FLAGS = ("needs_text", "needs_batchnorm", "shardable", "online")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method. ``build(model, **settings)`` makes its adapter for a classifier.
    ``needs_text``: it needs a CLIP classifier's text side (not applicable without one);
    ``needs_batchnorm``: it needs batch-norm layers; ``shardable``: its predictions for a
    batch of test images depend on that batch alone, so a cluster may split its cells into
    parts of whole batches (``grid.run_grid``); ``online``: it updates on every test batch.
    ``adapter`` is the class whose signature gives the settings' defaults."""

    name: str
    build: object
    adapter: type
    needs_text: bool = False
    needs_batchnorm: bool = False
    shardable: bool = False
    online: bool = False

    @property
    def module(self) -> str:
        """Where the code fingerprint of its results starts (``evaluate.cell_code``)."""
        return self.build.__module__

    def defaults(self) -> dict:
        signature = inspect.signature(self.adapter)
        return {k: p.default for k, p in signature.parameters.items()
                if p.default is not inspect.Parameter.empty}

    def passes_per_image(self, settings: dict) -> int:
        """About how many passes through the model it makes per test image: one per view and
        once more per update step for a view-based method, two (forward and backward) for an
        online one, else one. What a cluster orders its work by (a rough count, never a
        result)."""
        defaults = self.defaults()
        views = settings.get("n_views", defaults.get("n_views")) or 0
        steps = settings.get("steps", defaults.get("steps")) or 0
        if views:
            return 1 + views * (1 + steps)
        return 2 if self.online else 1


REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, adapter: type | None = None, **flags):
    """Register ``build`` (an ``Adapter`` class, or a function that makes one: then
    ``adapter`` names the class) as method ``name``. The flags (``FLAGS``) are the class's
    attributes unless given here. A name registered twice with another builder is an
    error."""
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ValueError(f"Unknown flags {unknown} for method {name!r}; valid: {list(FLAGS)}")

    def decorate(build):
        cls = adapter or build
        if not inspect.isclass(cls):
            raise TypeError(f"Method {name!r}: pass adapter=<the Adapter class> when "
                            f"registering a function ({build.__qualname__}).")
        info = MethodInfo(name, build, cls, **{flag: bool(flags.get(flag, getattr(
            cls, flag, False))) for flag in FLAGS})
        known = REGISTRY.get(name)
        if known is not None and known.build.__qualname__ != build.__qualname__:
            raise ValueError(f"Method {name!r} is already registered by {known.module}."
                             f"{known.build.__qualname__}; choose another name.")
        REGISTRY[name] = info
        return build

    return decorate


def unregister(name: str) -> None:
    """Remove a method (a test's own method, after the test)."""
    REGISTRY.pop(name, None)


def method_info(name: str) -> MethodInfo:
    """The registered method ``name``; an unknown name is an error that lists the valid
    ones."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown method {name!r}; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def method_names(**flags) -> tuple[str, ...]:
    """The registered names, in registration order, with the given flags (e.g.
    ``shardable=True``)."""
    return tuple(name for name, info in REGISTRY.items()
                 if all(getattr(info, flag) == value for flag, value in flags.items()))
