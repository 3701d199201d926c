"""Zero (Farina et al., *Frustratingly Easy Test-Time Adaptation of Vision-Language Models*,
NeurIPS 2024; the authors' code: FarinaMatteo/zero, ``ttas/zero.py`` and ``utils/tools.py``).

TPT without the prompt tuning: the test image and its augmented views go through the frozen
classifier once, the most confident of them are kept (TPT's selection), and the prediction
is the argmax of their marginal at zero softmax temperature: each kept view votes for its
arg-max class, the class with most votes wins. No backward pass, no text encoder at test
time: the cost is one batched forward of the image encoder over the views.
"""

from __future__ import annotations

import torch

from ..precision import Precision, model_device
from ..views import views_per_image
from .base import ACTIVATIONS, Adapter, images_per_pass
from .losses import entropy
from .registry import register
from .tpt import tpt_views, view_selection, views_for

TIE_VOTE = 0.5  # the tie winner's extra half vote; see ``zero_vote``
SMOOTHING = 0.5  # the weight of the kept views' mean probability in the reported distribution


def tie_winner(logits: torch.Tensor, order: torch.Tensor, keep: int, tied: torch.Tensor,
               mean_probs: torch.Tensor) -> int:
    """The authors' greedy tie-break (``greedy_break`` after their fix "bugfix greedy_break",
    FarinaMatteo/zero cbd7949): among the views *not* kept, in confidence order (``order``:
    all views by increasing entropy; the code reads ``l[sorted_idx][k:]``), the first whose
    arg-max is one of the ``tied`` classes wins. If none is, the authors' fallback
    (``break_sample_tie``) masks the other classes with ``~`` on an integer tensor, a bitwise
    not that indexes the wrong classes; here the tied class with the highest mean probability
    over the kept views wins instead."""
    tied_set = set(tied.tolist())
    for prediction in logits[order[keep:]].argmax(-1).tolist():
        if prediction in tied_set:
            return prediction
    return int(tied[mean_probs[tied].argmax()])


def zero_vote(logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Zero's prediction from the logits of the image and its views (views x classes) as a
    distribution over classes (log-probabilities).

    The authors return the vote counts of the ``keep`` most confident views (their
    ``p_bar``, with one more vote for a tie's winner), which only an arg-max can use. Here the
    reported distribution is ``(votes + 0.5 [tie winner] + 0.5 mean_probs) / total``, with
    ``mean_probs`` the kept views' mean softmax: its arg-max is exactly the authors' vote
    (half a vote breaks a tie, and half a vote spread over the classes cannot overturn a
    whole one), its confidence is close to the share of kept views that agree, a
    calibration-meaningful number for ECE, and no class has probability zero, so the
    log-probabilities stay finite for the ensemble rules and temperature fitting.
    A view's own arg-max takes the first of equal logits, where the authors' softmax at
    temperature eps would split its vote (equal float logits do not occur in practice)."""
    order = entropy(logits).argsort()  # TPT's confidence order (``confident_views``)
    kept = logits[order[:keep]].float()
    votes = torch.bincount(kept.argmax(-1), minlength=logits.shape[-1]).float()
    mean_probs = kept.softmax(-1).mean(0)
    score = votes + SMOOTHING * mean_probs
    tied = (votes == votes.max()).nonzero().flatten()
    if len(tied) > 1:
        score[tie_winner(logits, order, keep, tied, mean_probs)] += TIE_VOTE
    return (score / score.sum()).log()


@register("zero")
class Zero(Adapter):
    """Zero with the paper's defaults: TPT's 63 views plus the image (random resized crops and
    flips for ImageNet-size images, AugMix-style views for small ones, exactly TPT's views
    for the same seed and image key), keep the 10% with the lowest entropy (``int``: 6 of
    64), predict by their vote. The authors' latest code raises the kept share to 0.3
    (``self.gamma = 0.3``, "will also update paper"); the paper's and TPT's 0.1 is the
    default here so that Zero and TPT keep the same views; ``selection=0.3`` gives theirs.

    Works on any classifier (it needs only logits); the method list offers it for CLIP
    classifiers, where the text features are fixed and cached (``clip_classifier``), so the
    cost per image is one forward of the image encoder over the 64 inputs. ``precision``
    (``helpers.precision``): that forward under float16 autocast on CUDA (``"auto"``), in
    float32 on a CPU; the vote is counted on float32 logits. ``chunk``: test images per
    forward (their views together; None: by ``base.BATCH_BUDGET``, 1: one at a time)."""
    confidence = ("the predicted class's share of the smoothed vote of the kept (most confident) "
                  "views: its votes plus 0.5 times their mean probability of it (plus a tie "
                  "winner's half vote), over the total of those for all classes")

    name = "zero"
    needs_text = shardable = True  # a method for vision-language models

    def __init__(self, model, views="auto", n_views: int = 63, selection: float = 0.1,
                 keep: int | None = None, seed: int = 0, precision: str = "auto",
                 chunk: int | None = None):
        super().__init__(model, seed)
        images_per_pass(1, 1, chunk)  # a bad chunk fails here
        self.chunk = chunk
        self.precision = Precision(precision, model_device(model))
        self.n_views, self.keep = view_selection(views, n_views, selection, keep)
        self.selection = selection
        self.views = None if views == "auto" else tpt_views(views, self.n_views, 0)

    def forward(self, images, keys):
        """The image and its views of ``chunk`` test images (None: as many as
        ``base.BATCH_BUDGET`` holds) in one forward, each image voted on alone."""
        self.model.eval()
        generators = [self.generator(k) for k in keys]
        views = views_per_image(views_for(self.views, self.n_views, images), images, generators)
        chunk = images_per_pass(len(images), (self.n_views + 1) * images[0].numel()
                                * ACTIVATIONS, self.chunk)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), chunk):
                batch = torch.cat([torch.cat([image[None], next(views)])
                                   for image in images[start:start + chunk]])
                with self.precision.autocast():  # the model only, not the views' arithmetic
                    logits = self.model(batch).float()
                out += [zero_vote(one, self.keep) for one in logits.split(self.n_views + 1)]
        return torch.stack(out)

    def config(self) -> dict:
        return {"method": self.name, "views": repr(self.views) if self.views
                else f"auto ({self.n_views})", "n_views": self.n_views, "keep": self.keep,
                "seed": self.seed, "precision": self.precision.describe()}
