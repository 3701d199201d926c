"""Candidate object masks for an image, and the choice of the object's mask by Grad-CAM.

One interface, ``provider(image, cam=None) -> list[Mask]``, with two providers:
``SamMasks`` (Segment-Anything: automatic masks plus a point/box prompt at the heat-map's
peak; needs its checkpoint) and ``OfflineMasks`` (no weights: GrabCut seeded by the heat-map
and graph-based segments), so that the notebook runs with real masks where SAM's weights
cannot be had. ``object_mask`` picks the candidate that best covers the heat-map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths
from .models import NotACheckpointError, checkpoint_file, default_device

SAM_CHECKPOINTS = {  # Meta's release files (segment-anything README)
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass
class Mask:
    """A binary mask (H x W, bool) with the provider's confidence in it and its origin."""
    mask: np.ndarray
    score: float
    source: str

    @property
    def area(self) -> float:
        return float(self.mask.mean())


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """A [0, 1] C x H x W tensor as the H x W x 3 uint8 array SAM and OpenCV take."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be C x H x W with 1 or 3 channels, got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    return array.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy()


def _peak(cam: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(col), int(row)  # x, y


def _box(mask: np.ndarray) -> np.ndarray | None:
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()])


# ---------------------------------------------------------------- Segment-Anything

class SamMasks:
    """Segment-Anything masks: the automatic mask generator over a grid of points, plus,
    given a heat-map, the masks prompted by its peak (a point) and by the box around its
    upper half. Scores are SAM's predicted IoU."""

    def __init__(self, checkpoint=None, model_type: str = "vit_b", device=None,
                 points_per_side: int = 16, sam=None):
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor

        self.description = "Segment-Anything"
        if sam is None:
            sam = self._load(checkpoint, model_type)
            self.description = f"Segment-Anything {model_type} ({Path(self.checkpoint).name})"
        sam = sam.to(device or default_device()).eval()
        self.generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side)
        self.predictor = SamPredictor(sam)

    def _load(self, checkpoint, model_type: str):
        """SAM from ``checkpoint`` (a path: absolute, or relative to TTA_CHECKPOINTS, then the
        repository), by default Meta's release file of ``model_type`` under TTA_CHECKPOINTS."""
        from segment_anything import sam_model_registry

        if model_type not in SAM_CHECKPOINTS:
            raise ValueError(f"Unknown SAM model {model_type!r}; valid: {sorted(SAM_CHECKPOINTS)}")
        file = checkpoint_file(
            checkpoint or SAM_CHECKPOINTS[model_type], "Segment-Anything checkpoint",
            f"Download {SAM_URL}{SAM_CHECKPOINTS[model_type]} and put it under TTA_CHECKPOINTS "
            f"(now {paths.CHECKPOINTS}; or pass checkpoint=<path>), or use masks='offline' (no "
            "weights needed).")
        self.checkpoint = str(file)
        try:
            return sam_model_registry[model_type](checkpoint=str(file))
        except Exception as error:  # noqa: BLE001 - torch raises many kinds for junk
            raise NotACheckpointError(
                f"not a SAM checkpoint: {file} ({type(error).__name__}: not the weights of "
                f"Segment-Anything {model_type}). Download {SAM_URL}"
                f"{SAM_CHECKPOINTS[model_type]} (or give model_type= of the file's model), "
                "or use masks='offline' (no weights needed).") from None

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, cam: np.ndarray | None = None) -> list[Mask]:
        array = to_uint8_hwc(image)
        found = [Mask(m["segmentation"], float(m["predicted_iou"]), "sam-auto")
                 for m in self.generator.generate(array)]
        if cam is not None:
            self.predictor.set_image(array)
            x, y = _peak(cam)
            masks, scores, _ = self.predictor.predict(point_coords=np.array([[x, y]]),
                                                      point_labels=np.array([1]))
            found += [Mask(m, float(s), "sam-point") for m, s in zip(masks, scores)]
            box = _box(cam >= 0.5)
            masks, scores, _ = self.predictor.predict(box=box, multimask_output=False)
            found += [Mask(m, float(s), "sam-box") for m, s in zip(masks, scores)]
        return found


# ---------------------------------------------------------------- offline

class OfflineMasks:
    """Masks without weights. GrabCut (OpenCV) seeded by the heat-map: sure background
    where it is below ``low``, sure object where above ``high``, probable in between; a
    centred box when there is no heat-map. Plus the larger Felzenszwalb segments
    (scikit-image) as further candidates. Scores: the fraction of the GrabCut iterations'
    final labelling that is not a seed's (how much GrabCut decided), for segments the
    segment's compactness; both in [0, 1]."""

    description = "offline masks (GrabCut seeded by Grad-CAM, Felzenszwalb segments)"

    def __init__(self, low: float = 0.15, high: float = 0.8, iterations: int = 4,
                 min_area: float = 0.02, segments: int = 6, seed: int = 0):
        if not 0 <= low < high <= 1:
            raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
        self.low, self.high, self.iterations = low, high, iterations
        self.min_area, self.segments, self.seed = min_area, segments, seed

    def grabcut(self, array: np.ndarray, cam: np.ndarray | None) -> Mask | None:
        import cv2

        height, width = array.shape[:2]
        seeds = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
        if cam is None:
            seeds[height // 10: -height // 10, width // 10: -width // 10] = cv2.GC_PR_FGD
        else:
            seeds[cam >= (self.low + self.high) / 2] = cv2.GC_PR_FGD
            seeds[cam < self.low] = cv2.GC_BGD
            seeds[cam >= self.high] = cv2.GC_FGD
        if not (seeds == cv2.GC_BGD).any():  # GrabCut needs some background to model
            seeds[[0, -1], :] = seeds[:, [0, -1]] = cv2.GC_BGD
        cv2.setRNGSeed(self.seed)
        labels = seeds.copy()
        background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
        cv2.grabCut(array[..., ::-1].copy(), labels, None, background, foreground,
                    self.iterations, cv2.GC_INIT_WITH_MASK)
        mask = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        if not mask.any():
            return None
        decided = np.isin(seeds, (cv2.GC_PR_BGD, cv2.GC_PR_FGD)).mean()
        return Mask(mask, float(decided), "grabcut")

    def felzenszwalb(self, array: np.ndarray) -> list[Mask]:
        from skimage.segmentation import felzenszwalb

        scale = array.shape[0] * array.shape[1] / 100
        labels = felzenszwalb(array, scale=scale, sigma=0.8, min_size=int(scale / 4))
        ids, counts = np.unique(labels, return_counts=True)
        found = []
        for label in ids[np.argsort(-counts)][: self.segments]:
            mask = labels == label
            box = _box(mask)
            fill = mask.sum() / ((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
            found.append(Mask(mask, float(fill), "felzenszwalb"))
        return found

    def __call__(self, image: torch.Tensor, cam: np.ndarray | None = None) -> list[Mask]:
        array = to_uint8_hwc(image)
        found = [m for m in [self.grabcut(array, cam)] if m is not None]
        found += self.felzenszwalb(array)
        return [m for m in found if m.area >= self.min_area]


# ---------------------------------------------------------------- the object's mask

def cam_coverage(mask: np.ndarray, cam: np.ndarray) -> dict:
    """How a mask covers a heat-map: the share of the heat-map's mass inside it, its area,
    and their soft IoU (mass inside over mass plus the cold area inside), which is 1 only
    for a mask that holds all the heat and nothing cold."""
    cam = cam.astype(np.float64)
    inside = cam[mask].sum()
    total = cam.sum()
    share = inside / total if total > 0 else 0.0
    soft_iou = inside / (total + (1 - cam[mask]).sum()) if total > 0 else 0.0
    return {"mass_share": float(share), "area": float(mask.mean()), "soft_iou": float(soft_iou)}


def object_mask(masks: list[Mask], cam: np.ndarray, max_area: float = 0.9):
    """The index of the object's mask among ``masks`` and every candidate's coverage: the
    mask holding the largest share of the Grad-CAM mass once the cold area it also takes is
    counted against it (soft IoU), among masks covering at most ``max_area`` of the image.
    The raw share alone would always prefer the largest mask (the whole image holds all the
    mass; on the rocket photo, the sky). None when no mask qualifies."""
    coverage = [cam_coverage(m.mask, cam) for m in masks]
    allowed = [i for i, c in enumerate(coverage) if c["area"] <= max_area]
    if not allowed:
        return None, coverage
    return max(allowed, key=lambda i: coverage[i]["soft_iou"]), coverage


PROVIDERS = {"offline": OfflineMasks, "sam": SamMasks}


def mask_provider(name: str = "offline", **options):
    """A provider by name: ``offline`` or ``sam`` (options: checkpoint, model_type, ...)."""
    if name not in PROVIDERS:
        raise ValueError(f"Unknown mask provider {name!r}; valid: {sorted(PROVIDERS)}")
    return PROVIDERS[name](**options)
