"""Test-time adaptation methods behind one interface (see ``base.Adapter``)."""

from .base import Adapter, Episodic, Source, make_optimizer
from .episodic import Snapshot, select_parameters
from .memo import Memo, marginal_entropy
from .norm import NormAdapt, Tent, entropy, has_batchnorm

METHODS = {"source": Source, "norm": NormAdapt, "tent": Tent, "memo": Memo}


def build_method(name: str, model, **options) -> Adapter:
    """A method by name (``source``, ``norm``, ``tent``, ``memo``) with its options."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; valid: {sorted(METHODS)}")
    return METHODS[name](model, **options)


__all__ = ["Adapter", "Episodic", "Source", "NormAdapt", "Tent", "Memo", "Snapshot",
           "METHODS", "build_method", "entropy", "marginal_entropy", "make_optimizer",
           "select_parameters", "has_batchnorm"]
