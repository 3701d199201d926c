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
           "select_parameters", "has_batchnorm", "method_factories"]


def method_factories(names, options: dict | None = None, per_model: dict | None = None):
    """For ``evaluate.run_grid``: each method name mapped to ``f(model, model_name)``.
    ``options[method]`` are the method's settings; ``per_model[method][model_name]`` overrides
    some of them for one model (MEMO's learning rate differs between a CLIP and a CNN).
    NormAdapt is reported as not applicable to models without batch norm."""
    options, per_model = options or {}, per_model or {}

    def factory(name):
        def settings(model_name):
            return {**options.get(name, {}), **(per_model.get(name, {}).get(model_name) or {})}

        def make(model, model_name):
            if name == "norm" and not has_batchnorm(model):
                return None
            return build_method(name, model, **settings(model_name))
        make.settings = settings  # what a results store compares to reuse a finished cell
        return make

    return {name: factory(name) for name in names}
