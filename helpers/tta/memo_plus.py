"""MEMO_PLUS: MEMO whose views look at the object. Per test image, a Grad-CAM heat-map of
the source model's prediction picks the object's mask among a mask provider's candidates
(Segment-Anything, or the offline GrabCut/segments provider); a share ``focus`` of the views
are then object-focused (crops around it, background blurred or replaced, the object alone
augmented), the rest ordinary MEMO views. The update, prediction and reset are MEMO's."""

from __future__ import annotations

import torch

from ..augment import RecipeViews
from ..cam import heat_maps
from ..masks import mask_provider, object_mask
from ..views import FOCUS_KINDS, AugMixViews, FocusedViews
from .memo import Memo
from .registry import register


@register("memo_plus")
class MemoPlus(Memo):
    """MEMO with object-focused views. ``masks``: a provider name (``offline``, ``sam``) or
    a provider; ``focus``: the share of object-focused views; ``kinds``: which focused views;
    ``object_recipe``: the named augmentations of the object-only views; ``ordinary_recipe``:
    None for MEMO's AugMix views, or a recipe of named augmentations for the other views.
    An image whose heat-map selects no mask gets ordinary views only (counted as
    ``no_object_mask``). ``focus_log`` keeps, per adapted image in order, the chosen mask's
    origin, area and coverage of the heat-map."""

    name = "memo_plus"

    def __init__(self, model, masks="offline", n_views: int = 64, focus: float = 0.5,
                 kinds=FOCUS_KINDS, cam_method: str = "gradcam", max_area: float = 0.9,
                 mask_options: dict | None = None, object_recipe="object",
                 ordinary_recipe=None, **memo_options):
        if not 0 < focus <= 1:
            raise ValueError(f"focus (the share of object-focused views) must be in (0, 1], "
                             f"got {focus}")
        n_focused = max(1, round(n_views * focus))
        super().__init__(model, views=self.make_views, n_views=n_views, **memo_options)
        self.masks = (mask_provider(masks, **(mask_options or {})) if isinstance(masks, str)
                      else masks)
        self.focus, self.cam_method, self.max_area = focus, cam_method, max_area
        self.ordinary = (self._ordinary(ordinary_recipe, n_views - n_focused)
                         if n_views > n_focused else None)
        self.fallback = self._ordinary(ordinary_recipe, n_focused)
        self.focused = FocusedViews(n_focused, kinds, object_recipe)
        self.focus_log: list[dict] = []
        self._objects: dict = {}  # id(generator) -> (generator, find_object's result)

    @staticmethod
    def _ordinary(recipe, n_views: int):
        return AugMixViews(n_views) if recipe is None else RecipeViews(recipe, n_views)

    def find_object(self, image: torch.Tensor):
        """(mask or None, heat-map, candidates, index of the chosen one, their coverage)."""
        cam = heat_maps(self.model, image[None], method=self.cam_method)[0]
        candidates = self.masks(image, cam)
        best, coverage = object_mask(candidates, cam, self.max_area)
        mask = None if best is None else torch.from_numpy(candidates[best].mask)
        return mask, cam, candidates, best, coverage

    def _object_of(self, image: torch.Tensor, generator: torch.Generator):
        """The object of an image being adapted, found once with the source model: later
        steps (``steps`` > 1) ask for fresh views of the same image, known by its generator
        (one per image, kept for the call's images, which may adapt together)."""
        if id(generator) not in self._objects:
            self._objects[id(generator)] = (generator, self.find_object(image))
            self._log(*self._objects[id(generator)][1])
        return self._objects[id(generator)][1]

    def _log(self, mask, heat, candidates, best, coverage) -> None:
        if mask is None:
            self.counters["no_object_mask"] += 1
            self.focus_log.append({"source": None})
        else:
            self.counters[f"mask_{candidates[best].source}"] += 1
            self.focus_log.append({"source": candidates[best].source, **coverage[best]})

    def make_views(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mask = self._object_of(image, generator)[0]
        if mask is None:
            focused = self.fallback(image, generator)
        else:
            focused = self.focused(image, mask, generator)
        if self.ordinary is None:
            return focused
        return torch.cat([self.ordinary(image, generator), focused])

    def forward(self, images, keys):
        self._objects.clear()  # the generators of the last call's images are gone
        try:
            return super().forward(images, keys)
        finally:
            self._objects.clear()

    def reset(self) -> None:
        super().reset()
        self.focus_log.clear()
        self._objects.clear()

    def config(self) -> dict:
        n_ordinary = self.ordinary.n_views if self.ordinary else 0
        return {**super().config(), "views": f"{n_ordinary} ordinary + {self.focused.n_views} "
                f"object-focused", "masks": getattr(self.masks, "description", repr(self.masks)),
                "focus": self.focus, "cam": self.cam_method, "focused_views": repr(self.focused),
                "ordinary_views": repr(self.ordinary)}
