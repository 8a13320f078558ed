"""The trajectory adapter attached to a frozen base (LoRA-Diffusion; docs/METHOD.md).

``H' = H + sum_i sigma(t) g_i(H, t, c)``, logits = head(H'), with the phase of step t choosing the
modules, rank and sigma (see :mod:`ldp.methods.lora_diffusion.layer` for g_i and the FiLM formula).
With ``shared_rank`` one more module of that rank is added at every step, whatever its phase.

Injection sites: ``final`` (always) and, with ``inject_layers``, the residual stream after each
chosen block (a forward hook on ``base.blocks()[i]``), each site with its own phase modules.

- Final state only (default): the frozen base runs under ``torch.no_grad()`` (optionally bf16
  autocast), so it holds no gradient, optimiser state or saved activations; the adapter runs in
  fp32 with autocast disabled. Enc(c) comes from the same base pass (with ``context: blocks``,
  forward hooks keep every block's output during it, for their prompt means).
- With ``inject_layers``: Enc(c) needs the *unperturbed* final states, so a first base pass runs
  without the hooks under ``no_grad`` (skipped when ``conditioning`` is off); the second pass
  runs with the hooks and autograd (backprop from the lowest chosen block up).

The base is a fixed feature extractor here: it is kept in eval mode (no dropout) even when the
adapted model is put in training mode.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ldp.errors import UsageError
from ldp.methods.base import AdaptedModel, resolve_steps
from ldp.methods.lora_diffusion.config import LoraDiffusionConfig
from ldp.methods.lora_diffusion.layer import (
    PhaseAdapter,
    context_encoding,
    sinusoidal_step_embedding,
)

__all__ = ["LoraDiffusionModel", "attach", "run_base"]


@dataclass
class _StepContext:
    steps: torch.Tensor  # (B,) long
    phase: torch.Tensor  # (B,) long
    temb: torch.Tensor  # (B, d_t) fp32
    cond: torch.Tensor | None  # (B, d_c) fp32


def _site_name(layer: int) -> str:
    return f"layer{layer}"


def run_base(
    base: nn.Module, input_ids: torch.Tensor, t: torch.Tensor | None,
    attention_mask: torch.Tensor | None, capture: list[int] | tuple[int, ...] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One pass of ``base``: its final states (B, L, d) and the outputs of the blocks whose
    indices are in ``capture`` (``{index: (B, L, d)}``, read by forward hooks that are removed
    again). The caller chooses autograd and precision."""
    captured: dict[int, torch.Tensor] = {}
    blocks = base.blocks() if capture else []
    hooks = [
        blocks[i].register_forward_hook(
            lambda m, a, out, key=i: captured.__setitem__(key, out[0] if isinstance(out, tuple) else out)
        )
        for i in capture
    ]
    try:
        hidden = base.hidden_states(input_ids, t, attention_mask)
    finally:
        for handle in hooks:
            handle.remove()
    return hidden, captured


class _Moments:
    """Running per-feature mean and variance of row vectors (float64 sums)."""

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, rows.shape[-1]).double()
        if self.total is None:
            self.total = rows.new_zeros(rows.shape[-1])
            self.squares = rows.new_zeros(rows.shape[-1])
        self.n += rows.shape[0]
        self.total += rows.sum(0)
        self.squares += rows.pow(2).sum(0)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation per feature; a feature that does not vary (or no data)
        gets a floor of 1e-3 of the typical deviation, so standardising never divides by 0."""
        if self.total is None or self.n == 0:
            raise ValueError("no statistics: the calibration batches held no response tokens")
        mean = self.total / self.n
        var = (self.squares / self.n - mean.pow(2)).clamp_min(0.0)
        std = var.sqrt()
        floor = std.mean().clamp_min(1e-6) * 1e-3
        return mean.float(), std.clamp_min(floor).float()


class LoraDiffusionModel(AdaptedModel):
    """A frozen base plus trajectory adapters at the final state (and optionally inside)."""

    method_name = "lora-diffusion"
    peft_type = "LORA_DIFFUSION"

    def __init__(self, base: nn.Module, config: LoraDiffusionConfig, *, base_hash: str) -> None:
        super().__init__(base, config, base_hash=base_hash)
        for p in base.parameters():
            p.requires_grad_(False)
        device = next(base.parameters()).device
        blocks = base.blocks()
        layers = []
        for index in config.inject_layers:
            if not -len(blocks) <= index < len(blocks):
                raise UsageError(
                    f"inject_layers: block {index} does not exist (the base has {len(blocks)})"
                )
            layers.append(index % len(blocks))
        if len(set(layers)) != len(layers):
            raise UsageError(f"inject_layers names the same block twice: {config.inject_layers}")
        self.inject_layers = sorted(layers)
        # Enc(c) reads these blocks' outputs besides the final states (the last block's output
        # is the final state, up to a final norm, so it is not read twice).
        self.context_blocks = (
            list(range(len(blocks) - 1)) if config.conditioning and config.context == "blocks" else []
        )
        # One attention-pooling query per layer Enc(c) reads (zero: a fresh adapter pools the
        # mean), or none with mean pooling or without Enc(c).
        self.context_queries = (
            nn.Parameter(
                torch.zeros(len(self.context_blocks) + 1, base.hidden_size, device=device)
            )
            if config.pooling == "attention" and config.conditioning
            else None
        )
        ranges = config.step_ranges()
        self.register_buffer(
            "_phase_of_step",
            torch.tensor([0] + [config.phase_of(s) for s in range(1, config.num_steps + 1)]),
            persistent=False,
        )
        self.register_buffer("_units_of_phase", torch.tensor(config.ranks), persistent=False)
        self.register_buffer("_scale_of_phase", torch.tensor(config.scales), persistent=False)

        def module(rank: int, scale: float, modules: int, slots: int, first_step: int, offset: bool):
            return PhaseAdapter(
                hidden_size=base.hidden_size, time_embed_dim=config.time_embed_dim, rank=rank,
                scale=scale, modules=modules, slots=slots, first_step=first_step,
                conditioning=config.conditioning, offset=offset,
                context_dim=base.hidden_size * (len(self.context_blocks) + 1), device=device,
            )

        self.sites = nn.ModuleDict()
        for site in ["final", *(_site_name(i) for i in self.inject_layers)]:
            phases = nn.ModuleDict()
            if config.share == "nested":
                # One module for every phase; rows choose their units and sigma (see _perturb).
                phases["nested"] = module(
                    max(config.ranks), 1.0, config.modules_per_phase, 1, 1, config.offset
                )
            else:
                for index, name in enumerate(config.phase_names):
                    lo, hi = ranges[index]
                    slots = (hi - lo + 1) if config.share == "step" else 1
                    phases[name] = module(
                        config.ranks[index], config.scales[index], config.modules_per_phase, slots,
                        lo, config.offset,
                    )
            if config.shared_rank:
                # One module that every step uses beside its phase's (keyed "shared" in the site;
                # the config refuses a phase of that name).
                phases["shared"] = module(config.shared_rank, config.shared_scale, 1, 1, 1, False)
            self.sites[site] = phases
        self._context: _StepContext | None = None
        self._hooks = [
            blocks[i].register_forward_hook(self._make_hook(_site_name(i)))
            for i in self.inject_layers
        ]
        base.eval()

    # -- nn.Module
    def train(self, mode: bool = True) -> LoraDiffusionModel:
        super().train(mode)
        self.base.eval()
        return self

    # -- the adapter
    def phase_modules(self, site: str = "final") -> dict[str, PhaseAdapter]:
        """The module serving each phase of one site, by phase name (without the shared module;
        with ``share: nested`` the same module for every phase)."""
        phases = self.sites[site]
        if self.config.share == "nested":
            return dict.fromkeys(self.config.phase_names, phases["nested"])
        return {name: phases[name] for name in self.config.phase_names}

    def shared_module(self, site: str = "final") -> PhaseAdapter | None:
        """The module every step of one site uses beside its phase's (None without
        ``shared_rank``)."""
        phases = self.sites[site]
        return phases["shared"] if "shared" in phases else None

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [
            p for site in self.sites.values() for m in site.values() for p in m.adapter_params()
        ]
        if self.context_queries is not None:
            params.append(self.context_queries)
        return params

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        if self.context_queries is not None:
            out["context.queries"] = self.context_queries
        for site, phases in self.sites.items():
            for phase, module in phases.items():
                for pname, param in module.named_parameters(recurse=False):
                    out[f"{site}.{phase}.{pname}"] = param
                for bname, buf in module.named_buffers(recurse=False):
                    out[f"{site}.{phase}.{bname}"] = buf
        return out

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """As the base class, but adapters saved before the standardisers and offsets existed
        load as they behaved: the missing tensors keep their identity values (mu 0, s 1, b 0)."""
        live = self._adapter_tensors()
        optional = ("h_shift", "h_scale", "c_shift", "c_scale", "bias")
        state = dict(state)
        for name, tensor in live.items():
            if name not in state and name.rsplit(".", 1)[-1] in optional:
                state[name] = tensor.detach().clone()
        super().load_adapter_state_dict(state)

    @torch.no_grad()
    def calibrate(self, batches, diffusion, *, seed: int = 0) -> dict[str, float]:
        """Measure the frozen base's state statistics that standardise each phase's inputs.

        ``batches``: SFT batches of the task (``input_ids``, ``response_mask``,
        ``instruction_mask``, optional ``attention_mask``); ``diffusion``: the
        :class:`~ldp.diffusion.DiffusionConfig` training uses. For every phase, each batch is
        corrupted at steps drawn uniformly from that phase and run through the base; H is
        pooled over response positions (where the adapter's output is scored) and Enc(c) over
        rows. Deterministic for given batches and ``seed``, so every data-parallel rank computes
        the same statistics. Returns a summary (mean std of H per phase) for logs.
        """
        from ldp.diffusion.corruption import corrupt

        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        sites = {"final": None, **{_site_name(i): i for i in self.inject_layers}}  # site -> block
        ranges = cfg.step_ranges()
        batches = list(batches)
        summary = {}
        # The shared and the nested module see every step: their statistics pool every phase's
        # passes.
        pooled = {site: _Moments() for site in sites}
        pooled_cond = _Moments()
        for index, name in enumerate(cfg.phase_names):
            lo, hi = ranges[index]
            acc = {site: _Moments() for site in sites}
            cond_acc = _Moments()
            for batch in batches:
                x0 = batch["input_ids"]
                response = batch["response_mask"].bool()
                attention = batch.get("attention_mask")
                steps = torch.randint(lo, hi + 1, (x0.shape[0],), generator=gen)
                x_t, _ = corrupt(
                    x0, steps, response, num_steps=cfg.num_steps,
                    mask_token_id=self.base.mask_token_id, vocab_size=self.base.vocab_size,
                    transition=diffusion.transition, schedule=diffusion.schedule,
                    generator=gen, min_one=diffusion.min_one_corrupted,
                )
                with self._base_context(x0.device):
                    hidden, captured = run_base(
                        self.base, x_t, steps.float() / cfg.num_steps, attention,
                        sorted({*self.inject_layers, *self.context_blocks}),
                    )
                for site, block in sites.items():
                    state = (hidden if block is None else captured[block]).float()[response]
                    acc[site].add(state)
                    pooled[site].add(state)
                if cfg.conditioning:
                    encoding = self.encode_context(
                        hidden, captured, batch.get("instruction_mask"), x_t, attention
                    )
                    cond_acc.add(encoding)
                    pooled_cond.add(encoding)
            if cfg.share != "nested":
                for site in sites:
                    c_stats = cond_acc.mean_std() if cfg.conditioning else (None, None)
                    self.sites[site][name].set_statistics(*acc[site].mean_std(), *c_stats)
            summary[f"calib_h_std_{name}"] = float(acc["final"].mean_std()[1].mean())
        for site in sites:
            pooled_modules = [self.shared_module(site)]
            if cfg.share == "nested":
                pooled_modules.append(self.sites[site]["nested"])
            for module in filter(None, pooled_modules):
                c_stats = pooled_cond.mean_std() if cfg.conditioning else (None, None)
                module.set_statistics(*pooled[site].mean_std(), *c_stats)
        return summary

    def step_plan(self, step: int) -> dict[str, float | int | str]:
        """Phase name, rank and scale used at integer step ``step`` (for inspection and tests)."""
        index = self.config.phase_of(step)
        return {
            "phase": self.config.phase_names[index],
            "rank": self.config.ranks[index],
            "scale": self.config.scales[index],
        }

    # -- forward
    def _base_context(self, device: torch.device):
        from ldp.models.precision import resolve_base_dtype

        if resolve_base_dtype(self.config.base_dtype, device) == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    def encode_context(
        self, hidden: torch.Tensor, block_states: dict[int, torch.Tensor] | None,
        instruction_mask: torch.Tensor | None, input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Enc(c) (B, d_c) fp32 from one base pass: the outputs of :attr:`context_blocks`
        (``block_states``: block index -> (B, L, d)), then the final states ``hidden``, each
        pooled over the prompt (mean, or attention with :attr:`context_queries`). One line of
        error if a block this adapter reads is missing."""
        block_states = block_states or {}
        missing = [i for i in self.context_blocks if i not in block_states]
        if missing:
            raise UsageError(
                f"this adapter's Enc(c) reads the outputs of blocks {self.context_blocks} "
                "(context: blocks): pass them as block_states (the same base pass), or pass encoding"
            )
        states = [block_states[i].detach() for i in self.context_blocks] + [hidden.detach()]
        return context_encoding(
            states, instruction_mask, input_ids=input_ids,
            mask_token_id=self.base.mask_token_id, attention_mask=attention_mask,
            queries=self.context_queries,
        )

    def _perturb(self, site: str, hidden: torch.Tensor, ctx: _StepContext) -> torch.Tensor:
        """delta (B, L, d) fp32 of one site: each row uses the modules of its step's phase."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            hidden = hidden.float()
            phases = self.sites[site]
            shared = self.shared_module(site)

            def phase_delta(name: str, *args: torch.Tensor | None, **rows_choose) -> torch.Tensor:
                delta = phases[name](*args, **rows_choose)
                return delta if shared is None else delta + shared(*args)

            if self.config.share == "nested":
                # One module for every row, whatever the mix of phases: each row keeps its
                # phase's units and sigma, and the graph never depends on the data.
                return phase_delta(
                    "nested", hidden, ctx.temb, ctx.cond, ctx.steps,
                    units=self._units_of_phase[ctx.phase], scale=self._scale_of_phase[ctx.phase],
                )
            # In training every phase module runs, on an empty row set if no row of the batch is
            # in its phase: then every adapter parameter gets a gradient (zeros) in the same
            # order on every data-parallel rank, whatever mix of steps each rank drew. A graph
            # that depends on the data makes ZeRO-2's bucketed reduction add up mismatched
            # gradients (or fail, when the sizes differ).
            training = torch.is_grad_enabled() and self.training
            if not training and bool((ctx.phase == ctx.phase[0]).all()):
                name = self.config.phase_names[int(ctx.phase[0])]
                return phase_delta(name, hidden, ctx.temb, ctx.cond, ctx.steps)
            delta = torch.zeros_like(hidden)
            for index, name in enumerate(self.config.phase_names):
                rows = (ctx.phase == index).nonzero(as_tuple=True)[0]
                if rows.numel() == 0 and not training:
                    continue
                cond = None if ctx.cond is None else ctx.cond[rows]
                # The shared module runs on the phase's rows too, so a row's value does not
                # depend on which rows share its batch (bit for bit).
                part = phase_delta(name, hidden[rows], ctx.temb[rows], cond, ctx.steps[rows])
                delta = delta.index_copy(0, rows, part)
            return delta

    def _delta_at(
        self, hidden: torch.Tensor, ctx: _StepContext, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, delta (N, d))``: the final-site perturbation at ``positions`` only. Each
        chosen position becomes a one-position row with its sequence's step context (the
        perturbation of a position depends only on H there, the step and Enc(c), so the values
        are the same as computed everywhere)."""
        rows, cols = positions.bool().nonzero(as_tuple=True)
        picked = hidden[rows, cols][:, None, :]  # (N, 1, d)
        cond = None if ctx.cond is None else ctx.cond[rows]
        sub = _StepContext(ctx.steps[rows], ctx.phase[rows], ctx.temb[rows], cond)
        delta = self._perturb("final", picked, sub)[:, 0, :] if rows.numel() else picked[:, 0, :] * 0
        return rows, cols, delta

    def _perturb_at(self, hidden: torch.Tensor, ctx: _StepContext, positions: torch.Tensor) -> torch.Tensor:
        """H with the final-site perturbation added at ``positions`` only."""
        rows, cols, delta = self._delta_at(hidden, ctx, positions)
        return hidden.index_put((rows, cols), hidden[rows, cols] + delta)

    def _make_hook(self, site: str):
        def hook(module, args, output):
            ctx = self._context
            if ctx is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            new = hidden + self._perturb(site, hidden, ctx).to(hidden.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        steps: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """H' (B, L, d) fp32. ``positions`` (B, L) bool, for final-state adapters: the caller reads
        H' only there (the training loss reads the answer), so the perturbation is computed
        there alone and the other positions hold the base's H; without it, everywhere."""
        cfg = self.config
        batch = input_ids.shape[0]
        steps = resolve_steps(t, steps, cfg.num_steps, batch, device=input_ids.device)
        if t is None:
            t = steps.to(torch.float32) / cfg.num_steps
        temb = sinusoidal_step_embedding(steps, cfg.time_embed_dim)
        phase = self._phase_of_step[steps]

        def enc(hidden: torch.Tensor, captured: dict[int, torch.Tensor]) -> torch.Tensor | None:
            if not cfg.conditioning:
                return None
            return self.encode_context(hidden, captured, instruction_mask, input_ids, attention_mask)

        if not self.inject_layers:
            with torch.no_grad(), self._base_context(input_ids.device):
                hidden, captured = run_base(self.base, input_ids, t, attention_mask, self.context_blocks)
            hidden = hidden.float()
            ctx = _StepContext(steps, phase, temb, enc(hidden, captured))
            if positions is None:
                return hidden + self._perturb("final", hidden, ctx)
            return self._perturb_at(hidden, ctx, positions)

        cond = None
        if cfg.conditioning:
            with torch.no_grad(), self._base_context(input_ids.device):
                clean, captured = run_base(self.base, input_ids, t, attention_mask, self.context_blocks)
            cond = enc(clean, captured)
        ctx = _StepContext(steps, phase, temb, cond)
        self._context = ctx
        try:
            with self._base_context(input_ids.device):
                hidden = self.base.hidden_states(input_ids, t, attention_mask)
        finally:
            self._context = None
        hidden = hidden.float()
        return hidden + self._perturb("final", hidden, ctx)

    def perturbation(
        self,
        hidden: torch.Tensor,
        steps: torch.Tensor,
        *,
        input_ids: torch.Tensor,
        instruction_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        encoding: torch.Tensor | None = None,
        block_states: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``sum_i sigma(t) g_i(H, t, c)`` (B, L, d) fp32 at the final site for given base states H.

        ``positions`` (B, L) bool: compute it there only (zero elsewhere), for callers that read
        H' at a few positions (a sampler reads the masked positions of the current block).
        ``encoding`` (B, d_c): Enc(c) already taken from the same base pass (a composition computes
        it once for all its adapters); computed here otherwise, from H and, with ``context:
        blocks``, ``block_states`` (block index -> (B, L, d) output of the same pass; see
        :attr:`context_blocks`).

        For composition (``ldp.methods.compose``): one frozen-base forward gives H,
        and each task adapter's perturbation is added with its weight,
        ``H' = H + sum_j w_j perturbation_j(H, ...)``. Enc(c) is taken from H as in
        :meth:`hidden_states`. Only for final-state adapters (no ``inject_layers``).
        """
        if self.inject_layers:
            raise UsageError(
                "perturbation() needs a final-state-only adapter (inject_layers is set)"
            )
        hidden = hidden.float()
        steps = resolve_steps(
            None, steps, self.config.num_steps, hidden.shape[0], device=hidden.device
        )
        cond = None
        if self.config.conditioning and encoding is not None:
            cond = encoding.float()
        elif self.config.conditioning:
            cond = self.encode_context(hidden, block_states, instruction_mask, input_ids, attention_mask)
        temb = sinusoidal_step_embedding(steps, self.config.time_embed_dim)
        ctx = _StepContext(steps, self._phase_of_step[steps], temb, cond)
        if positions is None:
            return self._perturb("final", hidden, ctx)
        rows, cols, delta = self._delta_at(hidden, ctx, positions)
        return torch.zeros_like(hidden).index_put((rows, cols), delta)

    # -- regularisers and diagnostics
    def regularization(self) -> dict[str, torch.Tensor]:
        """Eq. 17 terms, already weighted (add both to the denoising loss).

        ``rank`` = lambda_rank * sum over every module (site, phase, step slot, i) of
        ``||W_A||_* + ||W_B||_*``; ``orth`` = lambda_orth * sum over pairs i < j of modules that
        act together (the k modules of one set: same site, phase or nested set, and step slot)
        of ``||W_A_i^T W_A_j||_F^2``.
        """
        modules = [m for site in self.sites.values() for m in site.values()]
        zero = modules[0].lora_A.new_zeros(())
        cfg = self.config
        # A term whose weight is 0 is not computed (the nuclear norms cost an eigendecomposition
        # per module and step; nuclear_norm runs it on one thread).
        rank = sum((m.nuclear_norm_sum() for m in modules), zero) if cfg.lambda_rank else zero
        orth = sum((m.orthogonality() for m in modules), zero) if cfg.lambda_orth else zero
        return {"rank": cfg.lambda_rank * rank, "orth": cfg.lambda_orth * orth}

    def effective_rank(self) -> dict[str, float]:
        """Per phase: mean entropy effective rank (Eq. 28) of W_A_i W_B_i over the phase's modules
        (all sites, step slots and i); ``shared`` for the shared module, when there is one.
        0.0 while W_A is still zero."""
        out = {}
        nested = self.config.share == "nested"
        for index, name in enumerate(self.config.phase_names):
            units = self.config.ranks[index] if nested else None
            values = [
                v for site in self.sites
                for v in self.phase_modules(site)[name].perturbation_effective_ranks(units)
            ]
            out[name] = float(sum(values) / len(values))
        if self.config.shared_rank:
            values = [
                v for site in self.sites for v in self.shared_module(site).perturbation_effective_ranks()
            ]
            out["shared"] = float(sum(values) / len(values))
        return out

    def remove_hooks(self) -> None:
        """Detach the residual-stream hooks from the base (the adapter then acts at H only)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def attach(base: nn.Module, config: LoraDiffusionConfig, *, base_hash: str) -> LoraDiffusionModel:
    """Freeze ``base`` and attach a fresh (identity) trajectory adapter."""
    return LoraDiffusionModel(base, config, base_hash=base_hash)
