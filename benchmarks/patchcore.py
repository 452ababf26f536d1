"""A PatchCore-style memory-bank baseline on edgead's own teacher, for the real-data benchmark.

Why it exists: a distillation detector is only worth its training if it beats the simplest strong
method on the same features. This baseline has no training at all: it stores patch features of good
images and calls a patch anomalous by its distance to the nearest stored one. It reads the frozen
teacher edgead builds (`edgead.model.backbones.build_feature_extractor`, the arch and weights of the
model config's deep pair: EfficientNet-Lite0 in the `edge` preset), takes the images in the model's
own preprocessing (`PreprocessSpec`) and input size, so the two methods differ only in what they
do with the features.

Features: two mid-level teacher stages, each averaged over its 3x3 neighbourhood (so a patch sees a
little context), the coarser one upsampled bilinearly to the finer grid, concatenated, and
optionally reduced by a fixed seeded random projection (memory). The bank is a seeded uniform
random subsample of all training patches (`bank_size`), or, with `coreset`, a greedy k-center
selection (on a random projection) from a larger random pool, which covers the good patches with
fewer points. The score map is the nearest-bank distance per patch, upsampled to the input size and
blurred (Gaussian); the image score is its maximum.

`PatchCore(cfg)(x)` returns (maps N x 1 x H x W, scores N) like `DualKD`, and it carries `cfg`, so
`edgead.training.evaluate.score_samples` times both methods the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgead.model.backbones import FeatureExtractor, build_feature_extractor
from edgead.model.config import ModelConfig
from edgead.model.kd import gaussian_kernel1d

DEFAULT_LAYERS = ("stage3", "stage5")    # Lite0: stride 8 (40 channels) and stride 16 (112 channels)


@dataclass(frozen=True)
class PatchCoreSettings:
    """What the baseline stores and how it scores; the defaults are the benchmark's."""

    layers: tuple[str, ...] = DEFAULT_LAYERS
    bank_size: int = 20000
    coreset: bool = False
    coreset_pool: int = 4          # the greedy selection picks bank_size of pool * bank_size random patches
    coreset_dim: int = 128         # random projection the greedy selection measures distances in
    project_dim: int | None = None # random projection of the stored features (None: keep all channels)
    blur_sigma: float = 4.0
    seed: int = 0
    batch_size: int = 8
    chunk_elements: int = 1 << 24  # query rows x bank rows per distance call (64 MB of float32)


def random_projection(dim_in: int, dim_out: int, seed: int) -> Tensor:
    """A fixed Gaussian matrix dim_in x dim_out scaled by 1/sqrt(dim_out): distances are kept on average."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=gen) / math.sqrt(dim_out)


def nearest_distances(queries: Tensor, bank: Tensor, chunk_elements: int = 1 << 24) -> Tensor:
    """Euclidean distance of each query row to its nearest bank row, a block of queries at a time so
    the distance matrix in memory never exceeds `chunk_elements` entries."""
    rows = max(1, chunk_elements // max(1, len(bank)))
    out = [torch.cdist(queries[i:i + rows], bank).amin(dim=1) for i in range(0, len(queries), rows)]
    return torch.cat(out) if out else queries.new_zeros(0)


def greedy_coreset(points: Tensor, k: int, seed: int = 0) -> Tensor:
    """Indices of k points chosen by greedy k-center: each next point is the one farthest from those
    chosen so far, so the largest distance from any point to the selection shrinks fast."""
    n = len(points)
    if k >= n:
        return torch.arange(n)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = first
    norms = points.pow(2).sum(dim=1)

    def sq_dist(i: int) -> Tensor:      # |p - c|^2 as |p|^2 - 2 p.c + |c|^2: one matrix-vector product
        return (norms - 2 * (points @ points[i]) + norms[i]).clamp_min_(0)

    min_d = sq_dist(first)
    min_d[first] = 0
    for i in range(1, k):
        nxt = int(torch.argmax(min_d))
        chosen[i] = nxt
        torch.minimum(min_d, sq_dist(nxt), out=min_d)
        min_d[nxt] = 0                  # exactly: rounding in the product form must not pick it again
    return chosen


def covering_radius(points: Tensor, selected: Tensor, chunk_elements: int = 1 << 24) -> float:
    """The largest distance from any point to its nearest selected point (smaller: better covered)."""
    return float(nearest_distances(points, points[selected], chunk_elements).max())


class PatchCore:
    """Memory bank of good-image patch features on a frozen edgead teacher; see the module docstring."""

    def __init__(self, cfg: ModelConfig, settings: PatchCoreSettings | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.settings = settings or PatchCoreSettings()
        self.device = torch.device(device)
        teacher = cfg.pairs[-1].teacher
        self.extractor: FeatureExtractor = build_feature_extractor(teacher.arch, list(self.settings.layers),
                                                                   teacher.weights).to(self.device).eval()
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        # The image arrives in the input spec's normalisation; re-express it in the teacher's own.
        m_in, s_in = torch.tensor(cfg.input.mean), torch.tensor(cfg.input.std)
        m_t, s_t = torch.tensor(self.extractor.input_mean), torch.tensor(self.extractor.input_std)
        self._scale = (s_in / s_t).view(1, 3, 1, 1).to(self.device)
        self._shift = ((m_in - m_t) / s_t).view(1, 3, 1, 1).to(self.device)
        dim = sum(self.extractor.channels)
        pd = self.settings.project_dim
        self.projection = random_projection(dim, pd, self.settings.seed).to(self.device) if pd else None
        self.dim = pd or dim
        self.bank: Tensor | None = None
        kernel = gaussian_kernel1d(self.settings.blur_sigma) if self.settings.blur_sigma > 0 else torch.ones(1)
        self._kernel = kernel.to(self.device)

    def to(self, device: str | torch.device) -> "PatchCore":
        """Move the teacher, the bank and the buffers (fit on a GPU, score on the CPU like edgead's eval)."""
        self.device = torch.device(device)
        self.extractor.to(self.device)
        self._scale, self._shift, self._kernel = (t.to(self.device) for t in (self._scale, self._shift, self._kernel))
        if self.projection is not None:
            self.projection = self.projection.to(self.device)
        if self.bank is not None:
            self.bank = self.bank.to(self.device)
        return self

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Images N x 3 x H x W (input normalisation) -> patch features N x D x h x w on the finest grid."""
        maps = self.extractor(x.to(self.device) * self._scale + self._shift)
        maps = [F.avg_pool2d(m.float(), 3, stride=1, padding=1, count_include_pad=False) for m in maps]
        finest = max(maps, key=lambda m: m.shape[-1] * m.shape[-2]).shape[-2:]
        maps = [m if m.shape[-2:] == finest else F.interpolate(m, size=finest, mode="bilinear", align_corners=False)
                for m in maps]
        feats = torch.cat(maps, dim=1)
        if self.projection is not None:
            feats = torch.einsum("nchw,cd->ndhw", feats, self.projection)
        return feats

    def _rows(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        f = self.features(x)
        return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), (int(f.shape[-2]), int(f.shape[-1]))

    @torch.no_grad()
    def fit(self, good_images: Tensor | np.ndarray) -> "PatchCore":
        """Build the bank from good images N x 3 x H x W (preprocessed with `cfg.input`). Only the
        patches drawn for the bank (or its coreset pool) are kept, never all of them."""
        images = torch.as_tensor(good_images)
        s = self.settings
        bs = s.batch_size
        first, (h, w) = self._rows(images[:bs])
        per_image, total = h * w, len(images) * h * w
        keep = min(total, s.bank_size * (s.coreset_pool if s.coreset else 1))
        rng = np.random.default_rng(s.seed)
        wanted = torch.from_numpy(np.sort(rng.choice(total, size=keep, replace=False)))
        picked: list[Tensor] = []
        for start in range(0, len(images), bs):
            rows = first if start == 0 else self._rows(images[start:start + bs])[0]
            lo, hi = start * per_image, start * per_image + len(rows)
            sel = wanted[(wanted >= lo) & (wanted < hi)] - lo
            picked.append(rows[sel.to(rows.device)])
        pool = torch.cat(picked)
        if s.coreset and len(pool) > s.bank_size:
            proj = random_projection(pool.shape[1], min(s.coreset_dim, pool.shape[1]), s.seed + 1).to(pool.device)
            pool = pool[greedy_coreset(pool @ proj, s.bank_size, s.seed).to(pool.device)]
        self.bank = pool.contiguous()
        return self

    def _blur(self, amap: Tensor) -> Tensor:
        k = self._kernel
        r = (k.numel() - 1) // 2
        if r == 0:
            return amap
        x = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    @torch.no_grad()
    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images N x 3 x H x W -> (maps N x 1 x H x W, scores N), the same contract as `DualKD`."""
        if self.bank is None:
            raise RuntimeError("PatchCore.fit must run before scoring")
        rows, (h, w) = self._rows(x)
        dist = nearest_distances(rows, self.bank, self.settings.chunk_elements).view(len(x), 1, h, w)
        amap = F.interpolate(dist, size=(self.cfg.input.height, self.cfg.input.width), mode="bilinear",
                             align_corners=False)
        amap = self._blur(amap)
        return amap, amap.flatten(1).amax(dim=1)

    def score(self, images: Tensor | np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed images -> (scores N, maps N x H x W float32), a batch at a time."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
        scores, maps = [], []
        for start in range(0, len(x), self.settings.batch_size):
            amap, score = self(x[start:start + self.settings.batch_size])
            maps.append(amap[:, 0].cpu().numpy())
            scores.append(score.cpu().numpy())
        return np.concatenate(scores), np.concatenate(maps)
