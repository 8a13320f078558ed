"""Layers of the trajectory adapter: step embedding, instruction encoding, one phase's modules.

The perturbation of one phase at step t (paper Eqs. 13-16), for each of its k modules ``i``
(shapes for a batch of N rows, L positions, width d, rank r, step-embedding width d_t)::

    H^    = (H - mu_H) / s_H        c^ = (Enc(c) - mu_c) / s_c      (frozen standardisers)
    x     = [H^ ; Emb(t)]                                  (N, L, d + d_t)
    u_i   = ReLU(W_B_i x)                                  (N, L, r)     W_B_i: (r, d + d_t)
    gam_i = W_cond_i c^ + b_cond_i                         (N, r)        W_cond_i: (r, d_c)
    u'_i  = u_i * (1 + gam_i)        (FiLM, broadcast over L)
    g_i   = W_A_i u'_i                                     (N, L, d)     W_A_i: (d, r)
    delta = sigma_phase * (sum_i g_i + b)                  b: (d,) the phase's constant offset

``Enc(c)`` has ``d_c`` features: ``d`` for the mean of the final states over the prompt, ``n x d``
when it concatenates that mean taken at the output of each of the base's ``n`` blocks
(:func:`context_encoding`; the config's ``context``). Each layer's states are pooled over the
prompt by their mean, or with ``pooling: attention`` by a softmax over the prompt positions
against one learned query per layer (zero at init, where it is the mean).

i.e. ``A_i(c) = W_A_i diag(1 + W_cond_i c^ + b_cond_i)``: the conditional part of A_i(c) is
``W_A_i diag(W_cond_i c^ + b_cond_i)``, a rank-r-preserving FiLM scaling of the bottleneck
units. ``W_A``, ``W_cond``, ``b_cond`` and ``b`` start at zero (a fresh adapter is exactly the
identity); ``W_B`` starts like ``nn.Linear`` (uniform +-1/sqrt(d + d_t)).

Why the standardisers and the offset. A frozen base's final states are far from centred: across
the examples of a task, H at an answer position varies by ~15% around a large common vector, and
so does Enc(c). Fed raw into the bottleneck, every unit's activation is dominated by that common
part, so the gradient of W_A is dominated by the label marginal (one constant direction) and the
example-dependent part is learned many times more slowly (measured: the adapter needed ~600
steps to fit 32 sst2 examples that full fine-tuning fits in 150). ``mu``/``s`` are per-feature
statistics of the frozen base's states measured once before training (:meth:`PhaseAdapter.
set_statistics`, from the task's training data, identical on every data-parallel rank), saved
with the adapter and never trained; with them the bottleneck sees what *varies* between
examples. The offset ``b`` carries the constant part (e.g. the label marginal) so that the
low-rank path does not have to. Until statistics are set, ``mu = 0`` and ``s = 1``.

With ``share: step`` every step of the phase owns its k modules: each parameter carries a
leading slot axis of length ``steps in phase`` (``1`` with ``share: phase``) and rows gather
their slot's weights.

With ``share: nested`` one module of rank ``max(ranks)`` serves every phase: a row of phase p
keeps only the first ``ranks[p]`` bottleneck units (``units``) and is scaled by ``scales[p]``
(``scale``, per row), so the phases' ranks and scales are those of separate modules while
every row trains the units its phase uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "PhaseAdapter",
    "context_encoding",
    "effective_rank_of",
    "instruction_encoding",
    "nuclear_norm",
    "one_thread",
    "pool",
    "prompt_positions",
    "sinusoidal_step_embedding",
]


def sinusoidal_step_embedding(
    steps: torch.Tensor, dim: int, max_period: float = 10_000.0
) -> torch.Tensor:
    """Emb(t): integer steps (N,) -> (N, dim) = [sin(t w_j), cos(t w_j)], w_j = P^(-j/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=steps.device) / half
    )
    angles = steps.to(torch.float32)[:, None] * freqs[None, :]  # (N, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def prompt_positions(
    instruction_mask: torch.Tensor | None,
    *,
    input_ids: torch.Tensor,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, L) bool: the positions Enc(c) pools over, per row:

    1. ``instruction_mask`` (B, L) True positions (that are also attended to), when given;
    2. otherwise (mask None, or a row without any True) the attended positions that are not
       ``[MASK]`` (the uncorrupted part of x_t: the prompt plus already revealed tokens);
    3. otherwise (a fully masked row) every attended position.
    """
    attended = (
        torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        if attention_mask is None
        else attention_mask.to(torch.bool)
    )
    choice = attended & (input_ids != mask_token_id)
    empty = ~choice.any(dim=1, keepdim=True)
    choice = torch.where(empty, attended, choice)
    if instruction_mask is not None:
        inst = instruction_mask.to(torch.bool) & attended
        has = inst.any(dim=1, keepdim=True)
        choice = torch.where(has, inst, choice)
    return choice


def pool(hidden: torch.Tensor, choice: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
    """Pool states (B, L, d) over the ``choice`` (B, L) positions -> (B, d) fp32: their mean, or
    with ``query`` (d,) weighted by the softmax over them of ``h . q`` (uniform, so the mean, at
    ``q = 0``). A row without any chosen position pools to zero.

    No ``1 / sqrt(d)`` as in dot-product attention: ``q`` is trained from zero by Adam, whose
    steps are per coordinate, and with that factor a query trained for 900 steps on trec still
    spread its weight over 67 of a prompt's 68 positions (the largest weight 0.02)."""
    hidden = hidden.float()
    if query is None:
        weights = choice.to(hidden.dtype)  # (B, L)
        denom = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.einsum("bl,bld->bd", weights, hidden) / denom
    scores = hidden @ query.float()  # (B, L)
    scores = scores.masked_fill(~choice, float("-inf"))
    weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # a row with no choice: all -inf
    return torch.einsum("bl,bld->bd", weights, hidden)


def instruction_encoding(
    hidden: torch.Tensor,
    instruction_mask: torch.Tensor | None,
    *,
    input_ids: torch.Tensor,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Enc(c): mean of the base's hidden states (B, L, d) over the instruction tokens -> (B, d)
    (the positions of :func:`prompt_positions`)."""
    choice = prompt_positions(
        instruction_mask, input_ids=input_ids, mask_token_id=mask_token_id,
        attention_mask=attention_mask,
    )
    return pool(hidden, choice)


def context_encoding(
    states: list[torch.Tensor],
    instruction_mask: torch.Tensor | None,
    *,
    input_ids: torch.Tensor,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """Enc(c) over several layers' states: each (B, L, d) tensor pooled over the prompt
    (:func:`prompt_positions`, :func:`pool`; with ``queries`` (len(states), d) the i-th state
    by attention with the i-th query), concatenated in the given order -> (B, len(states) * d)."""
    choice = prompt_positions(
        instruction_mask, input_ids=input_ids, mask_token_id=mask_token_id,
        attention_mask=attention_mask,
    )
    return torch.cat(
        [pool(h, choice, None if queries is None else queries[i]) for i, h in enumerate(states)],
        dim=-1,
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed CPU linear algebra on one thread, then restore the thread count.

    LAPACK's eigensolver splits even an r x r problem over every intra-op thread; at these sizes
    the threads only wait for each other, and when another process holds a core the waiting is
    disastrous (measured on a 2-core machine under load: 156 ms per 64 x 64 ``eigh`` on two
    threads, 0.8 ms on one; the nuclear norms went from 14% of a training step to noise)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nuclear_norm(weight: torch.Tensor) -> torch.Tensor:
    """Nuclear norm of each matrix in ``weight`` (..., m, n) -> (...), with a safe gradient.

    Value: the sum of singular values (as ``torch.linalg.svdvals(w).sum(-1)``). Gradient: the
    minimum-norm subgradient ``P = sum_k u_k v_k^T`` over singular values above the numerical
    rank tolerance, returned as ``<W, P>`` with P held fixed. Plain ``svdvals`` returns an
    arbitrary ``U V^T`` at a zero matrix, which would push a freshly initialised (zero) W_A in a
    random direction even where the data never reach it.

    Cost: the adapter's matrices are thin (d x r, r << d), so instead of an SVD of W the r x r
    Gram matrix ``G = W^T W`` (or ``W W^T``) is eigendecomposed in float64: with
    ``G = V diag(s^2) V^T``, ``P = W V diag(1/s) V^T`` (and ``<W, P> = sum s``) -- the same
    quantity, several times cheaper per training step.
    """
    with torch.no_grad(), one_thread():
        w = weight.detach().double()
        tall = w.shape[-2] >= w.shape[-1]
        gram = w.transpose(-1, -2) @ w if tall else w @ w.transpose(-1, -2)  # (..., r, r)
        eig, vec = torch.linalg.eigh(gram)
        sing = eig.clamp_min(0.0).sqrt()
        tol = sing.amax(dim=-1, keepdim=True) * max(w.shape[-2:]) * torch.finfo(torch.float32).eps
        inv = torch.where(sing > tol, 1.0 / sing.clamp_min(1e-300), torch.zeros_like(sing))
        core = (vec * inv[..., None, :]) @ vec.transpose(-1, -2)  # V diag(1/s) V^T
        direction = (w @ core) if tall else (core @ w)
        direction = direction.to(weight.dtype)
    return (weight * direction).sum(dim=(-2, -1))


def effective_rank_of(matrix: torch.Tensor) -> float:
    """Entropy effective rank exp(H(p)), p = singular values / their sum (paper Eq. 28).

    0.0 for an all-zero matrix (no perturbation).
    """
    values = torch.linalg.svdvals(matrix.detach().double())
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class PhaseAdapter(nn.Module):
    """The k modules g_i of one phase (and, with ``share: step``, of each of its steps)."""

    def __init__(
        self,
        *,
        hidden_size: int,
        time_embed_dim: int,
        rank: int,
        scale: float,
        modules: int,
        slots: int,
        first_step: int,
        conditioning: bool,
        offset: bool = True,
        context_dim: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.time_embed_dim = time_embed_dim
        self.rank = rank
        self.scale = scale
        self.modules_per_phase = modules
        self.slots = slots
        self.first_step = first_step
        self.conditioning = conditioning
        self.offset = offset
        self.context_dim = context_dim or hidden_size
        d, dt, r, k, s = hidden_size, time_embed_dim, rank, modules, slots
        dc = self.context_dim
        bound = 1.0 / math.sqrt(d + dt)
        self.lora_B = nn.Parameter(
            torch.empty(s, k, r, d + dt, device=device).uniform_(-bound, bound)
        )
        self.lora_A = nn.Parameter(torch.zeros(s, k, d, r, device=device))
        if conditioning:
            self.film_weight = nn.Parameter(torch.zeros(s, k, r, dc, device=device))
            self.film_bias = nn.Parameter(torch.zeros(s, k, r, device=device))
        else:
            self.film_weight = None
            self.film_bias = None
        self.bias = nn.Parameter(torch.zeros(s, d, device=device)) if offset else None
        # Frozen standardisers of H and Enc(c) (see the module docstring); saved with the adapter.
        for name, value, width in (
            ("h_shift", 0.0, d), ("h_scale", 1.0, d), ("c_shift", 0.0, dc), ("c_scale", 1.0, dc)
        ):
            self.register_buffer(name, torch.full((width,), value, device=device))

    @torch.no_grad()
    def set_statistics(self, h_mean, h_std, c_mean=None, c_std=None) -> None:
        """Standardise H (and Enc(c)) with these per-feature means and standard deviations."""
        self.h_shift.copy_(h_mean)
        self.h_scale.copy_(1.0 / h_std)
        if c_mean is not None:
            self.c_shift.copy_(c_mean)
            self.c_scale.copy_(1.0 / c_std)

    def adapter_params(self) -> list[nn.Parameter]:
        """This module's trainable parameters."""
        params = [self.lora_B, self.lora_A]
        if self.conditioning:
            params += [self.film_weight, self.film_bias]
        if self.offset:
            params.append(self.bias)
        return params

    def _weights(self, param: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, str]:
        """``param[0]`` and "" when shared by the phase, else ``param[slot]`` (per row) and "n"."""
        if self.slots == 1:
            return param[0], ""
        return param[slot], "n"

    def forward(
        self,
        hidden: torch.Tensor,
        temb: torch.Tensor,
        cond: torch.Tensor | None,
        steps: torch.Tensor,
        *,
        units: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """delta = sigma * sum_i g_i: hidden (N, L, d) fp32, temb (N, d_t), cond (N, d_c), steps (N,).

        ``units`` (N,): keep only each row's first ``units`` bottleneck units (the rest count as
        zero); ``scale`` (N,): each row's sigma instead of the module's (``share: nested``)."""
        d = self.hidden_size
        slot = (steps - self.first_step).clamp(0, self.slots - 1)
        hidden = (hidden - self.h_shift) * self.h_scale
        w_b, n = self._weights(self.lora_B, slot)  # ([N,] k, r, d + d_t)
        u = torch.einsum(f"nld,{n}krd->nklr", hidden, w_b[..., :d])  # (N, k, L, r)
        u = u + torch.einsum(f"nt,{n}krt->nkr", temb, w_b[..., d:])[:, :, None, :]
        u = torch.relu(u)
        if units is not None:
            keep = torch.arange(self.rank, device=u.device) < units[:, None]  # (N, r)
            u = u * keep[:, None, None, :].to(u.dtype)
        if self.conditioning and cond is not None:
            w_c, _ = self._weights(self.film_weight, slot)  # ([N,] k, r, d_c)
            b_c, _ = self._weights(self.film_bias, slot)  # ([N,] k, r)
            cond = (cond - self.c_shift) * self.c_scale
            gamma = torch.einsum(f"nd,{n}krd->nkr", cond, w_c) + b_c  # (N, k, r)
            u = u * (1.0 + gamma[:, :, None, :])
        w_a, _ = self._weights(self.lora_A, slot)  # ([N,] k, d, r)
        delta = torch.einsum(f"nklr,{n}kdr->nld", u, w_a)  # (N, L, d)
        if self.offset:
            bias, _ = self._weights(self.bias, slot)  # ([N,] d)
            delta = delta + (bias[:, None, :] if n else bias)
        if scale is not None:
            return scale[:, None, None].to(delta.dtype) * delta
        return self.scale * delta

    # -- per-module views for the regularisers and diagnostics
    def nuclear_norm_sum(self) -> torch.Tensor:
        """sum over modules (slots x k) of ||W_A||_* + ||W_B||_* (see :func:`nuclear_norm`)."""
        return nuclear_norm(self.lora_A).sum() + nuclear_norm(self.lora_B).sum()

    def orthogonality(self) -> torch.Tensor:
        """sum over slots and pairs i < j of its k modules of ||W_A_i^T W_A_j||_F^2."""
        k = self.modules_per_phase
        if k < 2:
            return self.lora_A.new_zeros(())
        gram = torch.einsum("sidr,sjdq->sijrq", self.lora_A, self.lora_A)  # (S, k, k, r, r)
        sq = gram.pow(2).sum(dim=(-1, -2))  # (S, k, k)
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=sq.device), diagonal=1)
        return sq[:, upper].sum()

    def perturbation_effective_ranks(self, units: int | None = None) -> list[float]:
        """Effective rank of W_A W_B (d x (d + d_t)) for each module (slots x k); with ``units``,
        of the product of their first ``units`` bottleneck units only (``share: nested``).

        Computed from the r x r core: with W_A = Q_a R_a and W_B^T = Q_b R_b (thin QR),
        W_A W_B = Q_a (R_a R_b^T) Q_b^T has the singular values of R_a R_b^T.
        """
        r = self.rank if units is None else units
        a = self.lora_A.detach().double().flatten(0, 1)[..., :r]  # (M, d, r)
        b = self.lora_B.detach().double().flatten(0, 1)[:, :r]  # (M, r, d + d_t)
        _, r_a = torch.linalg.qr(a)
        _, r_b = torch.linalg.qr(b.transpose(-1, -2))
        core = r_a @ r_b.transpose(-1, -2)  # (M, r, r)
        return [effective_rank_of(c) for c in core]
