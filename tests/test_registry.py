"""The method registry: each method declares what the grid needs where it is defined, and a
new method is its own code alone."""

import pytest
import torch

from helpers.data import ImageTensorDataset
from helpers.evaluate import ResultStore, cell_code
from helpers.grid import run_grid
from helpers.tta import (
    Adapter,
    build_method,
    method_factories,
    method_info,
    method_names,
    passes_per_image,
    register,
    unregister,
)


class Halved(Adapter):
    """A toy method defined outside the package: the source model's logits, halved."""

    name = "halved"
    shardable = True

    def forward(self, images, keys):
        with torch.inference_mode():
            return self.model(images) / 2


@pytest.fixture
def halved():
    register("halved")(Halved)
    yield
    unregister("halved")


def test_a_method_defined_outside_the_package_runs_in_the_grid(halved, tiny_cnn, tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 16, 16), generator=generator, dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.randint(0, 5, (12,), generator=generator),
                              tiny_cnn.class_names, "random", "random images (tests)")
    store = ResultStore(tmp_path / "cells.json", {"seed": 0})
    factories = method_factories(["source", "halved"])
    results = run_grid({"cnn": lambda: tiny_cnn}, {"a": data}, factories, store, batch_size=4,
                       progress=False)
    by_method = {r["method"]: r for r in results}
    # Halving logits keeps every prediction and lowers every confidence.
    assert by_method["halved"]["predictions"] == by_method["source"]["predictions"]
    assert all(h < s for h, s in zip(by_method["halved"]["confidences"],
                                     by_method["source"]["confidences"]))
    assert "halved" in method_names(shardable=True)
    assert factories["halved"].shardable and factories["halved"].passes("cnn") == 1
    # Its results' code fingerprint starts at the module that defines it.
    assert factories["halved"].code_modules == [__name__]
    assert set(cell_code([__name__])) >= {"helpers.evaluate", "helpers.models"}


def test_registering_a_taken_name_with_another_builder_is_an_error(halved):
    with pytest.raises(ValueError, match="'halved' is already registered by .*Halved"):
        register("halved")(type("Other", (Adapter,), {}))
    register("halved")(Halved)  # the same builder again (a module imported twice) is fine


def test_bad_registrations_and_unknown_names_say_what_is_valid():
    with pytest.raises(ValueError, match="Unknown flags \\['batchy'\\]"):
        register("x", batchy=True)
    with pytest.raises(TypeError, match="pass adapter="):
        register("x")(lambda model: Halved(model))
    with pytest.raises(ValueError, match="Unknown method 'mem0'; valid: .*memo"):
        build_method("mem0", None)


def test_the_package_methods_declare_what_they_need_and_do():
    assert set(method_names(needs_text=True)) == {"tpt", "prompt", "zero", "tda"}
    assert set(method_names(needs_batchnorm=True)) == {"norm"}
    assert set(method_names(online=True)) == {"norm", "tent", "eata", "sar"}
    assert set(method_names(shardable=True)) == {"source", "norm", "memo", "memo_plus", "tpt",
                                                 "prompt", "zero"}
    assert method_info("prompt").module == method_info("tpt").module == "helpers.tta.tpt"


def test_passes_per_image_follow_the_settings_and_the_defaults():
    assert passes_per_image("memo", {"n_views": 8, "steps": 1}) == 1 + 8 * 2
    assert passes_per_image("tpt", {}) == 1 + 63 * 2  # TPT's defaults: 63 views, one step
    assert passes_per_image("zero", {"n_views": 15}) == 1 + 15
    assert passes_per_image("tent", {}) == 2 and passes_per_image("source", {}) == 1


def test_a_method_that_does_not_apply_is_reported_as_such(tiny_cnn):
    factories = method_factories(["norm", "tpt", "source"])
    assert factories["tpt"](tiny_cnn, "cnn") is None  # no text side
    assert factories["norm"](tiny_cnn, "cnn") is not None
    layer_norm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(768))
    assert factories["norm"](layer_norm, "ln") is None  # no batch norm
