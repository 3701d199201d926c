import math

import pytest
import torch

from helpers.models import SmallClipConfig, build_small_clip, clip_classifier
from helpers.tta import (
    PromptLearner,
    Tpt,
    build_method,
    confident_views,
    entropy,
    marginal_entropy,
    method_factories,
    prompt_classifier,
)
from helpers.tta.tpt import frozen
from helpers.views import AugMixViews, CropViews

NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "ankle boot"]


@pytest.fixture(scope="module")
def clip77():
    """A random small CLIP with the real 77-token context, so that trimming matters."""
    torch.manual_seed(0)
    model = build_small_clip(SmallClipConfig(context_length=77)).float().eval()
    model.name = ""
    return model


@pytest.fixture
def images():
    return torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def plain_text_features(clip_model, learner):
    """The text encoder on full-length prompts, written out as in CoOp and TPT."""
    n = len(learner.class_names)
    ctx = learner.ctx if learner.class_specific else learner.ctx.expand(n, -1, -1)
    x = torch.cat([learner.prefix, ctx, learner.suffix], 1) + clip_model.positional_embedding
    x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip_model.ln_final(x)[torch.arange(n), learner.eot] @ clip_model.text_projection
    return x / x.norm(dim=-1, keepdim=True)


def test_initial_context_is_the_embedding_of_a_photo_of_a(clip77):
    import clip

    learner = PromptLearner(clip77, NAMES)
    tokens = clip.tokenize(["a photo of a"], context_length=77)
    expected = clip77.token_embedding(tokens)[0, 1:5]
    assert learner.ctx.shape == (4, clip77.token_embedding.weight.shape[1])
    assert torch.equal(learner.ctx.detach(), expected.detach())
    # prompts "a photo of a {name}.": with the initial context the text features equal
    # CLIP's own encode_text of the same sentences
    sentences = clip.tokenize([f"a photo of a {n}." for n in NAMES], context_length=77)
    with torch.no_grad():
        direct = clip77.encode_text(sentences)
        direct = direct / direct.norm(dim=-1, keepdim=True)
        assert (learner(trim=True) - direct).abs().max() < 1e-5


def test_trimmed_prompts_give_the_same_text_features(clip77):
    learner = PromptLearner(clip77, NAMES + ["a very long class name with many words"])
    with torch.no_grad():
        learner.ctx.add_(torch.randn_like(learner.ctx))  # any context, not only the initial
        full = plain_text_features(clip77, learner)
        trimmed = learner(trim=True)
    assert learner.length < 20 < 77
    assert (full - trimmed).abs().max() < 1e-4
    assert (learner(trim=False) - full).abs().max() < 1e-6


def test_tpt_cached_features_and_trimmed_prompts_leave_the_logits_unchanged(clip77, images):
    fast = Tpt(clip77, NAMES, n_views=15)
    reference = fast(images, keys=[0, 1, 2])
    for cache, trim in [(False, True), (True, False), (False, False)]:
        other = Tpt(clip77, NAMES, n_views=15, cache_features=cache, trim=trim)
        diff = (reference - other(images, keys=[0, 1, 2])).abs().max()
        assert diff < 1e-4, (cache, trim, diff)
    # and the tuning did something: not the initial prompt's logits
    with torch.no_grad():
        assert (reference - fast.model(images)).abs().max() > 1e-3


def original_tpt(clip_model, image, views, steps, lr, top, reselect=False):
    """TPT's ``test_time_tuning`` and prediction (github.com/azshue/TPT,
    tpt_classification.py) written out without AMP: the confident views are selected on the
    first step and those indices kept (``reselect`` selects again each step instead)."""
    def avg_entropy(outputs):
        logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
        avg_logits = logits.logsumexp(dim=0) - math.log(logits.shape[0])
        avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
        return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)

    def select_confident_samples(logits, top):
        batch_entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
        idx = torch.argsort(batch_entropy, descending=False)[:int(batch_entropy.size()[0] * top)]
        return logits[idx], idx

    model = prompt_classifier(clip_model, NAMES, trim=False)
    optimizer = torch.optim.AdamW([model.backbone.prompt.ctx], lr)
    inputs = torch.cat([image[None], views])
    selected_idx = None
    with frozen(clip_model):
        for _ in range(steps):
            output = model(inputs)
            if selected_idx is not None and not reselect:
                output = output[selected_idx]
            else:
                output, selected_idx = select_confident_samples(output, top)
            loss = avg_entropy(output)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return model(image[None])


def test_three_steps_keep_the_first_steps_selection_as_the_original(clip77, images):
    steps, lr, top = 3, 0.05, 0.25
    original, reselected = [], []
    for key, image in enumerate(images):
        probe = Tpt(clip77, NAMES, n_views=15, selection=top)
        views = probe._views_for(images)(image, probe.generator(key))
        original.append(original_tpt(clip77, image, views, steps, lr, top))
        reselected.append(original_tpt(clip77, image, views, steps, lr, top, reselect=True))
    original, reselected = torch.cat(original), torch.cat(reselected)
    for cache, trim in [(True, True), (False, False)]:
        tpt = Tpt(clip77, NAMES, n_views=15, selection=top, steps=steps, lr=lr,
                  cache_features=cache, trim=trim)
        assert tpt.keep == 4
        logits = tpt(images, keys=[0, 1, 2])
        assert (logits - original).abs().max() < 1e-4, (cache, trim)
    # selecting again at every step gives other logits here, so the test tells them apart
    assert (reselected - original).abs().max() > 1e-3


def test_selection_keeps_the_lowest_entropy_views(clip77):
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(2)) * 3
    tpt = Tpt(clip77, NAMES)
    assert tpt.keep == 6 == int(64 * 0.1)  # the original code's int(): 6 of 64
    kept = confident_views(logits, tpt.keep)
    ent = [(-(row.softmax(-1) * row.log_softmax(-1)).sum().item(), i)
           for i, row in enumerate(logits)]
    manual = [i for _, i in sorted(ent)[:6]]
    assert kept.tolist() == manual
    # the loss is the marginal entropy of exactly those views
    assert tpt.loss(logits).item() == pytest.approx(marginal_entropy(logits[manual]).item())


def test_one_step_lowers_the_selected_views_entropy_then_resets_exactly(clip77, images):
    tpt = Tpt(clip77, NAMES, n_views=31)
    ctx0 = tpt.head.prompt.ctx.detach().clone()
    batch, ent, kept = tpt.selection_of(images[0], key=0)
    assert batch.shape == (32, 3, 28, 28) and torch.equal(batch[0], images[0])
    assert len(kept) == 3 and torch.equal(ent[kept], ent.sort().values[:3])
    with torch.no_grad():
        features = tpt.head.image_features(tpt.model.preprocess(batch))
    before = tpt.loss(tpt.head.logits(features)).item()
    with frozen(clip77):  # as Tpt does: the gradient reaches the context only
        tpt.update(tpt.loss(tpt.head.logits(features)))
    after = marginal_entropy(tpt.head.logits(features)[kept]).item()
    assert after < before
    tpt.restore()
    for _ in range(3):
        tpt(images)
    assert torch.equal(tpt.head.prompt.ctx.detach(), ctx0)
    assert tpt.head.prompt.ctx.grad is None
    assert len(tpt.optimizer.state) == 0
    # the CLIP weights are untouched and trainable again (another method may adapt them)
    assert all(p.requires_grad for p in clip77.parameters())
    assert all(p.grad is None for p in clip77.parameters())


def test_same_image_same_prediction_in_any_order(clip77, images):
    tpt = Tpt(clip77, NAMES, n_views=15)
    together = tpt(images, keys=[0, 1, 2])  # tuned together (``adapt_and_predict_many``)
    alone = tpt(images[2:], keys=[2])
    # the same views and steps; a batched matrix product may sum in another order
    assert torch.equal(together[2:].argmax(-1), alone.argmax(-1))
    torch.testing.assert_close(together[2:], alone, rtol=1e-5, atol=1e-5 * alone.abs().max())


def test_views_follow_the_paper_by_image_size(clip77):
    tpt = Tpt(clip77, NAMES, n_views=7, keep=2)
    assert isinstance(tpt._views_for(torch.rand(1, 3, 28, 28)), AugMixViews)
    assert isinstance(tpt._views_for(torch.rand(1, 3, 224, 224)), CropViews)
    assert isinstance(Tpt(clip77, NAMES, views="crop").views, CropViews)
    assert Tpt(clip77, NAMES, views=CropViews(15)).n_views == 15


def test_learned_context_file_round_trip_and_wrong_shape(clip77, tmp_path):
    learner = PromptLearner(clip77, NAMES)
    with torch.no_grad():
        learner.ctx.normal_()
    file = learner.save_context(tmp_path / "ctx.pt")
    loaded = PromptLearner(clip77, NAMES, ctx_file=file)
    assert torch.equal(loaded.ctx, learner.ctx)
    torch.save({"state_dict": {"ctx": learner.ctx.detach()}}, tmp_path / "coop.pt")
    assert torch.equal(PromptLearner(clip77, NAMES, ctx_file=tmp_path / "coop.pt").ctx,
                       learner.ctx)
    with pytest.raises(ValueError, match=r"shape \(4, 128\).*needs \(6, 4, 128\)"):
        PromptLearner(clip77, NAMES, class_specific=True, ctx_file=file)
    with pytest.raises(ValueError, match="n_ctx=4"):
        Tpt(clip77, NAMES, n_ctx=4, ctx_init=None, ctx_file=tmp_path / "ctx.pt", views="augmix",
            class_specific=True)


def test_class_specific_context_tunes_per_class(clip77, images):
    tpt = Tpt(clip77, NAMES, n_views=15, class_specific=True)
    assert tpt.head.prompt.ctx.shape[0] == len(NAMES)
    assert tpt(images).shape == (3, len(NAMES))
    random_init = PromptLearner(clip77, NAMES, ctx_init=None, n_ctx=8)
    assert random_init.ctx.std().item() == pytest.approx(0.02, rel=0.2)


def test_bad_inputs_say_how_to_fix_them(clip77):
    with pytest.raises(ValueError, match="class list is empty.*class_names"):
        Tpt(clip77, [])
    long_name = " ".join(["word"] * 80)
    with pytest.raises(ValueError, match="beyond the context length of 77.*shorten"):
        Tpt(clip77, ["cat", long_name])
    with pytest.raises(ValueError, match="keeps 0 of 8 views.*raise n_views"):
        Tpt(clip77, NAMES, n_views=7)
    with pytest.raises(ValueError, match="keeps 20 of 16 views"):
        Tpt(clip77, NAMES, n_views=15, keep=20)
    with pytest.raises(ValueError, match="set n_ctx=3"):
        PromptLearner(clip77, NAMES, ctx_init="a photo of")


def test_tpt_by_name_on_a_clip_classifier_only(clip77, tiny_cnn, images):
    classifier = clip_classifier(clip77, NAMES, cache=False)
    tpt = build_method("tpt", classifier, n_views=15)
    assert torch.equal(tpt(images), Tpt(clip77, NAMES, n_views=15)(images))
    factories = method_factories(["tpt", "prompt"])
    assert factories["tpt"](tiny_cnn, "cnn") is None
    prompt = factories["prompt"](classifier, "clip")
    with torch.no_grad():
        assert torch.allclose(prompt(images), tpt.model(images))
    # with "a photo of a {}." the fixed prompt is CLIP's zero-shot head with that template
    zero_shot = clip_classifier(clip77, NAMES, ("a photo of a {}.",), cache=False)
    with torch.no_grad():
        assert (prompt(images) - zero_shot(images)).abs().max() < 1e-3
    assert entropy(prompt(images)).shape == (3,)
    assert math.isfinite(tpt.config()["lr"])


def test_tpt_on_a_resnet_clip(images):
    """CLIP's ResNet image encoder (RN50's architecture, tiny): batch norm in eval mode,
    attention pooling; TPT runs on it unchanged and its speed-ups stay exact."""
    from clip.model import CLIP

    torch.manual_seed(0)
    rn = CLIP(32, 32, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1).float().eval()
    rn.name = ""
    fast = Tpt(rn, NAMES, n_views=15)(images, keys=[0, 1, 2])
    plain = Tpt(rn, NAMES, n_views=15, cache_features=False, trim=False)(images, keys=[0, 1, 2])
    assert fast.shape == (3, len(NAMES)) and (fast - plain).abs().max() < 1e-4


# ---------------------------------------------------------------- notebook 03's sweep

def test_sweep_takes_one_corruption_per_family_and_the_same_images():
    from helpers import findings
    from helpers.data import ImageTensorDataset, corrupted

    names = ["clean", "gaussian_noise", "shot_noise", "motion_blur", "fog", "contrast",
             "pixelate"]
    assert findings.one_per_family(names) == ["gaussian_noise", "motion_blur", "fog",
                                              "contrast"]
    assert findings.one_per_family(names, 2) == ["gaussian_noise", "motion_blur"]
    assert findings.one_per_family(["a/clean", "b/clean"], 4) == ["a/clean", "b/clean"]
    assert findings.one_per_family(["fashion-mnist/snow", "fashion-mnist/frost"]) == [
        "fashion-mnist/snow"]
    with pytest.raises(ValueError, match="sweep_corruptions = 0"):
        findings.one_per_family(names, 0)
    gen = torch.Generator().manual_seed(0)
    base = ImageTensorDataset(torch.randint(0, 256, (20, 3, 32, 32), generator=gen,
                                            dtype=torch.uint8), list(range(10)) * 2,
                              [str(i) for i in range(10)], "toy", "toy")
    tasks = {"clean": base, "gaussian_noise": corrupted(base, "gaussian_noise", 5),
             "contrast": corrupted(base, "contrast", 5)}
    sweep = findings.sweep_tasks(tasks, 4, 6, seed=1)
    assert list(sweep) == ["gaussian_noise", "contrast"] and len(sweep["contrast"]) == 6
    assert torch.equal(sweep["contrast"].labels, sweep["gaussian_noise"].labels)
    assert torch.equal(sweep["contrast"].images,
                       tasks["contrast"].images[torch.randperm(20, generator=torch.Generator()
                                                               .manual_seed(1))[:6]])
    assert findings.sweep_tasks(tasks, 4, 0) == {}


def test_one_at_a_time_sweep_runs_the_base_setting_once():
    from helpers.findings import one_at_a_time

    rows = one_at_a_time({"n_views": 63, "selection": 0.1, "lr": 0.005},
                         {"n_views": [15, 63], "selection": [0.1, 1.0]}, "tpt")
    assert [(r["setting"], r["value"]) for r in rows] == [
        ("n_views", 15), ("n_views", 63), ("selection", 0.1), ("selection", 1.0)]
    assert rows[1]["method"] == rows[2]["method"] == "tpt n_views=63, selection=0.1"
    assert rows[3]["settings"] == {"n_views": 63, "selection": 1.0, "lr": 0.005}
    assert len({r["method"] for r in rows}) == 3


def test_sweep_rows_are_mean_accuracies_with_intervals_over_images():
    from helpers.findings import sweep_rows

    labels = [0, 1, 2, 3]

    def cell(method, task, correct):
        return {"model": "m", "data": task, "method": method, "labels": labels,
                "correct": correct, "accuracy": sum(correct) / 4, "ece": 0.1,
                "seconds_per_sample": 0.5}

    results = [cell("base", "a", [1, 0, 0, 0]), cell("base", "b", [1, 0, 0, 0]),
               cell("tpt x=1", "a", [1, 1, 0, 0]), cell("tpt x=1", "b", [1, 1, 1, 0])]
    sweep = [{"setting": "x", "value": 1, "method": "tpt x=1", "settings": {}},
             {"setting": "x", "value": 2, "method": "tpt x=2", "settings": {}}]
    (row,) = sweep_rows(results, sweep, "base")  # x=2 did not run: no row
    assert row["accuracy"] == pytest.approx(5 / 8) and row["tasks"] == 2 and row["images"] == 4
    assert row["change"] == pytest.approx(5 / 8 - 2 / 8)
    assert row["baseline_accuracy"] == pytest.approx(2 / 8)
    # per image (mean over both tasks) 1, 1, 0.5, 0: the interval of their resampled mean
    assert 0 <= row["ci_low"] < row["accuracy"] < row["ci_high"] <= 1
    assert row["change_low"] >= 0  # no image is worse: every resample changes by >= 0
    # the baseline is right on 1 image of 4: 3 or 4 of 4 draws of it have probability
    # 4 * 0.25^3 * 0.75 + 0.25^4 = 0.051 > 0.025, so its upper 97.5% bound is 3/4
    assert row["baseline_low"] == pytest.approx(0) and row["baseline_high"] == pytest.approx(0.75)


def test_calibration_lines_name_the_methods_whose_ece_rises_and_why():
    from helpers.findings import calibration_lines

    def cell(method, task, ece, confidence, accuracy):
        return {"model": "m", "data": task, "method": method, "ece": ece,
                "mean_confidence": confidence, "accuracy": accuracy}

    results = [cell("source", t, 0.2, 0.6, 0.5) for t in "ab"] + [
        cell("zero", t, 0.4, 0.9, 0.5) for t in "ab"] + [
        cell("prompt", t, 0.21, 0.6, 0.5) for t in "ab"]
    (line,) = calibration_lines(results)
    assert line == ("m: ECE rises from 0.200 (source, mean confidence 0.600 for accuracy 0.500) "
                    "to zero 0.400 (mean confidence 0.900 for accuracy 0.500: overconfident by "
                    "0.400).")  # prompt's 0.01 rise is under the 0.02 threshold
    assert calibration_lines(results[:2] + results[4:]) == [
        "m: no method's ECE exceeds source's (0.200) by more than 0.02."]
