"""Zero, TDA, EATA and SAR: each method's defining step against a hand-computed case, and their
resets (episodic methods restore bit for bit, TDA empties its caches, the online methods go
back to the source weights and a fresh optimizer), and SAR's recovery as the authors' code runs
it (source weights, SGD's momentum kept)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import clip_classifier
from helpers.tta import (
    Eata,
    FeatureCache,
    Sar,
    Tda,
    Tpt,
    Zero,
    batchnorm_train_mode,
    build_method,
    method_factories,
    sample_selection,
    sar_parameters,
    zero_vote,
)
from helpers.tta import eata as eata_module
from helpers.tta.eata import fisher_information
from helpers.tta.sar import top_layers

NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "ankle boot"]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, reference):
    now = model.state_dict()
    for k in reference:
        assert torch.equal(now[k], reference[k]), f"{k} changed"


def entropy_of(logits):
    p = logits.double().softmax(-1)
    return -(p * p.log()).sum(-1)


@pytest.fixture
def clip_images():
    return torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- Zero

# Image first, then views, 4 classes. Confidence (margin of the top logit) orders them:
# row 3 (class 0, 7), row 1 (class 1, 6), row 0 (class 0, 5), then the flat rows.
VIEW_LOGITS = torch.tensor([[5.0, 0, 0, 0],
                            [0, 6.0, 0, 0],
                            [0, 0, 0.1, 0],
                            [7.0, 0, 0, 0],
                            [0, 0.2, 0, 0],
                            [0, 0, 0, 0.3]])


def test_zero_votes_for_the_most_frequent_class_among_the_confident_views():
    log_p = zero_vote(VIEW_LOGITS, keep=3)  # rows 3, 1, 0: two votes for class 0, one for 1
    kept = VIEW_LOGITS[[3, 1, 0]]
    votes = torch.tensor([2.0, 1, 0, 0])
    expected = (votes + 0.5 * kept.softmax(-1).mean(0)) / 3.5
    assert torch.allclose(log_p.exp(), expected, atol=1e-7)
    assert int(log_p.argmax()) == 0
    assert torch.isfinite(log_p).all()  # classes without a vote keep a finite logit


def test_zero_breaks_a_tie_by_the_first_non_kept_view_in_confidence_order():
    # keep 2: rows 3 (class 0) and 1 (class 1) tie. The authors (after their "bugfix
    # greedy_break") scan the views not kept in confidence order: row 0 (class 0, margin 5)
    # comes first, so class 0 wins, with half a vote more.
    log_p = zero_vote(VIEW_LOGITS, keep=2)
    assert int(log_p.argmax()) == 0
    mean_probs = VIEW_LOGITS[[3, 1]].softmax(-1).mean(0)
    expected = (torch.tensor([1.5, 1.0, 0, 0]) + 0.5 * mean_probs) / 3.0  # 2 + 0.5 + 0.5
    assert torch.allclose(log_p.exp(), expected, atol=1e-7)
    # the batch's order no longer decides: a weak class-1 view at index 2 (first after the
    # kept ones in the batch, the old rule's winner) loses to row 0, the more confident
    reordered = VIEW_LOGITS.clone()
    reordered[2] = torch.tensor([0, 0.1, 0, 0])
    assert int(zero_vote(reordered, keep=2).argmax()) == 0
    # the confidence order decides: a class-1 view of margin 4 (row 5) ranks before row 0's
    # class-0 view of margin 1, although row 0 comes first in the batch
    by_confidence = VIEW_LOGITS.clone()
    by_confidence[0], by_confidence[5] = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 4.0, 0, 0])
    assert int(zero_vote(by_confidence, keep=2).argmax()) == 1
    # no view left out votes for a tied class: the tied class with the higher mean probability
    no_match = VIEW_LOGITS.clone()
    no_match[2:] = torch.tensor([0, 0, 0.1, 0])
    no_match[2] = torch.tensor([0, 0, 0, 4.0])  # keep the two ties the most confident
    no_match[0], no_match[1] = torch.tensor([6.0, 0, 0, 0]), torch.tensor([0, 6.5, 0, 0])
    assert int(zero_vote(no_match, keep=2).argmax()) == 1


def authors_zero(logits, keep):
    """FarinaMatteo/zero ``Zero.zero`` written out (after their "bugfix greedy_break"): the
    vote counts at temperature eps, ties broken greedily over the views not kept in
    confidence order (``l[sorted_idx][k:]``); None where that finds no tied class."""
    probs = logits.softmax(1)
    ent = -(probs * probs.log()).sum(1)
    order = torch.argsort(ent)
    kept = logits[order[:keep]]
    p_bar = (kept / torch.finfo(kept.dtype).eps).softmax(1).sum(0)
    best, pred = torch.max(p_bar, dim=-1)
    ties = [int(pred)] + [i for i in range(len(p_bar)) if i != pred and p_bar[i] == best]
    if len(ties) > 1:
        matches = [int(p) for p in logits[order][keep:].argmax(1) if int(p) in ties]
        return matches[0] if matches else None
    return int(pred)


def test_zero_predicts_as_the_authors_code_on_random_views():
    gen = torch.Generator().manual_seed(0)
    checked = ties = 0
    for _ in range(300):
        logits = torch.randn(16, 3, generator=gen) * 2  # 3 classes, keep 4: frequent ties
        reference = authors_zero(logits, 4)
        if reference is None:
            continue
        checked += 1
        counts = torch.bincount(logits[entropy_of(logits).argsort()[:4]].argmax(1), minlength=3)
        ties += int((counts == counts.max()).sum() > 1)
        assert int(zero_vote(logits, 4).argmax()) == reference
    assert checked > 250 and ties > 30


def test_zero_sees_tpts_views_and_changes_nothing(small_clip, clip_images):
    tpt = Tpt(small_clip, NAMES, n_views=15)
    before = state(tpt.model)
    zero = Zero(tpt.model, n_views=15)
    assert zero.keep == tpt.keep == 1
    out = zero(clip_images, keys=[0, 1, 2, 3])
    for i, image in enumerate(clip_images):
        batch, _, _ = tpt.selection_of(image, key=i)  # the image and TPT's views of key i
        with torch.no_grad():
            assert torch.equal(out[i], zero_vote(tpt.model(batch), zero.keep))
    assert_same_state(tpt.model, before)
    assert torch.equal(zero(clip_images[2:3], keys=[2]), out[2:3])  # per image, any order
    assert Zero(tpt.model, n_views=63, selection=0.3).keep == 19  # the authors' latest gamma


# ---------------------------------------------------------------- TDA

def test_feature_cache_keeps_the_lowest_entropy_entries_per_class():
    cache = FeatureCache(capacity=2)
    one = torch.ones(2)
    cache.update(0, one, 0.5, one)
    cache.update(0, 2 * one, 0.3, one)  # inserted, sorted by entropy
    assert [e[1] for e in cache.entries[0]] == [0.3, 0.5]
    cache.update(0, 3 * one, 0.9, one)  # full and higher than the worst: ignored
    assert [e[1] for e in cache.entries[0]] == [0.3, 0.5]
    cache.update(0, 4 * one, 0.4, one)  # full, lower than the worst: replaces it
    assert [e[1] for e in cache.entries[0]] == [0.3, 0.4]
    assert torch.equal(cache.entries[0][1][0], 4 * one)
    cache.update(1, one, 0.7, one)  # another class has its own capacity
    assert len(cache) == 3 and sorted(cache.entries) == [0, 1]
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="at least one entry"):
        FeatureCache(0)


class FeatureHead(nn.Module):
    """A zero-shot head on hand-made features: the inputs are the features."""

    def __init__(self, text, scale):
        super().__init__()
        self.text, self.scale = text, scale

    def image_features(self, x):
        return F.normalize(x, dim=-1)

    def logits(self, features):
        return self.scale * features @ self.text.t()


class FeatureClassifier(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.preprocess, self.backbone = nn.Identity(), head
        self.class_names = ["a", "b", "c"]
        self.anchor = nn.Parameter(torch.zeros(1))  # evaluate() reads the model's device

    def forward(self, x):
        return self.backbone(x)


def test_tda_caches_and_logits_on_hand_made_features():
    model = FeatureClassifier(FeatureHead(torch.eye(3), 4.0))
    tda = Tda(model, shot_capacity=2, neg_shot_capacity=1)
    raw = torch.tensor([[1, 0.3, 0.1], [1, 0.6, 0.2], [1, 0.1, 0], [0.2, 1, 0]])
    f = F.normalize(raw, dim=-1)
    clip = 4.0 * f
    p = clip.softmax(-1)
    h = -(p * p.log()).sum(-1) / math.log2(3)  # the authors' normalised entropy
    # A and B are uncertain enough for the negative cache (0.2 < h < 0.5), C and D are not
    assert ((h > 0.2) & (h < 0.5)).tolist() == [True, True, False, False]
    out = tda(raw)

    def pos(i, j):
        return math.exp(-5.0 * (1 - float(f[i] @ f[j])))

    def neg(i, j):
        return math.exp(-1.0 * (1 - float(f[i] @ f[j])))

    mask_a = torch.tensor([1.0, 1.0, 0.0])  # A's probabilities within (0.03, 1): classes 0, 1
    assert ((p[0] > 0.03) & (p[0] < 1)).float().tolist() == mask_a.tolist()
    e0, e1, _ = torch.eye(3)
    # A: its own entry in each cache
    expected_a = clip[0] + 2.0 * pos(0, 0) * e0 - 0.117 * neg(0, 0) * mask_a
    # B: positive {A, B}; negative keeps A (one shot, A's entropy is lower)
    expected_b = clip[1] + 2.0 * (pos(1, 0) + pos(1, 1)) * e0 - 0.117 * neg(1, 0) * mask_a
    # C: lower entropy than B, so it replaces B in the full positive cache: {C, A}
    expected_c = clip[2] + 2.0 * (pos(2, 2) + pos(2, 0)) * e0 - 0.117 * neg(2, 0) * mask_a
    # D: class 1, its own entry; class 0 still {C, A}
    expected_d = (clip[3] + 2.0 * ((pos(3, 2) + pos(3, 0)) * e0 + pos(3, 3) * e1)
                  - 0.117 * neg(3, 0) * mask_a)
    expected = torch.stack([expected_a, expected_b, expected_c, expected_d])
    assert torch.allclose(out, expected, atol=1e-5)
    assert [e[1] for e in tda.positive.entries[0]] == pytest.approx(
        [(h[2] * math.log2(3)).item(), (h[0] * math.log2(3)).item()], rel=1e-5)
    assert tda.counters["negative_entries"] == 2
    # the stream decides, not the batching: one image at a time gives the same logits
    tda.reset()
    assert len(tda.positive) == len(tda.negative) == 0 and not tda.counters
    one_by_one = torch.cat([tda(row[None]) for row in raw])
    assert torch.allclose(one_by_one, out, atol=1e-6)


def test_tda_reset_empties_the_caches_and_starts_over(small_clip, clip_images):
    model = clip_classifier(small_clip, NAMES, cache=False)
    tda = Tda(model)
    first = tda(clip_images)
    with torch.no_grad():
        counts = torch.bincount(model(clip_images).argmax(-1))
    assert len(tda.positive) == int(counts.clamp(max=3).sum())  # 3 shots per class
    tda(clip_images)
    tda.reset()
    assert len(tda.positive) == 0 and len(tda.negative) == 0
    assert torch.equal(tda(clip_images), first)
    tda.reset()
    with torch.no_grad():  # alone in the caches, an image's cache logits are its own
        zero_shot = model(clip_images[:1])
    got = tda(clip_images[:1])
    own = 2.0 * F.one_hot(zero_shot.argmax(-1), len(NAMES))  # exp(-beta (1 - 1)) = 1
    if tda.counters["negative_entries"]:
        probs = zero_shot.softmax(-1)
        own = own - 0.117 * ((probs > 0.03) & (probs < 1)).float()
    assert torch.allclose(got, zero_shot + own, atol=1e-4)


def test_tda_with_views_averages_the_confident_views(small_clip, clip_images):
    model = clip_classifier(small_clip, NAMES, cache=False)
    tda = Tda(model, views="augmix", n_views=31)
    assert tda.keep == 3
    seen = tda.observe(clip_images[:1], [5])[0]
    tpt = Tpt(small_clip, NAMES, views="augmix", n_views=31)
    batch, _, kept = tpt.selection_of(clip_images[0], key=5)  # the same views for key 5
    with torch.no_grad():
        features = model.backbone.image_features(model.preprocess(batch))
        logits = model.backbone.logits(features)
    kept = entropy_of(logits).argsort()[:3]  # the 10% of 32 with the lowest entropy
    assert torch.allclose(seen.feature, features[kept].mean(0), atol=1e-6)
    assert torch.allclose(seen.logits, logits[kept].mean(0), atol=1e-5)


# ---------------------------------------------------------------- EATA

def test_eata_sample_filter_and_weights_by_hand():
    logits = torch.tensor([[8.0, 0, 0, 0],    # confident, class 0
                           [0.0, 0, 0, 0],    # uniform: unreliable (ln 4 > E_0)
                           [0.0, 0, 9, 0],    # confident, class 2
                           [0.0, 0, 0, 10]])  # confident, class 3
    e_margin = 0.4 * math.log(4)
    ent = entropy_of(logits).float()
    assert (ent < e_margin).tolist() == [True, False, True, True]
    # no average yet: every reliable sample is selected, the average starts as their mean
    reliable, selected, weights, average = sample_selection(logits, e_margin, None, 0.05)
    assert reliable.tolist() == selected.tolist() == [True, False, True, True]
    assert torch.allclose(weights, torch.exp(e_margin - ent[[0, 2, 3]]))
    probs = logits.softmax(-1)
    assert torch.allclose(average, probs[[0, 2, 3]].mean(0))
    # with an average leaning to class 0, the class-0 sample is redundant (cos ~ 1)
    leaning = torch.tensor([1.0, 0, 0, 0])
    cos = F.cosine_similarity(leaning[None], probs, dim=1)
    assert cos[0] > 0.99 and cos[2].abs() < 0.05 and cos[3].abs() < 0.05
    reliable, selected, weights, average = sample_selection(logits, e_margin, leaning, 0.05)
    assert selected.tolist() == [False, False, True, True]
    assert torch.allclose(weights, torch.exp(e_margin - ent[[2, 3]]))
    assert torch.allclose(average, 0.9 * leaning + 0.1 * probs[[2, 3]].mean(0))
    # nothing selected: the average stays
    _, selected, weights, same = sample_selection(torch.zeros(2, 4), e_margin, leaning, 0.05)
    assert not selected.any() and len(weights) == 0 and torch.equal(same, leaning)


def test_eata_step_is_the_weighted_entropy_step(tiny_cnn, images):
    reference = copy.deepcopy(tiny_cnn)
    eata = Eata(tiny_cnn, e_margin=10.0, d_margin=1.1, lr=0.1)  # everything selected
    out = eata(images)
    batchnorm_train_mode(reference)
    logits = reference(images)
    ent = entropy_of(logits).float()
    loss = (ent * torch.exp(10.0 - ent.detach())).mean()
    chosen = [p for m in reference.modules() if isinstance(m, nn.BatchNorm2d)
              for p in m.parameters()]
    grads = torch.autograd.grad(loss, chosen)
    with torch.no_grad():
        expected = [p - 0.1 * g for p, g in zip(chosen, grads)]
    assert torch.allclose(out, logits.detach(), atol=1e-6)  # predicted before the update
    for p, e in zip(eata.params, expected):
        assert torch.allclose(p, e, atol=1e-6)
    assert eata.counters["selected"] == len(images) and eata.counters["steps"] == 1


def test_eata_fisher_and_its_regulariser(tiny_cnn, images):
    source = state(tiny_cnn)
    clean = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    eata = Eata(tiny_cnn, fisher_images=clean, fisher_batch_size=4, lr=0.1)
    assert_same_state(tiny_cnn, source)  # the estimate's train-mode running stats undone
    assert eata.config()["variant"] == "EATA" and eata.config()["fisher_count"] == 10
    # by hand: squared gradients of the pseudo-label cross-entropy, batches of 4, 4, 2
    reference = copy.deepcopy(tiny_cnn)
    batchnorm_train_mode(reference)
    chosen = [p for m in reference.modules() if isinstance(m, nn.BatchNorm2d)
              for p in m.parameters()]
    total = [torch.zeros_like(p) for p in chosen]
    for batch in clean.split(4):
        logits = reference(batch)
        grads = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), chosen)
        total = [t + g.square() for t, g in zip(total, grads)]
    for mine, theirs in zip(eata.fishers, total):
        assert torch.allclose(mine, theirs / 3, rtol=1e-5, atol=1e-12)
    assert eata.anti_forgetting().item() == 0.0  # at the source weights
    with torch.no_grad():
        eata.params[0].add_(0.5)
    expected = 2000.0 * (eata.fishers[0] * 0.25).sum()
    assert eata.anti_forgetting().item() == pytest.approx(expected.item(), rel=1e-6)
    assert Eata(tiny_cnn).config()["variant"].startswith("ETA")
    assert fisher_information(tiny_cnn, eata.params, torch.utils.data.TensorDataset(
        clean, torch.zeros(10)), 64)[0].shape == eata.params[0].shape


@pytest.mark.parametrize("method", ["eata", "sar"])
def test_online_methods_adapt_and_reset_restores_weights_and_optimizer(method, tiny_cnn, images):
    source = state(tiny_cnn)
    adapter = build_method(method, tiny_cnn, e_margin=10.0, lr=0.5,
                           **({"d_margin": 1.1} if method == "eata" else {}))
    for i in range(3):  # online: the weights carry over from batch to batch
        adapter(images[2 * i:2 * i + 2])
    changed = [k for k, v in tiny_cnn.state_dict().items() if not torch.equal(v, source[k])]
    assert any(k.endswith("weight") for k in changed)
    assert adapter.optimizer.state  # momentum buffers
    adapter.reset()
    assert_same_state(tiny_cnn, source)
    assert len(adapter.optimizer.state) == 0 and not adapter.counters
    assert all(p.grad is None for p in tiny_cnn.parameters())
    assert all(p.requires_grad for p in tiny_cnn.parameters())  # frozen() undone


@pytest.mark.parametrize("method", ["eata", "sar"])
def test_online_methods_adapt_clips_layer_norms(method, small_clip, clip_images):
    model = clip_classifier(small_clip, NAMES, cache=False)
    source = state(model)
    adapter = build_method(method, model, e_margin=10.0,
                           **({"d_margin": 1.1} if method == "eata" else {}))
    assert adapter.lr == 0.001  # the authors' ViT learning rate
    adapter(clip_images)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, source[k])]
    assert changed and all(".ln_" in k for k in changed)
    adapter.reset()
    assert_same_state(model, source)


# ---------------------------------------------------------------- SAR

@pytest.mark.parametrize("rho", [0.05, 0.3])
def test_sar_step_is_a_hand_written_sam_step(tiny_cnn, images, rho):
    reference = copy.deepcopy(tiny_cnn)
    batchnorm_train_mode(reference)
    with torch.no_grad():
        margin = entropy_of(reference(images)).sort().values[4].item()  # 4 of 6 reliable
    sar = Sar(tiny_cnn, e_margin=margin, lr=0.1, rho=rho)
    sar(images)
    params = sar_parameters(reference)
    logits = reference(images)
    ent = entropy_of(logits).float()
    reliable = ent < margin
    assert reliable.sum() == 4
    g1 = torch.autograd.grad(ent[reliable].mean(), params)
    norm = torch.stack([g.norm(p=2) for g in g1]).norm(p=2)
    with torch.no_grad():
        source = [p.clone() for p in params]
        for p, g in zip(params, g1):
            p.add_(g * (rho / (norm + 1e-12)))  # w + e(w)
    second = entropy_of(reference(images)).float()[reliable]
    still = second < margin  # the climb raises the entropy: some fall out of E_0
    if rho > 0.1:  # none left: back at w, nothing averaged; SGD steps on zero gradients as the
        assert not still.any()  # authors' code does, which moves nothing on the first step
        assert all(torch.equal(p, w) for p, w in zip(sar.params, source))
        assert sar.loss_average is None and sar.counters["steps"] == 0
        assert sar.counters["momentum_steps"] == 1
        return
    assert 0 < still.sum() < 4 and sar.counters["steps"] == 1
    g2 = torch.autograd.grad(second[still].mean(), params)
    for p, w, g in zip(sar.params, source, g2):
        assert torch.allclose(p, w - 0.1 * g, atol=1e-7)  # SGD's first step at w, gradient at w + e
    plain = [w - 0.1 * g for w, g in zip(source, g1)]
    assert any(not torch.allclose(p, q, atol=1e-6) for p, q in zip(sar.params, plain))
    assert sar.loss_average == pytest.approx(second[still].mean().item(), rel=1e-5)


def momentum(sar):
    return [sar.optimizer.state[p]["momentum_buffer"].clone() for p in sar.params]


def test_sar_recovery_without_the_authors_quirks_starts_a_fresh_optimizer(tiny_cnn, images):
    source = state(tiny_cnn)
    sar = Sar(tiny_cnn, e_margin=10.0, lr=0.5, as_authors=False)
    sar(images[:3])
    assert not all(torch.equal(v, source[k]) for k, v in tiny_cnn.state_dict().items())
    assert sar.loss_average is not None and sar.counters["recoveries"] == 0
    sar.loss_average = -10.0  # 0.9 * -10 + 0.1 * loss < 0.2 after the next update
    sar(images[3:])
    assert sar.counters["recoveries"] == 1 and sar.loss_average is None
    assert_same_state(tiny_cnn, source)
    assert len(sar.optimizer.state) == 0
    sar.e_margin = 0.0  # no sample reliable: no step at all (the forward moves batch-norm
    sar(images[:3])  # running statistics, which SAR never uses, only)
    assert all(torch.equal(p, source[k]) for k, p in tiny_cnn.named_parameters())
    assert sar.counters["momentum_steps"] == 0


def test_sar_steps_on_the_momentum_when_no_sample_is_reliable(tiny_cnn, images):
    sar = Sar(tiny_cnn, e_margin=10.0, lr=0.5)
    sar(images[:3])
    w1, buf1 = [p.detach().clone() for p in sar.params], momentum(sar)
    sar.e_margin = 0.0  # no entropy is below 0: the authors' loss is NaN, its gradients zero
    sar(images[3:])
    assert sar.counters["steps"] == 1 and sar.counters["momentum_steps"] == 1
    for p, w, b, b2 in zip(sar.params, w1, buf1, momentum(sar)):
        assert torch.allclose(b2, 0.9 * b, atol=0, rtol=1e-6)  # buffer <- 0.9 buffer + 0
        assert torch.allclose(p, w - 0.5 * 0.9 * b, atol=1e-7)  # w <- w - lr * buffer
    assert sar.counters["recoveries"] == 0


def test_sar_recovery_keeps_the_momentum_and_loss_average_as_the_authors_code(tiny_cnn, images):
    source = state(tiny_cnn)
    sar = Sar(tiny_cnn, e_margin=10.0, lr=0.5)
    sar(images[:3])
    buf1 = momentum(sar)
    sar.e_margin, sar.loss_average = 0.0, 0.1  # no reliable sample; the average stays 0.1
    sar(images[3:])  # steps on the momentum, then recovers: source weights, momentum kept
    assert sar.counters["recoveries"] == 1 and sar.counters["momentum_steps"] == 1
    assert_same_state(tiny_cnn, source)
    for b, b2 in zip(buf1, momentum(sar)):
        assert torch.allclose(b2, 0.9 * b, atol=0, rtol=1e-6)
    assert sar.loss_average == 0.1  # their reset's None is overwritten by forward
    sar(images[3:])  # the average is still below 0.2: another recovery
    assert sar.counters["recoveries"] == 2
    assert_same_state(tiny_cnn, source)
    sar.loss_average = None  # no recovery now: the kept momentum moves the source weights
    source_params = [p.detach().clone() for p in sar.params]
    sar(images[3:])
    assert sar.counters["recoveries"] == 2
    for p, w, b in zip(sar.params, source_params, buf1):
        assert torch.allclose(p, w - 0.5 * 0.9 ** 3 * b, atol=1e-7)


def test_sar_leaves_out_the_top_blocks_and_final_norm():
    from clip.model import CLIP

    vit = CLIP(16, 32, 12, 64, 16, 8, 49408, 64, 1, 1)  # ViT-Base's 12 blocks, tiny width
    model = clip_classifier(vit, ["a", "b"], cache=False)
    skipped = top_layers(model)
    assert skipped == ["backbone.visual.transformer.resblocks.9",
                       "backbone.visual.transformer.resblocks.10",
                       "backbone.visual.transformer.resblocks.11"]
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = [names[id(p)] for p in sar_parameters(model)]
    blocks = [f"backbone.visual.transformer.resblocks.{i}.ln_{j}.{w}" for i in range(9)
              for j in (1, 2) for w in ("weight", "bias")]
    # the authors' collect_params: every norm but names containing blocks.9-11, norm. or = norm
    assert chosen == (["backbone.visual.ln_pre.weight", "backbone.visual.ln_pre.bias"] + blocks
                      + ["backbone.visual.ln_post.weight", "backbone.visual.ln_post.bias"])

    class TimmLike(nn.Module):  # timm's ViT: ``blocks`` and a final ``norm``
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(4)) for _ in range(8)])
            self.norm = nn.LayerNorm(4)

    assert top_layers(TimmLike()) == ["blocks.6", "blocks.7", "norm"]
    assert len(sar_parameters(TimmLike())) == 2 * 6
    import torchvision

    resnet = torchvision.models.resnet18()
    assert top_layers(resnet) == ["layer4"]
    assert len(sar_parameters(resnet)) == 2 * (1 + 4 + 5 + 5)  # stem, layers 1-3 with downsamples


# ---------------------------------------------------------------- registry and errors

def test_methods_by_name_and_where_they_apply(tiny_cnn, small_clip):
    factories = method_factories(["zero", "tda", "eata", "sar"])
    clip_model = clip_classifier(small_clip, NAMES, cache=False)
    clip_model.__dict__["clip_model"] = small_clip
    assert factories["zero"](tiny_cnn, "cnn") is None and factories["tda"](tiny_cnn, "cnn") is None
    assert isinstance(factories["eata"](tiny_cnn, "cnn"), Eata)
    assert isinstance(factories["sar"](tiny_cnn, "cnn"), Sar)
    built = {name: make(clip_model, "clip") for name, make in factories.items()}
    assert [type(a).__name__ for a in built.values()] == ["Zero", "Tda", "Eata", "Sar"]
    assert built["eata"].config()["fisher_images"] is None


def test_bad_inputs_say_how_to_fix_them(tiny_cnn):
    with pytest.raises(ValueError, match="TDA needs a CLIP classifier"):
        Tda(tiny_cnn)
    bare = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.LayerNorm(3))
    with pytest.raises(ValueError, match="pass e_margin"):
        Eata(bare)
    with pytest.raises(ValueError, match="pass e_margin"):
        Sar(bare)
    with pytest.raises(ValueError, match="N x C x H x W"):
        Eata(tiny_cnn, fisher_images=torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="keeps 0 of 8 views"):
        Zero(tiny_cnn, n_views=7)
    with pytest.raises(ValueError, match="unknown dataset"):
        Eata(tiny_cnn, fisher_images="imagenet:train")


def test_eata_estimates_the_fisher_once_per_model_and_source(tiny_cnn, monkeypatch):
    """A grid builds EATA once per data set on the same source model: the second build reuses
    the first estimate (equal bit for bit to a fresh one); changed weights or other source
    images are estimated anew."""
    eata_module.FISHERS.clear()
    calls = []
    estimate = eata_module.fisher_information
    monkeypatch.setattr(eata_module, "fisher_information",
                        lambda *args: calls.append(1) or estimate(*args))
    clean = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    source = state(tiny_cnn)
    first = Eata(tiny_cnn, fisher_images=clean, fisher_batch_size=4)
    second = Eata(tiny_cnn, fisher_images=clean, fisher_batch_size=4)
    assert len(calls) == 1 and second.fisher_count == 10
    assert_same_state(tiny_cnn, source)
    eata_module.FISHERS.clear()
    fresh = Eata(tiny_cnn, fisher_images=clean, fisher_batch_size=4)
    assert len(calls) == 2
    for a, b, c in zip(first.fishers, second.fishers, fresh.fishers):
        assert torch.equal(a, b) and torch.equal(a, c) and a is not b
    Eata(tiny_cnn, fisher_images=clean[:8], fisher_batch_size=4)  # other images
    Eata(tiny_cnn, fisher_images=clean, fisher_batch_size=2)  # other batches
    assert len(calls) == 4
    with torch.no_grad():
        next(tiny_cnn.parameters()).add_(0.01)  # the model changed in place
    Eata(tiny_cnn, fisher_images=clean, fisher_batch_size=4)
    assert len(calls) == 5
    dataset = torch.utils.data.TensorDataset(clean, torch.zeros(10, dtype=torch.long))
    Eata(tiny_cnn, fisher_images=dataset, fisher_batch_size=4)
    Eata(tiny_cnn, fisher_images=dataset, fisher_batch_size=4)  # unnamed: never cached
    assert len(calls) == 7


def test_eata_fisher_images_by_data_set_name_for_profiles(tiny_cnn):
    """A profile names the source images (settings must be plain values): 20 random clean
    FashionMNIST training images here."""
    options = {"eata": {"fisher_images": "fashion-mnist:train", "fisher_size": 20}}
    eata = method_factories(["eata"], options)["eata"](tiny_cnn, "cnn")
    config = eata.config()
    assert config["variant"] == "EATA" and config["fisher_images"] == "fashion-mnist:train"
    assert config["fisher_count"] == 20
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in eata.fishers)


def test_eata_and_sar_learning_rates_are_the_papers_times_lr_scale(tiny_cnn):
    """0.00025 for a batch-norm CNN (EATA's ResNet-50 rate), scaled by ``lr_scale`` (notebook
    01's probe of larger rates); an explicit ``lr`` is scaled too."""
    assert Eata(tiny_cnn).lr == 0.00025 and Sar(tiny_cnn).lr == 0.00025
    assert Eata(tiny_cnn, lr_scale=10).optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
    assert Sar(tiny_cnn, lr_scale=100).config()["lr"] == pytest.approx(0.025)
    assert Sar(tiny_cnn, lr=0.1, lr_scale=2).lr == pytest.approx(0.2)
