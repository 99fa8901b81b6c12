"""TopK sparse autoencoders in torch (autograd, ``torch.optim.Adam``): unsupervised and supervised.

* ``train_sae`` (unsupervised; k-sparse autoencoders of Makhzani & Frey 2014, TopK as in Gao et al. 2024):
  codes h = TopK(ReLU(W_enc (y − b_pre) + b_enc)), reconstruction ŷ = h W_dec + b_pre, rows of W_dec (the
  dictionary) kept at unit norm. Loss: mean ‖ŷ − y‖² plus ``aux_weight`` times an auxiliary TopK loss in
  which latents silent for ``dead_after`` steps reconstruct the residual the live ones leave (keeps latents
  from dying). It sees only the activity y.
* ``train_supervised_sae``: the upper reference of Liu et al. (2026): the same encoder form, one latent per
  known feature, trained to predict the known latents z (loss ‖ReLU(W y + b) − z‖², its flat side replaced
  on active features, see ``_supervised_loss``; TopK is applied when encoding). It is given the ground truth, so it shows what this encoder form can recover at best.

Inputs are divided by their mean row norm first (kept as ``scale``), so the learning rate is unit-free.
Training is seeded (initialization and minibatches) and runs on the CPU with the given thread count.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from repro.errors import UserError


@dataclass(frozen=True)
class SAESettings:
    latents: int
    topk: int
    steps: int = 600
    lr: float = 0.01
    batch_size: int = 512  # a batch at least as large as the data is the whole data (full-batch steps)
    aux_weight: float = 1 / 32
    dead_after: int = 20
    seed: int = 0
    threads: int = 1

    def __post_init__(self):
        if not 0 < self.topk <= self.latents:
            raise UserError(f"SAE topk must be between 1 and latents = {self.latents}; got {self.topk}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise UserError(f"SAE steps, batch_size and lr must be positive; got {self.steps}, "
                            f"{self.batch_size}, {self.lr}")


def topk_codes(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest entries, zero the rest (ReLU comes first, so kept entries are ≥ 0).

    The k-th largest value of each row comes from ``numpy.partition`` (eight times faster than
    ``torch.topk`` on the CPU at these sizes); the mask passes gradients to the kept entries only."""
    if k >= pre.shape[1]:
        return pre
    threshold = np.partition(pre.detach().numpy(), -k, axis=1)[:, -k]
    return pre * (pre >= torch.from_numpy(threshold)[:, None])


class TopKSAE(nn.Module):
    """Encoder TopK(ReLU(W_enc (y − b_pre) + b_enc)) and decoder h W_dec + b_pre (inputs already scaled)."""

    def __init__(self, width: int, latents: int, topk: int, generator: torch.Generator):
        super().__init__()
        dictionary = torch.randn(latents, width, generator=generator)
        dictionary /= dictionary.norm(dim=1, keepdim=True)
        self.decoder = nn.Parameter(dictionary)
        self.encoder = nn.Parameter(dictionary.clone())  # tied at the start, free afterwards
        self.encoder_bias = nn.Parameter(torch.zeros(latents))
        self.pre_bias = nn.Parameter(torch.zeros(width))
        self.topk = topk

    def pre_activations(self, y: torch.Tensor) -> torch.Tensor:
        return torch.relu((y - self.pre_bias) @ self.encoder.T + self.encoder_bias)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre_activations(y)
        codes = topk_codes(pre, self.topk)
        return codes, codes @ self.decoder + self.pre_bias, pre

    @torch.no_grad()
    def normalize_dictionary(self) -> None:
        self.decoder /= self.decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class TrainedSAE:
    """A trained encoder with the input scale it was trained at; ``encode`` gives codes (n × latents) ≥ 0."""
    module: nn.Module
    scale: float
    topk: int
    supervised: bool

    @torch.no_grad()
    def encode(self, activity) -> np.ndarray:
        y = torch.as_tensor(np.asarray(activity, dtype=np.float32)) / self.scale
        if self.supervised:
            return topk_codes(torch.relu(self.module(y)), self.topk).numpy().astype(np.float64)
        return self.module(y)[0].numpy().astype(np.float64)

    @torch.no_grad()
    def reconstruct(self, activity) -> np.ndarray:
        """The unsupervised SAE's reconstruction of ``activity``, in its units."""
        y = torch.as_tensor(np.asarray(activity, dtype=np.float32)) / self.scale
        return (self.module(y)[1] * self.scale).numpy().astype(np.float64)

    @torch.no_grad()
    def dictionary(self) -> np.ndarray:
        """The unit-norm atoms (latents × width) of an unsupervised SAE."""
        return self.module.decoder.numpy().astype(np.float64)


@contextlib.contextmanager
def _threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _scaled(activity) -> tuple[torch.Tensor, float]:
    y = np.asarray(activity, dtype=np.float32)
    if y.ndim != 2 or y.shape[0] < 2:
        raise UserError(f"SAE training needs a 2-D array of at least 2 stimuli; got shape {y.shape}")
    if not np.isfinite(y).all():
        raise UserError("SAE training data contain NaN or infinite values")
    scale = float(np.mean(np.linalg.norm(y, axis=1)))
    if not scale > 0:
        raise UserError("SAE training data are all zero; there is nothing to encode")
    return torch.from_numpy(y) / scale, scale


def _batches(n: int, settings: SAESettings, generator: torch.Generator):
    for _ in range(settings.steps):
        yield slice(None) if settings.batch_size >= n else torch.randint(0, n, (settings.batch_size,),
                                                                          generator=generator)


def _auxiliary_loss(sae: TopKSAE, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Dead latents' own TopK (2 × topk of them) reconstruct the residual (−error) the live latents leave."""
    codes = topk_codes(pre * dead, min(2 * sae.topk, int(dead.sum())))
    return (codes @ sae.decoder - residual).pow(2).sum(dim=1).mean()


def train_sae(activity, settings: SAESettings) -> TrainedSAE:
    """Train an unsupervised TopK SAE on ``activity`` (n × width); see the module docstring."""
    y, scale = _scaled(activity)
    generator = torch.Generator().manual_seed(settings.seed)
    with _threads(settings.threads):
        sae = TopKSAE(y.shape[1], settings.latents, settings.topk, generator)
        with torch.no_grad():
            sae.pre_bias.copy_(y.mean(dim=0))
        optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr)
        silent_for = torch.zeros(settings.latents)
        for rows in _batches(y.shape[0], settings, generator):
            batch = y[rows]
            codes, reconstruction, pre = sae(batch)
            error = reconstruction - batch
            loss = error.pow(2).sum(dim=1).mean()
            silent_for = torch.where((codes > 0).any(dim=0), torch.zeros_like(silent_for), silent_for + 1)
            dead = silent_for > settings.dead_after
            if dead.any():
                loss = loss + settings.aux_weight * _auxiliary_loss(sae, pre, -error.detach(), dead)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sae.normalize_dictionary()
    return TrainedSAE(sae.requires_grad_(False), scale, settings.topk, supervised=False)


def _supervised_loss(pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖ReLU(pre) − z‖² with the ReLU's flat side replaced where the feature is active: active features pull
    pre towards z (pre − z)², silent ones push only a positive pre down (ReLU(pre)²). Equal to the ReLU loss
    wherever pre > 0 on the active features, but a latent whose pre-activation went negative still gets a
    gradient (under the plain ReLU loss such a latent dies), and TopK, applied when encoding, needs none."""
    active = target > 0
    error = torch.where(active, pre - target, torch.relu(pre))
    return error.pow(2).sum(dim=1).mean()


def train_supervised_sae(activity, latents, settings: SAESettings) -> TrainedSAE:
    """Train the supervised reference: encoder ReLU(W y + b) fitted to the known ``latents`` (n × k, one
    code per known feature; ``settings.latents`` must equal k; ``_supervised_loss``); codes are TopK of it."""
    y, scale = _scaled(activity)
    z = torch.as_tensor(np.asarray(latents, dtype=np.float32))
    if z.shape != (y.shape[0], settings.latents):
        raise UserError(f"supervised SAE: latents must be (n, {settings.latents}) = ({y.shape[0]}, "
                        f"{settings.latents}); got {tuple(z.shape)}")
    generator = torch.Generator().manual_seed(settings.seed)
    with _threads(settings.threads):
        encoder = nn.Linear(y.shape[1], settings.latents)
        with torch.no_grad():  # seeded like the unsupervised SAE: torch's default init uses the global RNG
            bound = 1 / np.sqrt(y.shape[1])
            encoder.weight.uniform_(-bound, bound, generator=generator)
            encoder.bias.zero_()
        optimizer = torch.optim.Adam(encoder.parameters(), lr=settings.lr)
        for rows in _batches(y.shape[0], settings, generator):
            loss = _supervised_loss(encoder(y[rows]), z[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return TrainedSAE(encoder.requires_grad_(False), scale, settings.topk, supervised=True)
