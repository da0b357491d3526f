"""Fidelity metrics between two videos: PSNR and SSIM (frames in [0, 1] or uint8, shape ``[F, H, W, 3]``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .video import to_uint8_frames

__all__ = ["psnr", "ssim"]


def _as_float(frames) -> torch.Tensor:
    return torch.from_numpy(to_uint8_frames(frames)).double() / 255.0


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB over the whole video (``inf`` when identical)."""
    x, y = _as_float(a), _as_float(b)
    if x.shape != y.shape:
        raise ValueError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = torch.mean((x - y) ** 2).item()
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a, b) -> float:
    """Mean structural similarity (Wang et al. 2004; 11×11 Gaussian window, σ = 1.5) over frames and channels."""
    x, y = _as_float(a), _as_float(b)
    if x.shape != y.shape:
        raise ValueError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    f, h, w, c = x.shape
    size = min(11, h, w)
    win = _gaussian_window(size)
    x = x.permute(0, 3, 1, 2).reshape(f * c, 1, h, w)
    y = y.permute(0, 3, 1, 2).reshape(f * c, 1, h, w)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean().item())
