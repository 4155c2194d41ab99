"""Domain-randomised synthetic slices for training the built-in model (SynthSeg-like, 2D).

Every image is drawn from a random *label map* with anatomy-like structure — a body outline with a
subcutaneous rim, organs that touch and overlap, organs made of parts (cortex rings, inner blobs,
vessel-like tubes), holes, thin tubular structures, and organs large enough to fill the image — and
then given a random *appearance*: an intensity per label, texture, partial-volume blur, a change of
resolution, a bias field, Gaussian or speckle noise, and a CT-like or MR-like window. Nothing in it
is learnt from, or copied from, patient data, so real anatomy stays available for honest
evaluation.

The objects a prompt may mean are returned as a hierarchy: each label region (a *part*), each organ
with its parts (a *whole*) and the body. ``parent`` links a part to its whole so that an ambiguous
click can be trained against nested targets, as SAM's multimask outputs are.

Everything runs in torch on the device given, so the generator keeps up with training on a GPU.
Arrays are (batch, row, col); coordinates are (row, col) in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["SynthConfig", "SynthSample", "SynthGenerator"]


@dataclass
class SynthConfig:
    """Ranges the generator samples from (sizes are fractions of the image side unless stated)."""

    size: int = 256
    organs: tuple[int, int] = (2, 7)              # organs per image (inclusive range)
    organ_radius: tuple[float, float] = (0.05, 0.42)
    parts_probability: float = 0.6                 # an organ gets inner parts
    ring_probability: float = 0.25                 # an organ gets a cortex-like rim of another intensity
    hole_probability: float = 0.15                 # an organ is hollow (a lumen of background-like tissue)
    tube_count: tuple[int, int] = (0, 4)           # free tubes (vessels, bowel) in the body
    tube_width_px: tuple[float, float] = (1.5, 7.0)
    small_count: tuple[int, int] = (0, 3)          # small round structures (lesions, nodes), 3–12 px
    full_body_probability: float = 0.35            # body larger than the field of view (zoomed crop)
    min_object_px: int = 20
    contrast_min: float = 0.04                     # smallest intensity gap between a part and its organ


@dataclass
class SynthSample:
    """One generated slice.

    image:   (H, W) float32 in [0, 1]
    labels:  (H, W) int64 leaf label map, 0 = outside the body
    objects: (K, H, W) bool — every object a prompt may mean (parts, wholes, the body)
    parent:  (K,) int64 index of the enclosing whole in ``objects``, -1 for none
    kind:    K strings: "part", "whole", "body", "tube", "small"
    """

    image: torch.Tensor
    labels: torch.Tensor
    objects: torch.Tensor
    parent: torch.Tensor
    kind: list[str] = field(default_factory=list)


class SynthGenerator:
    """Seeded generator of :class:`SynthSample` slices; same seed and device → same stream."""

    def __init__(self, config: SynthConfig | None = None, seed: int = 0, device: str | torch.device = "cpu"):
        self.config = config or SynthConfig()
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        n = self.config.size
        coords = (torch.arange(n, device=self.device, dtype=torch.float32) + 0.5) / n
        self.rows, self.cols = torch.meshgrid(coords, coords, indexing="ij")

    # ------------------------------------------------------------------ random helpers
    def _u(self, low: float, high: float) -> float:
        return float(low + (high - low) * torch.rand((), generator=self.gen, device=self.device))

    def _i(self, low: int, high: int) -> int:
        """Integer in [low, high] inclusive."""
        return int(torch.randint(low, high + 1, (), generator=self.gen, device=self.device))

    def _p(self, probability: float) -> bool:
        return self._u(0.0, 1.0) < probability

    def smooth_noise(self, resolution: int, count: int = 1) -> torch.Tensor:
        """(count, H, W) smooth random field with about unit standard deviation."""
        n = self.config.size
        low = torch.randn(count, 1, resolution, resolution, generator=self.gen, device=self.device)
        field_ = F.interpolate(low, size=(n, n), mode="bicubic", align_corners=False)[:, 0]
        return field_ / field_.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None]

    # ------------------------------------------------------------------ shapes
    def blob(self, centre: tuple[float, float], radii: tuple[float, float], angle: float, roughness: float) -> torch.Tensor:
        """(H, W) bool: a rotated ellipse whose boundary is perturbed by smooth noise."""
        dr, dc = self.rows - centre[0], self.cols - centre[1]
        cos, sin = math.cos(angle), math.sin(angle)
        u = (dr * cos + dc * sin) / radii[0]
        v = (-dr * sin + dc * cos) / radii[1]
        distance = torch.sqrt(u * u + v * v) - 1.0
        if roughness > 0:
            distance = distance + roughness * self.smooth_noise(self._i(3, 8))[0]
        return distance < 0

    def tube(self, start: tuple[float, float], width_px: float, length: float, region: torch.Tensor | None) -> torch.Tensor:
        """(H, W) bool: a curved tube along a smoothed random walk, clipped to ``region``."""
        segments = 10
        heading = self._u(0, 2 * math.pi)
        points = [start]
        step = length / segments
        for _ in range(segments):
            heading += self._u(-0.6, 0.6)
            r, c = points[-1]
            points.append((r + step * math.sin(heading), c + step * math.cos(heading)))
        pts = torch.tensor(points, device=self.device, dtype=torch.float32)
        n = self.config.size
        # only the tube's bounding box (plus its width) needs distances
        margin = (width_px * 0.75 + 2) / n
        r0 = max(0, int((pts[:, 0].min() - margin) * n))
        r1 = min(n, int((pts[:, 0].max() + margin) * n) + 1)
        c0 = max(0, int((pts[:, 1].min() - margin) * n))
        c1 = min(n, int((pts[:, 1].max() + margin) * n) + 1)
        mask = torch.zeros(n, n, dtype=torch.bool, device=self.device)
        if r1 <= r0 or c1 <= c0:
            return mask
        a, b = pts[:-1], pts[1:]
        ab = b - a
        p = torch.stack([self.rows[r0:r1, c0:c1], self.cols[r0:r1, c0:c1]], dim=-1)[None]  # (1, h, w, 2)
        ap = p - a[:, None, None, :]
        t = ((ap * ab[:, None, None, :]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)[:, None, None]).clamp(0, 1)
        offset = ap - t[..., None] * ab[:, None, None, :]
        distance2 = (offset * offset).sum(-1).min(dim=0).values * (n * n)
        radius = (width_px / 2.0) * (1.0 + 0.25 * self.smooth_noise(4)[0][r0:r1, c0:c1])
        mask[r0:r1, c0:c1] = distance2 < radius * radius
        return mask & region if region is not None else mask

    def _point_in(self, region: torch.Tensor) -> tuple[float, float]:
        """A random (row, col) in [0, 1] inside ``region`` (or anywhere if it is empty)."""
        idx = torch.nonzero(region.flatten()).flatten()
        if idx.numel() == 0:
            return (self._u(0.2, 0.8), self._u(0.2, 0.8))
        pick = idx[torch.randint(0, idx.numel(), (), generator=self.gen, device=self.device)]
        n = self.config.size
        return ((int(pick) // n + 0.5) / n, (int(pick) % n + 0.5) / n)

    # ------------------------------------------------------------------ label map
    def label_map(self) -> tuple[torch.Tensor, list[torch.Tensor], list[int], list[str]]:
        """Draw one anatomy-like label map.

        Returns the leaf label map (H, W) and the object list (masks, parent indices, kinds).
        """
        cfg = self.config
        n = cfg.size
        labels = torch.zeros(n, n, dtype=torch.long, device=self.device)
        objects: list[torch.Tensor] = []
        parent: list[int] = []
        kind: list[str] = []
        next_label = 1

        # body: an outline, sometimes larger than the field of view; a subcutaneous rim inside it
        if self._p(cfg.full_body_probability):
            body = self.blob((self._u(0.4, 0.6), self._u(0.4, 0.6)), (self._u(0.6, 0.9), self._u(0.7, 1.0)), self._u(0, math.pi), self._u(0.0, 0.15))
        else:
            body = self.blob((self._u(0.42, 0.58), self._u(0.42, 0.58)), (self._u(0.28, 0.46), self._u(0.32, 0.48)), self._u(0, math.pi), self._u(0.0, 0.2))
        labels[body] = next_label
        next_label += 1
        if self._p(0.6):
            inner = self._erode(body, self._i(2, 9))
            labels[body & ~inner] = next_label
            next_label += 1
        objects.append(body)
        parent.append(-1)
        kind.append("body")

        # organs: touching, overlapping (later ones occlude), some with parts, rims or holes
        organ_regions: list[torch.Tensor] = []
        for _ in range(self._i(*cfg.organs)):
            centre = self._point_in(body)
            radius = self._u(*cfg.organ_radius)
            aspect = self._u(0.5, 1.0)
            organ = self.blob(centre, (radius, radius * aspect), self._u(0, math.pi), self._u(0.0, 0.35)) & body
            if int(organ.sum()) < cfg.min_object_px:
                continue
            organ_label = next_label
            next_label += 1
            labels[organ] = organ_label
            part_labels = [organ_label]
            if self._p(cfg.ring_probability):
                core = self._erode(organ, self._i(2, max(3, int(radius * n * 0.25))))
                labels[organ & ~core] = next_label
                part_labels.append(next_label)
                next_label += 1
            if self._p(cfg.hole_probability):
                hole = self.blob(self._point_in(organ), (radius * self._u(0.2, 0.5),) * 2, 0.0, 0.1) & organ
                labels[hole] = next_label
                part_labels.append(next_label)
                next_label += 1
            if self._p(cfg.parts_probability):
                for _ in range(self._i(1, 4)):
                    if self._p(0.5):
                        part = self.blob(self._point_in(organ), (radius * self._u(0.12, 0.45), radius * self._u(0.12, 0.45)), self._u(0, math.pi), self._u(0.0, 0.3))
                    else:
                        part = self.tube(self._point_in(organ), self._u(1.5, 5.0), radius * self._u(0.8, 2.5), None)
                    part = part & organ
                    if int(part.sum()) < cfg.min_object_px // 2:
                        continue
                    labels[part] = next_label
                    part_labels.append(next_label)
                    next_label += 1
            organ_regions.append(organ)
            whole_index = len(objects)
            objects.append(organ)
            parent.append(0)
            kind.append("whole")
            if len(part_labels) > 1:
                for lab in part_labels:
                    region = (labels == lab) & organ
                    if int(region.sum()) >= cfg.min_object_px:
                        objects.append(region)
                        parent.append(whole_index)
                        kind.append("part")

        # free tubes in the body (vessels, ureters, bowel loops) and small round structures
        for _ in range(self._i(*cfg.tube_count)):
            tube = self.tube(self._point_in(body), self._u(*cfg.tube_width_px), self._u(0.2, 0.8), body)
            if int(tube.sum()) >= cfg.min_object_px:
                labels[tube] = next_label
                next_label += 1
                objects.append(tube)
                parent.append(0)
                kind.append("tube")
        for _ in range(self._i(*cfg.small_count)):
            host = organ_regions[self._i(0, len(organ_regions) - 1)] if organ_regions and self._p(0.7) else body
            r = self._u(1.5, 6.0) / n
            small = self.blob(self._point_in(host), (r, r * self._u(0.7, 1.0)), self._u(0, math.pi), 0.0) & body
            if int(small.sum()) >= 6:
                labels[small] = next_label
                next_label += 1
                objects.append(small)
                parent.append(0)
                kind.append("small")

        # occlusion may have eaten into earlier objects: recompute wholes from the final map
        final: list[torch.Tensor] = []
        for mask in objects:
            final.append(mask & (labels > 0))
        return labels, final, parent, kind

    @staticmethod
    def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
        """Binary erosion by a square of side 2*radius+1 (via max-pooling the complement)."""
        inv = (~mask).float()[None, None]
        grown = F.max_pool2d(inv, kernel_size=(2 * radius + 1, 1), stride=1, padding=(radius, 0))
        grown = F.max_pool2d(grown, kernel_size=(1, 2 * radius + 1), stride=1, padding=(0, radius))
        return grown[0, 0] < 0.5

    # ------------------------------------------------------------------ appearance
    def appearance(self, labels: torch.Tensor, parent_of_label: dict[int, int]) -> torch.Tensor:
        """(H, W) float32 image in [0, 1] for a leaf label map: intensities, texture, blur, noise."""
        cfg = self.config
        n_labels = int(labels.max()) + 1
        means = torch.rand(n_labels, generator=self.gen, device=self.device)
        for lab, host in parent_of_label.items():  # parts differ from their organ by a random gap
            gap = self._u(cfg.contrast_min, 0.5) * (1 if self._p(0.5) else -1)
            means[lab] = (means[host] + gap).clamp(0, 1)
        if self._p(0.5):
            means[0] = self._u(0.0, 0.1)  # air outside the body is usually dark
        image = means[labels]
        texture_amp = self._u(0.0, 0.08)
        if texture_amp > 0:
            image = image + texture_amp * self.smooth_noise(self._i(16, 64))[0]
        sigma = self._u(0.3, 1.5)
        image = _gaussian_blur(image, sigma)
        if self._p(0.3):  # reformatted/thick planes: a lower resolution along one axis
            factor = self._u(1.5, 3.0)
            n = cfg.size
            small = (max(8, int(n / factor)), n) if self._p(0.5) else (n, max(8, int(n / factor)))
            image = F.interpolate(image[None, None], size=small, mode="area")
            image = F.interpolate(image, size=(n, n), mode="bilinear", align_corners=False)[0, 0]
        bias = self._u(0.0, 0.4)
        if bias > 0:
            image = image * torch.exp(bias * self.smooth_noise(self._i(2, 4))[0])
        if self._p(0.15):  # ultrasound-like multiplicative speckle
            looks = self._i(3, 15)  # gamma(looks, 1/looks): the mean of `looks` seeded exponentials
            uniform = torch.rand((looks, *image.shape), generator=self.gen, device=self.device)
            speckle = -torch.log(uniform.clamp_min(1e-12)).mean(dim=0)
            image = image * _gaussian_blur(speckle, 0.7)
        noise = self._u(0.0, 0.07)
        image = image + noise * torch.randn(image.shape, generator=self.gen, device=self.device)
        return self._window(image)

    def _window(self, image: torch.Tensor) -> torch.Tensor:
        """Random CT-like (saturating) or MR-like (percentile) window, then a gamma."""
        flat = image.flatten()
        sample = flat[torch.randint(0, flat.numel(), (4096,), generator=self.gen, device=self.device)]
        if self._p(0.3):
            lo_q, hi_q = self._u(0.0, 0.3), self._u(0.7, 1.0)
        else:
            lo_q, hi_q = self._u(0.0, 0.02), self._u(0.98, 1.0)
        lo, hi = torch.quantile(sample, torch.tensor([lo_q, hi_q], device=self.device))
        image = ((image - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1)
        return image.pow(self._u(0.7, 1.5))

    # ------------------------------------------------------------------ public
    def anatomy(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], dict[int, int]]:
        """One label map and the objects a prompt may mean, before any appearance is drawn.

        Returns labels (H, W) int64, objects (K, H, W) bool, parent (K,) int64 (-1: none), the K
        kinds, and the host label of each part label (for :meth:`appearance`). Objects that
        occlusion left smaller than ``min_object_px`` are dropped; small structures stay while
        they keep a pixel.
        """
        labels, objects, parent, kind = self.label_map()
        hosts = self._label_hosts(labels, objects, parent, kind)
        sizes = [int(m.sum()) for m in objects]
        keep = [i for i, n in enumerate(sizes) if n >= self.config.min_object_px or (kind[i] == "small" and n > 0)]
        remap = {old: new for new, old in enumerate(keep)}
        return (
            labels,
            torch.stack([objects[i] for i in keep]),
            torch.tensor([remap.get(parent[i], -1) for i in keep], dtype=torch.long, device=self.device),
            [kind[i] for i in keep],
            hosts,
        )

    def sample(self) -> SynthSample:
        """Draw one slice with its objects."""
        labels, objects, parent, kind, hosts = self.anatomy()
        image = self.appearance(labels, hosts)
        return SynthSample(image=image.float(), labels=labels, objects=objects, parent=parent, kind=kind)

    @staticmethod
    def _label_hosts(labels, objects, parent, kind) -> dict[int, int]:
        """Map each part's leaf label to its organ's main label, so parts get a contrast gap."""
        hosts: dict[int, int] = {}
        for i, k in enumerate(kind):
            if k != "part":
                continue
            whole = objects[parent[i]]
            part_labels = torch.unique(labels[objects[i]])
            whole_labels, counts = torch.unique(labels[whole], return_counts=True)
            main = int(whole_labels[counts.argmax()])
            for lab in part_labels.tolist():
                if lab != main:
                    hosts[int(lab)] = main
        return hosts


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (H, W) image with reflect padding."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    img = image[None, None]
    img = F.pad(img, (radius, radius, 0, 0), mode="reflect")
    img = F.conv2d(img, kernel.view(1, 1, 1, -1))
    img = F.pad(img, (0, 0, radius, radius), mode="reflect")
    img = F.conv2d(img, kernel.view(1, 1, -1, 1))
    return img[0, 0]
