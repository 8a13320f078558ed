"""The reverse process for a batch of independent rows (a serving batch).

:func:`ldp.diffusion.sample` runs one schedule for a whole batch. A server batches requests that
differ in prompt length, answer length, step count, block length, temperature, threshold and
seed; :func:`sample_rows` runs each row on its own schedule with its own random generator while
the model is called once per step for every row that still has work (one batched forward, then
the head once on all the rows' predicted positions).

Layout: row ``i`` is ``prompt_i + answer_i`` and the batch is right-padded to the longest row,
with the padding masked out of attention. Every real token keeps the position it has when the
row runs alone, so neither relative (RoPE) nor absolute position embeddings see the padding, and
a row's tokens do not depend on its batch mates. A row given alone follows exactly the steps,
draws and reveals of :func:`ldp.diffusion.sample` with the same options and seed (the absorbing
transition; low-confidence remasking or the confidence threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.sampler import (
    draw_tokens,
    reveal_above_threshold,
    reveal_low_confidence,
)
from ldp.errors import UsageError

__all__ = ["RowSpec", "RowResult", "RowHiddenFn", "RowStepFn", "sample_rows"]

RowHiddenFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, list[int], torch.Tensor], torch.Tensor
]
"""``hidden_fn(x (A,L), t_norm (A,), attention_mask (A,L), rows, positions (A,L) bool) -> H
(A,L,d)`` where ``rows`` are the indexes (into the ``rows`` given to :func:`sample_rows`) of the
A active rows and ``positions`` the only positions whose H is read this step (the masked
positions of each row's current block): H elsewhere may be anything, so an adapter need only
run there."""

RowStepFn = Callable[[int, int, torch.Tensor], None]
"""``on_step(row, steps_taken, answer (G,) long)`` after each step that row took part in."""


@dataclass
class RowSpec:
    """One row's request."""

    prompt_ids: Sequence[int]
    """The prompt's token ids (instruction + input); never changed."""
    gen_length: int
    """Answer length in tokens."""
    steps: int | None = None
    """Denoising steps in all (default T), split over the blocks; ignored with ``threshold``."""
    block_length: int | None = None
    """Semi-autoregressive block length (default: one block)."""
    temperature: float = 0.0
    threshold: float | None = None
    """Reveal every position at least this confident per step (at least one)."""
    seed: int = 0


@dataclass
class RowResult:
    answer: list[int]
    """The generated ids (``gen_length`` of them, no [MASK])."""
    steps: int
    """Model calls this row took part in."""


@dataclass
class _Row:
    spec: RowSpec
    x: torch.Tensor  # (Lp + G,)
    Lp: int
    width: int  # block length
    per_block: int  # steps per block (fixed schedule)
    generator: torch.Generator
    block: int = 0
    k: int = 0  # steps left in the block (fixed schedule)
    steps: int = 0
    done: bool = False

    def window(self) -> tuple[int, int]:
        lo = self.Lp + self.block * self.width
        return lo, lo + self.width

    def masked(self, mask_id: int) -> torch.Tensor:
        lo, hi = self.window()
        return self.x[lo:hi] == mask_id  # (W,)

    def next_block(self) -> None:
        self.block += 1
        self.k = self.per_block
        if self.block * self.width >= self.spec.gen_length:
            self.done = True

    def settle(self, mask_id: int) -> None:
        """Skip finished blocks (as :func:`sample` does) so the row either needs a step or is done."""
        while not self.done and not self.masked(mask_id).any():
            self.next_block()

    def time(self, mask_id: int) -> float:
        if self.spec.threshold is not None:
            return float(self.masked(mask_id).sum()) / self.width
        return self.k / self.per_block


def _check(spec: RowSpec, config: DiffusionConfig, i: int) -> tuple[int, int]:
    """Validate one row; returns (block length, steps per block)."""
    where = f"row {i}"
    if len(spec.prompt_ids) < 1:
        raise UsageError(f"{where}: empty prompt")
    if spec.gen_length < 1:
        raise UsageError(f"{where}: gen_length must be >= 1, got {spec.gen_length}")
    if spec.temperature < 0:
        raise UsageError(f"{where}: temperature must be >= 0, got {spec.temperature}")
    if spec.threshold is not None and not 0.0 < spec.threshold <= 1.0:
        raise UsageError(f"{where}: threshold must lie in (0, 1], got {spec.threshold}")
    width = spec.block_length or spec.gen_length
    if width < 1 or spec.gen_length % width:
        raise UsageError(
            f"{where}: gen_length {spec.gen_length} is not a multiple of block_length {width}"
        )
    n_blocks = spec.gen_length // width
    steps = spec.steps or config.num_steps
    if spec.threshold is None and steps < n_blocks:
        raise UsageError(f"{where}: steps ({steps}) must be at least the blocks ({n_blocks})")
    return width, max(steps // n_blocks, 1)


@torch.no_grad()
def sample_rows(
    model,
    rows: Sequence[RowSpec],
    config: DiffusionConfig,
    *,
    hidden_fn: RowHiddenFn | None = None,
    on_step: RowStepFn | None = None,
    device: torch.device | str = "cpu",
) -> list[RowResult]:
    """Generate every row's answer; one model call per step for all rows still running.

    ``hidden_fn`` replaces ``model.hidden_states`` (a server binds each row's adapter mix and
    instruction mask there); the head is ``model.head``.
    """
    if config.transition != "absorbing":
        raise UsageError("sample_rows runs the absorbing transition only")
    if not rows:
        return []
    mask_id, pad_id = model.mask_token_id, model.pad_token_id
    state: list[_Row] = []
    for i, spec in enumerate(rows):
        width, per_block = _check(spec, config, i)
        prompt = torch.as_tensor(list(spec.prompt_ids), dtype=torch.long, device=device)
        answer = torch.full((spec.gen_length,), mask_id, dtype=torch.long, device=device)
        state.append(_Row(
            spec=spec, x=torch.cat([prompt, answer]), Lp=len(prompt), width=width,
            per_block=per_block, k=per_block,
            generator=torch.Generator().manual_seed(int(spec.seed)),
        ))
    call = hidden_fn or (lambda x, t, a, _rows, _positions: model.hidden_states(x, t, a))
    while True:
        for r in state:
            r.settle(mask_id)
        active = [i for i, r in enumerate(state) if not r.done]
        if not active:
            break
        _step(model, [state[i] for i in active], active, call, mask_id, pad_id, config, device)
        if on_step is not None:
            for i in active:
                r = state[i]
                on_step(i, r.steps, r.x[r.Lp:])
    return [RowResult(answer=r.x[r.Lp:].tolist(), steps=r.steps) for r in state]


def _batch(rows: list[_Row], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (A, L) and their attention mask (A, L)."""
    L = max(len(r.x) for r in rows)
    x = torch.full((len(rows), L), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros((len(rows), L), dtype=torch.long, device=device)
    for j, r in enumerate(rows):
        x[j, : len(r.x)] = r.x
        attn[j, : len(r.x)] = 1
    return x, attn


def _step(model, rows: list[_Row], ids: list[int], call, mask_id, pad_id, config, device) -> None:
    """One denoising step for every active row: one forward, one head call, per-row reveals."""
    x, attn = _batch(rows, pad_id, device)
    t = torch.tensor([r.time(mask_id) for r in rows], dtype=torch.float32, device=device)
    masks = [r.masked(mask_id) for r in rows]
    row_of = torch.cat([torch.full((int(m.sum()),), j, dtype=torch.long) for j, m in enumerate(masks)])
    pos_of = torch.cat([r.window()[0] + m.nonzero().squeeze(1).cpu() for r, m in zip(rows, masks)])
    positions = torch.zeros(x.shape, dtype=torch.bool)
    positions[row_of, pos_of] = True
    hidden = call(x, t, attn, ids, positions.to(x.device))  # (A, L, d)
    logits = model.head(hidden[row_of.to(hidden.device), pos_of.to(hidden.device)])  # (N, V)
    counts = [int(m.sum()) for m in masks]
    for r, m, part in zip(rows, masks, logits.split(counts)):
        tokens, conf = draw_tokens(part, r.spec.temperature, mask_id, r.generator)
        masked = m.unsqueeze(0)  # (1, W)
        if r.spec.threshold is not None:
            reveal = reveal_above_threshold(masked, conf, r.spec.threshold)
        elif r.k == 1:
            reveal = masked
        else:
            s = (r.k - 1) / r.per_block
            reveal = reveal_low_confidence(masked, conf, s, config.schedule)
        lo, hi = r.window()
        window = r.x[lo:hi].unsqueeze(0)
        proposal = window.masked_scatter(masked, tokens.to(r.x.dtype))
        r.x[lo:hi] = torch.where(reveal, proposal, window).squeeze(0)
        r.steps += 1
        if r.spec.threshold is None:
            r.k -= 1
            if r.k == 0:
                r.next_block()
