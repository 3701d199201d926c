import copy

import numpy as np
import pytest
import torch

from helpers import paths
from helpers.models import CheckpointNotFoundError
from helpers.vpt import (
    MODES,
    PromptedViT,
    StepConfig,
    build_vit,
    expected_trainable,
    measure_step,
    measure_steps,
    prompted_vit,
    train_step,
)

TINY = dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
            num_heads=2)
PATCHES = (32 // 8) ** 2


def tiny(mode="vpt-deep", n_prompts=5, **kw):
    torch.manual_seed(0)
    return prompted_vit(mode, n_prompts, num_classes=3, **TINY, **kw)


def batch(n=4):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 0][:n])


def grads(model, images, labels):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["vpt-deep", "full"])
def test_eager_and_sdpa_attention_agree_in_outputs_and_gradients(mode):
    model = tiny(mode, n_prompts=5 if mode == "vpt-deep" else 0, attention="eager")
    images, labels = batch()
    assert model.attention == "eager"
    eager_loss, eager = grads(model, images, labels)
    model.attention = "sdpa"
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    sdpa_loss, sdpa = grads(model, images, labels)
    torch.testing.assert_close(sdpa_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert sdpa.keys() == eager.keys() and len(eager) > 2
    for name in eager:
        torch.testing.assert_close(sdpa[name], eager[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention,mode,checkpointing", [
    ("eager", "vpt-deep", True), ("sdpa", "vpt-deep", True), ("sdpa", "vpt-shallow", 2),
    ("eager", "full", 2)])
def test_checkpointing_gives_the_same_gradients(attention, mode, checkpointing):
    model = tiny(mode, n_prompts=5 if mode != "full" else 0, attention=attention)
    images, labels = batch()
    _, plain = grads(model, images, labels)
    model.checkpointing = checkpointing
    # True spares the last block (recomputing it would save nothing); a number counts blocks.
    assert model.checkpointed_blocks() == (1 if checkpointing is True else 2)
    _, checkpointed = grads(model, images, labels)
    if mode != "full":
        assert set(plain) == {"prompts", "vit.head.weight", "vit.head.bias"}
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_checkpointing_frees_the_activations_of_the_checkpointed_blocks():
    """What autograd keeps for backward, counted through saved-tensor hooks: with every block
    checkpointed only block inputs are kept, far less than without."""
    images, labels = batch()

    def saved_bytes(checkpointing):
        model, total = tiny("vpt-deep", attention="sdpa", checkpointing=checkpointing), [0]

        def pack(tensor):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            torch.nn.functional.cross_entropy(model(images), labels)
        return total[0]

    assert saved_bytes(2) < saved_bytes(True) < saved_bytes(False)


def block_inputs(model, images):
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
             for b in model.vit.blocks]
    with torch.no_grad():
        model.eval()(images)
    for hook in hooks:
        hook.remove()
    return seen


def test_vpt_shallow_inserts_prompts_once_after_the_class_token():
    model = tiny("vpt-shallow", n_prompts=7)
    seen = block_inputs(model, batch()[0])
    assert [x.shape[1] for x in seen] == [1 + 7 + PATCHES] * 2 == [model.tokens()] * 2
    assert model.prompts.shape == (1, 7, 32)
    torch.testing.assert_close(seen[0][:, 1:8], model.prompts[0].expand(4, -1, -1))
    assert not torch.allclose(seen[1][:, 1:8], model.prompts[0].expand(4, -1, -1))


def test_vpt_deep_replaces_the_prompts_at_every_block():
    model = tiny("vpt-deep", n_prompts=7)
    seen = block_inputs(model, batch()[0])
    assert [x.shape[1] for x in seen] == [1 + 7 + PATCHES] * 2
    assert model.prompts.shape == (2, 7, 32)
    for layer, x in enumerate(seen):
        torch.testing.assert_close(x[:, 1:8], model.prompts[layer].expand(4, -1, -1))


@pytest.mark.parametrize("mode", MODES)
def test_trainable_parameters_match_the_formula(mode):
    model = tiny(mode, n_prompts=6)
    total_vit = sum(p.numel() for p in model.vit.parameters())
    expected = expected_trainable(mode, model.n_prompts, dim=32, depth=2, num_classes=3,
                                  total=total_vit)
    assert model.trainable_parameters() == expected
    head = 32 * 3 + 3
    assert expected == {"linear": head, "full": total_vit, "vpt-shallow": 6 * 32 + head,
                        "vpt-deep": 2 * 6 * 32 + head}[mode]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if mode.startswith("vpt"):
        assert trainable == {"prompts", "vit.head.weight", "vit.head.bias"}


def test_a_vpt_step_changes_prompts_and_head_but_not_the_backbone():
    model = tiny("vpt-deep", prompt_dropout=0.1)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_step(model.train(), optimizer, *batch())
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"prompts", "vit.head.weight", "vit.head.bias"}


def test_prompt_dropout_acts_in_training_only():
    images = batch()[0]
    with_dropout, without = tiny(prompt_dropout=0.5), tiny(prompt_dropout=0.0)
    with torch.no_grad():
        torch.testing.assert_close(with_dropout.eval()(images), without.eval()(images),
                                   rtol=0, atol=0)
        assert not torch.allclose(with_dropout.train()(images), without.train()(images))


def test_bad_modes_are_refused():
    with pytest.raises(ValueError, match="valid modes: linear, full, vpt-shallow, vpt-deep"):
        tiny("deep")
    with pytest.raises(ValueError, match="has no prompts"):
        PromptedViT(build_vit(num_classes=3, **{k: v for k, v in TINY.items() if k != "arch"}),
                    "linear", n_prompts=4)
    with pytest.raises(ValueError, match="valid: eager, sdpa"):
        tiny(attention="flash")


def test_a_missing_weight_file_names_the_file_and_where_to_get_it():
    with pytest.raises(CheckpointNotFoundError) as error:
        tiny(weights_path="checkpoints/missing-vit.safetensors")
    message = str(error.value)
    assert str(paths.REPO / "checkpoints/missing-vit.safetensors") in message
    assert "vit_base_patch16_224.augreg2_in21k_ft_in1k" in message
    assert "ViT-B_16.npz" in message and str(paths.CHECKPOINTS) in message


def test_weights_are_looked_for_under_tta_checkpoints_then_the_repository(tmp_path,
                                                                          monkeypatch):
    """The full profile names just the file: a Colab user keeps it on a drive
    (TTA_CHECKPOINTS); ``checkpoints/<file>`` under the repository still works."""
    sizes = {k: v for k, v in TINY.items() if k != "arch"}
    source = tiny("full", 0).vit
    for folder in ("drive", "repo/checkpoints"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.setattr(paths, "CHECKPOINTS", tmp_path / "drive")
    monkeypatch.setattr(paths, "REPO", tmp_path / "repo")
    torch.save(source.state_dict(), tmp_path / "drive" / "vit.pth")
    torch.save({k: torch.zeros_like(v) for k, v in source.state_dict().items()},
               tmp_path / "repo" / "vit.pth")  # the same name in the repository: not taken
    loaded = build_vit(TINY["arch"], num_classes=3, weights_path="vit.pth", **sizes)
    assert torch.equal(loaded.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    torch.save(source.state_dict(), tmp_path / "repo" / "checkpoints" / "old.pth")
    build_vit(TINY["arch"], num_classes=3, weights_path="checkpoints/old.pth", **sizes)
    with pytest.raises(CheckpointNotFoundError) as error:
        build_vit(TINY["arch"], num_classes=3, weights_path="missing.safetensors", **sizes)
    assert str(error.value).startswith(
        f"ViT weights 'missing.safetensors' not found: looked at "
        f"{tmp_path / 'drive' / 'missing.safetensors'} and "
        f"{tmp_path / 'repo' / 'missing.safetensors'}. Get ")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_load_from_a_state_dict_with_a_new_head(tmp_path, suffix):
    source = tiny("full", 0)
    file = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        safetensors = pytest.importorskip("safetensors.torch")
        safetensors.save_file(source.vit.state_dict(), file)
    else:
        torch.save(source.vit.state_dict(), file)
    torch.manual_seed(1)
    loaded = build_vit(TINY["arch"], num_classes=7, weights_path=file,
                       **{k: v for k, v in TINY.items() if k != "arch"})
    assert loaded.weights == f"pretrained weights from vit{suffix}"
    assert loaded.head.weight.shape == (7, 32)
    for name, value in source.vit.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(loaded.state_dict()[name], value), name


def test_the_memory_meter_sees_a_larger_batch():
    base = dict(arch="vit_tiny_patch16_224", image_size=64, n_prompts=10, steps=1, threads=1,
                overrides=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))
    small = measure_step(StepConfig(batch_size=1, **base))
    large = measure_step(StepConfig(batch_size=64, **base))
    assert small["peak_mb"] > 0 and small["seconds_per_step"] > 0
    assert large["peak_mb"] > small["peak_mb"]
    assert large["tokens"] == 1 + 10 + 64 and large["trainable"] == 2 * 10 * 64 + 64 * 10 + 10


METER_BASE = dict(arch="vit_tiny_patch16_224", image_size=64, n_prompts=10, steps=1, threads=1,
                  overrides=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))


def test_configs_measured_in_one_process_read_as_each_in_a_fresh_one():
    configs = [StepConfig(batch_size=64, mode="full", **{**METER_BASE, "n_prompts": 0}),
               StepConfig(batch_size=1, **METER_BASE),
               StepConfig(batch_size=64, attention="eager", **METER_BASE)]
    together = measure_steps(configs)
    for config, row in zip(configs, together):
        alone = measure_step(config)
        assert row["peak_mb"] == pytest.approx(alone["peak_mb"], rel=0.05, abs=0.5), config
        assert (row["trainable"], row["tokens"]) == (alone["trainable"], alone["tokens"])


def test_a_shared_backbone_keeps_no_gradients_between_configs():
    from helpers.vpt.meter import measure_here

    backbones, here = {}, {**METER_BASE, "threads": None}  # keep this process's threads
    measure_here(StepConfig(batch_size=2, mode="full", **{**here, "n_prompts": 0}), backbones)
    (backbone,) = backbones.values()
    assert all(p.grad is None for p in backbone.parameters())
    measure_here(StepConfig(batch_size=2, **here), backbones)
    assert len(backbones) == 1 and all(p.grad is None for p in backbone.parameters())


def test_a_failing_config_is_named_with_the_error():
    with pytest.raises(RuntimeError, match="(?s)mode=.nope.*unknown mode 'nope'"):
        measure_steps([StepConfig(batch_size=1, **METER_BASE),
                       StepConfig(batch_size=1, mode="nope", **METER_BASE)])


def test_state_memory_counts_weights_gradients_and_the_optimizers_state():
    from helpers.vpt.meter import MB, state_memory, total_memory

    model = tiny("vpt-deep", n_prompts=5)
    total = sum(p.numel() for p in model.parameters())
    trainable = 2 * 5 * 32 + 32 * 3 + 3  # two blocks' prompts and the head
    counted = state_memory(model)  # no optimizer: Adam's two float32 slots
    assert counted == {"weights_mb": 4 * total / MB, "gradients_mb": 4 * trainable / MB,
                       "optimizer_mb": 2 * 4 * trainable / MB}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    assert state_memory(model, optimizer) == counted  # no step yet: the same count
    train_step(model, optimizer, *batch())
    stepped = state_memory(model, optimizer)
    # After a step AdamW holds exp_avg and exp_avg_sq per parameter and a float32 step count
    # per tensor (the prompts, the head's weight and its bias).
    assert stepped["optimizer_mb"] == pytest.approx((2 * 4 * trainable + 4 * 3) / MB)
    row = {**stepped, "peak_mb": 10.0}
    assert total_memory(row) == pytest.approx(stepped["weights_mb"] + stepped["optimizer_mb"]
                                              + 10.0)


def test_measured_rows_carry_the_total_training_memory():
    full, deep = measure_steps([StepConfig(batch_size=8, mode="full",
                                           **{**METER_BASE, "n_prompts": 0}),
                                StepConfig(batch_size=8, **METER_BASE)])
    for row in (full, deep):
        assert row["total_mb"] == pytest.approx(row["weights_mb"] + row["optimizer_mb"]
                                                + row["peak_mb"])
    assert full["weights_mb"] == pytest.approx(deep["weights_mb"] - 2 * 10 * 64 * 4 / 2 ** 20)
    assert full["optimizer_mb"] > 50 * deep["optimizer_mb"]  # every weight against prompts


def test_parameter_counts_follow_the_formula_in_the_fixed_order():
    from helpers.vpt import study

    rows = study.parameter_counts("vit_tiny_patch16_224", n_prompts=4, num_classes=3,
                                  modes=("full", "vpt-deep", "linear"))
    assert [r["mode"] for r in rows] == ["linear", "full", "vpt-deep"]  # MODES' order
    full = rows[1]
    assert full["trainable %"] == 100 and full["gradients_mb"] == full["weights_mb"]
    assert full["optimizer_mb"] == 2 * full["weights_mb"]
    assert full["state MB"] == pytest.approx(4 * full["weights_mb"])


def test_memory_ratios_against_eager_attention_by_hand():
    from helpers.vpt import study

    def row(attention, checkpointing, peak, seconds, prompts=10):
        return {"batch_size": 4, "n_prompts": prompts, "attention": attention,
                "checkpointing": checkpointing, "peak_mb": peak, "seconds_per_step": seconds,
                "weights_mb": 1.0, "optimizer_mb": 0.5, "total_mb": peak + 1.5}

    rows = [row("eager", False, 600.0, 2.0), row("sdpa", False, 400.0, 2.2),
            row("sdpa", True, 100.0, 3.0), row("sdpa", True, 50.0, 1.0, prompts=0)]
    ratios = {r["setting"]: r for r in study.memory_ratios(rows)}
    assert len(ratios) == 3  # the row without an eager baseline is left out
    assert ratios["sdpa"]["memory_vs_eager"] == pytest.approx(1.5)
    assert ratios["sdpa + checkpointing"]["memory_vs_eager"] == pytest.approx(6.0)
    assert ratios["sdpa + checkpointing"]["time_vs_eager"] == pytest.approx(1.5)
    lines = study.memory_lines(rows[:3])
    assert len(lines) == 2 and "6.00x less peak step memory" in lines[1]
    assert "(102 MB in all)" in lines[1]  # 100 MB of peak and 1.5 MB of weights and state
    assert "(600 MB of step peak with eager attention, 602 MB with" in lines[1]


def test_modes_are_compared_with_full_fine_tuning_on_the_same_images():
    from helpers import findings
    from helpers.vpt import study

    labels = [0, 1] * 50
    full = [1.0] * 80 + [0.0] * 20
    deep = [1.0] * 60 + [0.0] * 40  # loses 20 images full gets right, gains none

    def cell(mode, correct):
        return {"model": "m", "method": mode, "data": "d", "labels": labels, "correct": correct,
                "accuracy": sum(correct) / 100, "ece": 0.1, "seconds_per_sample": 0.01}

    rows = study.mode_comparisons([cell("vpt-deep", deep), cell("full", full),
                                   cell("linear", deep)])
    assert [r["method"] for r in rows] == ["linear", "vpt-deep"]  # the fixed order
    deep_row = rows[1]
    assert deep_row["baseline"] == "full" and deep_row["change"] == pytest.approx(-0.2)
    named = study.named_by_data(rows)[1]
    assert named["model"] == "m · d" and named["backbone"] == "m" and deep_row["model"] == "m"
    assert deep_row["ci_high"] < 0 and deep_row["worse_on"] == 1
    assert findings.mcnemar_p(np.array(full), np.array(deep)) < 0.05


def test_the_explanation_comes_only_when_vpt_deep_loses_and_uses_this_runs_numbers():
    from helpers.vpt import small, study

    vit = build_vit("vit_tiny_patch16_224", 5, img_size=28, patch_size=7, embed_dim=16,
                    depth=1, num_heads=2)
    vit.weights, vit.metrics = "here", {"steps": 10, "test_accuracy": 0.8}

    def cell(mode, accuracy):
        return {"mode": mode, "data": "d", "accuracy": accuracy, "n_test": 100}

    cells = [cell("linear", 0.5), cell("full", 0.8), cell("vpt-deep", 0.6)]
    config = small.FinetuneConfig(steps=7, batch_size=8)
    loses = [{"method": "vpt-deep", "ci_low": -0.3, "ci_high": -0.1}]
    ties = [{"method": "vpt-deep", "ci_low": -0.1, "ci_high": 0.05}]
    assert study.explanation_lines(ties, cells, vit, config, 4, small.SmallVitConfig()) == []
    (line,) = study.explanation_lines(loses, cells, vit, config, 4, small.SmallVitConfig())
    total = sum(p.numel() for p in vit.parameters())
    assert f"a ViT of {total:,} parameters" in line and "7 steps of 8 images" in line
    assert "linear probe to 0.500" in line and "prompts add +0.100" in line
    assert "full fine-tuning adds +0.300" in line


def test_the_vpt_findings_get_this_runs_shares_and_changes_beside_them():
    from helpers.vpt import study

    anchors = [{"method": "vpt", "model": "ViT", "dataset": "FGVC", "value": None,
                "finding": f"finding {i}", "source": "s", "paper": "VPT", "where": "Abstract",
                "metric": metric, "setting": setting}
               for i, (metric, setting) in enumerate([
                   ("parameters", "prompts in the input space"),
                   ("accuracy", "against full fine-tuning"),
                   ("accuracy", "relative accuracy gain over full fine-tuning")])]
    rows = [{"method": "vpt-deep", "baseline": "full", "data": "d", "change": -0.2,
             "ci_low": -0.3, "ci_high": -0.1, "accuracy": 0.6, "baseline_accuracy": 0.8}]
    vit_b16 = [{"mode": "full", "trainable": 85_806_346}]
    parameters, against, relative = study.anchor_table(anchors, rows, 10, vit_b16).to_dict(
        "records")
    # by formula: shallow 10 * 768 + 7,690 and deep 12 * 10 * 768 + 7,690 trainable parameters
    assert "VPT-shallow trains 0.018% of the parameters, VPT-deep 0.116%" in \
        parameters["offline here"]
    assert parameters["direction"] == "same direction"
    assert "vpt-deep on d -0.200 (95% CI -0.300 to -0.100)" in against["offline here"]
    assert against["direction"] == "opposite"
    assert relative["offline here"].endswith("-25.0%") and relative["direction"] == "opposite"
    small = study.anchor_table(anchors[:1], rows, 10, [{"mode": "full", "trainable": 10**6}])
    assert small.iloc[0]["direction"] == "opposite"  # 9.99% of a small model is not < 1%
