"""The trajectory adapter (docs/METHOD.md): identity at init, phases, FiLM, regularisers, rank."""

from __future__ import annotations

import pytest
import torch
from ldp.config import build
from ldp.errors import UsageError
from ldp.methods import get_method
from ldp.methods.lora_diffusion import LoraDiffusionConfig, effective_rank_of
from ldp.methods.lora_diffusion.layer import sinusoidal_step_embedding
from ldp.methods.lora_diffusion.model import run_base

from .conftest import make_tiny

# fp32 base: these tests compare the adapted model with the plain base bit for bit, and `auto`
# would run the base under bf16 autocast on a CPU with native bf16 (the bf16 path has its own test).
SMALL = {"ranks": [8, 4, 2], "time_embed_dim": 16, "base_dtype": "fp32"}


def attach(base, **cfg):
    method = get_method("lora-diffusion")
    return method.attach(base, method.build_config({**SMALL, **cfg}))


def randomise(model, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("share", ["phase", "step"])
def test_fresh_adapter_is_exactly_the_base(tiny, batch, share):
    ids, t, inst = batch
    expected = tiny(ids, t)
    model = attach(tiny, share=share, num_steps=30)
    got = model(ids, t, instruction_mask=inst)
    assert torch.equal(got, expected)
    # and once the adapter is non-zero it is not
    randomise(model)
    assert not torch.allclose(model(ids, t, instruction_mask=inst), expected)


def test_only_adapter_trains_and_base_is_bit_identical(tiny, batch):
    ids, t, inst = batch
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    model = attach(tiny, num_steps=30, share="step")
    params = model.trainable_parameters()
    adapter_ids = {id(p) for p in params}
    # the phase modules and (default attention pooling) the pooling queries, nothing else
    assert adapter_ids == {id(p) for p in model.sites.parameters()} | {id(model.context_queries)}
    assert all(not p.requires_grad for p in tiny.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    start = [p.detach().clone() for p in params]
    for _ in range(3):
        logits = model(ids, t, instruction_mask=inst)
        reg = model.regularization()
        loss = (
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
            + reg["rank"]
            + reg["orth"]
        )
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in tiny.parameters())
        opt.step()
    # every parameter of the phases in use (t=0.9 -> early, t=0.2 -> late) moved: W_A first,
    # then W_B and FiLM through it; the unused middle phase's W_A and FiLM stayed at zero
    moved = {id(p) for a, p in zip(start, params) if not torch.equal(a, p.detach())}
    phases = model.phase_modules()
    for name in ("early", "late"):
        assert {id(p) for p in phases[name].adapter_params()} <= moved
    middle = phases["middle"]
    assert not {id(middle.lora_A), id(middle.film_weight), id(middle.film_bias)} & moved
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_phase_rank_and_scale_per_step_at_the_boundaries(tiny):
    T = 30  # early t > 20, middle 11..20, late t <= 10
    model = attach(tiny, num_steps=T, ranks=[6, 4, 2], scales=[1.0, 0.5, 0.25], share="phase")
    want = {30: "early", 21: "early", 20: "middle", 11: "middle", 10: "late", 1: "late"}
    ranks = {"early": 6, "middle": 4, "late": 2}
    scales = {"early": 1.0, "middle": 0.5, "late": 0.25}
    for step, phase in want.items():
        plan = model.step_plan(step)
        assert plan == {"phase": phase, "rank": ranks[phase], "scale": scales[phase]}
    # the module actually applied: only make the middle phase non-zero
    for name, module in model.phase_modules().items():
        assert module.rank == ranks[name] and module.scale == scales[name]
    with torch.no_grad():
        model.phase_modules()["middle"].lora_A.normal_()
    ids = torch.randint(4, 40, (1, 6))
    for step, phase in want.items():
        steps = torch.tensor([step])
        base_logits = tiny(ids, steps.float() / T)
        changed_by_steps = not torch.equal(model(ids, steps=steps), base_logits)
        changed_by_t = not torch.equal(model(ids, steps.float() / T), base_logits)
        assert changed_by_steps == changed_by_t == (phase == "middle"), step


def test_scale_multiplies_the_perturbation(batch):
    ids, _, inst = batch
    outs = []
    for scale in (1.0, 0.25):
        model = attach(make_tiny(), num_steps=30, scales=[scale, scale, scale])
        randomise(model)
        outs.append(
            model.hidden_states(ids, steps=torch.tensor([25, 25]), instruction_mask=inst)
            - make_tiny().hidden_states(ids, torch.tensor([25, 25]) / 30)
        )
    torch.testing.assert_close(outs[1], 0.25 * outs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("context", "pooling"), [("final", "mean"), ("blocks", "mean"), ("blocks", "attention")]
)
def test_perturbation_matches_the_written_formula(tiny, batch, context, pooling):
    """H' = H + sigma * (sum_i W_A_i (ReLU(W_B_i [H^; Emb(t)]) * (1 + W_c_i c^ + b_c_i)) + b)
    with H^ = (H - mu_H) / s_H and c^ = (Enc(c) - mu_c) / s_c, where Enc(c) pools the final
    states (``final``) or every block's output, then the final states (``blocks``), over the
    prompt: by their mean, or (``attention``) weighted by softmax(h . q_layer)."""
    ids, _, inst = batch
    model = attach(tiny, num_steps=30, share="step", context=context, pooling=pooling)
    randomise(model)
    g = torch.Generator().manual_seed(1)
    d = tiny.hidden_size
    n_blocks = len(tiny.blocks())
    d_c = d * (n_blocks if context == "blocks" else 1)
    for module in model.phase_modules().values():
        module.set_statistics(torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5,
                              torch.randn(d_c, generator=g), torch.rand(d_c, generator=g) + 0.5)
    steps = torch.tensor([27, 5])
    got = model.hidden_states(ids, steps=steps, instruction_mask=inst)
    outputs = []
    hooks = [block.register_forward_hook(lambda m, a, out: outputs.append(out)) for block in tiny.blocks()]
    H = tiny.hidden_states(ids, steps.float() / 30)
    for hook in hooks:
        hook.remove()
    read = [*outputs[:-1], H] if context == "blocks" else [H]
    for row in range(2):
        step = int(steps[row])
        plan = model.step_plan(step)
        module = model.phase_modules()[plan["phase"]]
        slot = step - module.first_step
        if pooling == "mean":
            raw = torch.cat([state[row][inst[row]].mean(0) for state in read])
        else:
            pooled = []
            for layer, state in enumerate(read):
                prompt = state[row][inst[row]]
                weights = torch.softmax(prompt @ model.context_queries[layer], dim=0)
                pooled.append(weights @ prompt)
            raw = torch.cat(pooled)
        assert raw.shape == (d_c,)
        enc = (raw - module.c_shift) / (1 / module.c_scale)
        h_std = (H[row] - module.h_shift) / (1 / module.h_scale)
        x = torch.cat(
            [h_std, sinusoidal_step_embedding(steps[row : row + 1], 16).expand(12, -1)], -1
        )
        ref = H[row].clone() + plan["scale"] * module.bias[slot]
        for i in range(module.modules_per_phase):
            u = torch.relu(x @ module.lora_B[slot, i].T)
            gamma = module.film_weight[slot, i] @ enc + module.film_bias[slot, i]
            ref = ref + plan["scale"] * (u * (1 + gamma)) @ module.lora_A[slot, i].T
        torch.testing.assert_close(got[row], ref, rtol=1e-4, atol=1e-4)


def test_share_step_gives_each_step_its_own_modules(tiny):
    model = attach(tiny, num_steps=30, share="step", pooling="mean")
    early = model.phase_modules()["early"]
    assert early.lora_A.shape[0] == 10 and model.phase_modules()["middle"].lora_A.shape[0] == 10
    with torch.no_grad():
        early.lora_A[25 - early.first_step].normal_()  # only step 25's modules
    ids = torch.randint(4, 40, (1, 6))
    for step in (21, 24, 25, 26, 30):
        base = tiny(ids, torch.tensor([step / 30]))
        changed = not torch.equal(model(ids, steps=torch.tensor([step])), base)
        assert changed == (step == 25)
    phase_model = attach(make_tiny(), num_steps=30, share="phase", pooling="mean")
    assert model.parameter_counts()["trainable"] == 10 * phase_model.parameter_counts()["trainable"]


def test_film_conditioning_depends_on_the_instruction(batch):
    ids, _, inst = batch
    steps = torch.tensor([25, 25])
    other = inst.clone()
    other[:, :5] = False
    other[:, 5:8] = True  # different tokens marked as the instruction
    model = attach(make_tiny(), num_steps=30)
    randomise(model)
    a = model(ids, steps=steps, instruction_mask=inst)
    b = model(ids, steps=steps, instruction_mask=other)
    assert (a - b).abs().max() > 1e-3
    # the instruction tokens' content matters too, at positions outside the instruction
    ids2 = ids.clone()
    ids2[:, 0] = (ids[:, 0] + 1 - 4) % 36 + 4
    free = attach(make_tiny(), num_steps=30, conditioning=False)
    randomise(free)
    # without conditioning the instruction mask is ignored entirely
    assert torch.equal(
        free(ids, steps=steps, instruction_mask=inst),
        free(ids, steps=steps, instruction_mask=other),
    )
    # None falls back to the unmasked positions (here: the first 8)
    fallback = inst.clone()
    fallback[:, :8] = True
    assert torch.equal(model(ids, steps=steps), model(ids, steps=steps, instruction_mask=fallback))


def _naive_regularisers(model):
    rank = 0.0
    orth = 0.0
    for phases in model.sites.values():
        for module in phases.values():
            S, k = module.lora_A.shape[:2]
            for s in range(S):
                for i in range(k):
                    rank += torch.linalg.svdvals(module.lora_A[s, i]).sum()
                    rank += torch.linalg.svdvals(module.lora_B[s, i]).sum()
                    for j in range(i + 1, k):
                        orth += (
                            torch.linalg.matrix_norm(module.lora_A[s, i].T @ module.lora_A[s, j])
                            ** 2
                        )
    return model.config.lambda_rank * rank, model.config.lambda_orth * orth


@pytest.mark.parametrize("share", ["phase", "step"])
def test_regularisers_match_a_naive_reference(tiny, share):
    model = attach(
        tiny, num_steps=6, share=share, modules_per_phase=3, lambda_rank=0.02, lambda_orth=0.5
    )
    randomise(model)
    reg = model.regularization()
    rank, orth = _naive_regularisers(model)
    torch.testing.assert_close(reg["rank"], rank, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reg["orth"], orth, rtol=1e-5, atol=1e-6)
    assert reg["orth"] > 0
    (reg["rank"] + reg["orth"]).backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.trainable_parameters()[:2]
    )


def test_a_regulariser_weighted_zero_is_not_computed(tiny, monkeypatch):
    from ldp.methods.lora_diffusion.layer import PhaseAdapter

    model = attach(tiny, num_steps=6, modules_per_phase=2, lambda_rank=0.0, lambda_orth=0.0)
    randomise(model)
    for name in ("nuclear_norm_sum", "orthogonality"):
        monkeypatch.setattr(PhaseAdapter, name, lambda self: pytest.fail("computed a zero-weighted term"))
    reg = model.regularization()
    assert float(reg["rank"]) == 0.0 and float(reg["orth"]) == 0.0


def test_regularisers_run_on_one_thread_and_restore_the_thread_count(tiny, monkeypatch):
    from ldp.methods.lora_diffusion import layer

    model = attach(tiny, num_steps=6, modules_per_phase=2, lambda_rank=0.02, lambda_orth=0.5)
    randomise(model)
    seen = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda g: (seen.append(torch.get_num_threads()), eigh(g))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.regularization()
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), layer.one_thread():
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_regularisers_are_finite_and_differentiable_at_init(tiny):
    model = attach(tiny, num_steps=30)
    reg = model.regularization()
    assert float(reg["orth"].detach()) == 0.0
    (reg["rank"] + reg["orth"]).backward()
    for p in model.trainable_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()


def test_effective_rank_of_known_matrices():
    assert effective_rank_of(torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0]))) == pytest.approx(3.0)
    p = torch.tensor([0.75, 0.25])
    assert effective_rank_of(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(
        float(torch.exp(-(p * p.log()).sum()))
    )
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert effective_rank_of(q @ torch.diag(torch.tensor([2.0, 2, 0, 0, 0, 0]))) == pytest.approx(
        2.0
    )
    assert effective_rank_of(torch.zeros(3, 4)) == 0.0


def test_effective_rank_per_phase_matches_svd_of_the_product(tiny):
    model = attach(tiny, num_steps=30, share="phase")
    assert model.effective_rank() == {"early": 0.0, "middle": 0.0, "late": 0.0}
    randomise(model)
    with torch.no_grad():  # make "late" exactly rank 1 in each module
        late = model.phase_modules()["late"]
        late.lora_A[..., 1:] = 0
    got = model.effective_rank()
    assert got["late"] == pytest.approx(1.0)
    middle = model.phase_modules()["middle"]
    ref = [
        effective_rank_of(middle.lora_A[0, i].double() @ middle.lora_B[0, i].double())
        for i in range(2)
    ]
    assert got["middle"] == pytest.approx(sum(ref) / 2, rel=1e-6)
    assert 1.0 < got["early"] <= 8.0


def test_inject_layers_identity_then_gradients_through_the_base(tiny, batch):
    ids, t, inst = batch
    expected = tiny(ids, t)
    model = attach(tiny, num_steps=30, inject_layers=[0, -1])
    assert set(model.sites) == {"final", "layer0", "layer1"}
    assert torch.equal(model(ids, t, instruction_mask=inst), expected)
    randomise(model)
    out = model(ids, t, instruction_mask=inst)
    out.sum().backward()
    layer0 = model.phase_modules("layer0")
    assert any(m.lora_A.grad is not None and m.lora_A.grad.abs().sum() > 0 for m in layer0.values())
    assert all(p.grad is None for p in tiny.parameters())
    # the hooks are inert outside the adapted forward
    assert torch.equal(tiny(ids, t), expected)


def test_bf16_base_keeps_adapter_math_in_fp32(tiny, batch):
    ids, t, inst = batch
    model = attach(tiny, num_steps=30, base_dtype="bf16")
    randomise(model)
    hidden = model.hidden_states(ids, t, instruction_mask=inst)
    assert hidden.dtype == torch.float32
    ref = attach(make_tiny(), num_steps=30)
    randomise(ref)
    torch.testing.assert_close(
        hidden, ref.hidden_states(ids, t, instruction_mask=inst), rtol=0.1, atol=0.1
    )


def test_step_resolution_and_errors(tiny):
    model = attach(tiny, num_steps=30)
    ids = torch.randint(4, 40, (2, 5))
    with pytest.raises(UsageError, match="diffusion step"):
        model(ids)
    with pytest.raises(UsageError, match="1..30"):
        model(ids, steps=torch.tensor([0, 3]))
    with pytest.raises(UsageError, match="integer"):
        model(ids, steps=torch.tensor([1.0, 3.0]))
    with pytest.raises(UsageError, match="block 5"):
        attach(make_tiny(), inject_layers=[5])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"ranks": [8, 4]}, "3 ranks"),
        ({"boundaries": [0.3, 0.6]}, "decreasing"),
        ({"boundaries": [0.59, 0.51], "num_steps": 10}, "covers no step"),
        ({"share": "layer"}, "share"),
        ({"phase_names": ["a", "b.c", "d"]}, "identifier"),
        ({"rank": 3}, "unknown config key"),
        ({"share": "nested", "phase_names": ["nested", "b", "c"]}, "named 'nested'"),
        ({"shared_rank": -1}, "shared_rank"),
    ],
)
def test_bad_configs_are_refused(data, message):
    with pytest.raises(UsageError, match=message):
        build(LoraDiffusionConfig, data)


def test_perturbation_composes_on_one_base_forward(batch):
    """H + w1 * delta_1 + w2 * delta_2 from one base pass; w = (1, 0) gives adapter 1 exactly."""
    ids, _, inst = batch
    base = make_tiny()
    one, two = attach(base, num_steps=30), None
    randomise(one, seed=1)
    two = get_method("lora-diffusion").attach(make_tiny(), one.config)
    randomise(two, seed=2)
    steps = torch.tensor([28, 12])
    H, blocks = run_base(base, ids, steps / 30, None, one.context_blocks)
    assert one.context_blocks == list(range(len(base.blocks()) - 1))
    with pytest.raises(UsageError, match="block_states"):
        one.perturbation(H, steps, input_ids=ids, instruction_mask=inst)
    d1 = one.perturbation(H, steps, input_ids=ids, instruction_mask=inst, block_states=blocks)
    d2 = two.perturbation(H, steps, input_ids=ids, instruction_mask=inst, block_states=blocks)
    torch.testing.assert_close(H + d1, one.hidden_states(ids, steps=steps, instruction_mask=inst))
    assert not torch.allclose(d1, d2)
    mixed = H + 0.5 * d1 + 0.5 * d2
    assert mixed.shape == H.shape


def test_positions_hint_gives_the_same_values_and_gradients_where_read(tiny, batch):
    """The training loss reads H' on the answer only; computing the perturbation there alone
    must not change what is read, nor the gradients."""
    ids, _, inst = batch
    model = attach(tiny, num_steps=30).train()
    randomise(model)
    steps = torch.tensor([27, 5])
    read = torch.zeros_like(inst)
    read[:, 8:] = True
    full = model.hidden_states(ids, steps=steps, instruction_mask=inst)
    full[read].pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.trainable_parameters()]
    model.zero_grad()
    part = model.hidden_states(ids, steps=steps, instruction_mask=inst, positions=read)
    part[read].pow(2).sum().backward()
    torch.testing.assert_close(part[read], full[read])
    base = tiny.hidden_states(ids, steps.float() / 30)
    assert torch.equal(part[~read], base[~read])  # unread positions hold the base's H
    for got, want in zip((p.grad for p in model.trainable_parameters()), grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_adapter_saved_before_context_existed_loads_as_final(tmp_path, batch):
    """Adapters written before ``context`` and ``pooling`` existed read the final states only,
    pooled by the mean; their config has neither key, and the defaults are now ``blocks`` and
    ``attention``: they must load as ``final`` and ``mean`` and give the logits they gave when
    saved."""
    import json

    from ldp.methods import load_adapter
    from ldp.methods.base import ADAPTER_CONFIG_NAME

    ids, t, inst = batch
    model = attach(make_tiny(), num_steps=30, context="final", pooling="mean")
    randomise(model)
    model.eval()
    expected = model(ids, t, instruction_mask=inst)
    folder = model.save_adapter(tmp_path / "old", base_name="test/native")
    meta_path = folder / ADAPTER_CONFIG_NAME
    meta = json.loads(meta_path.read_text())
    del meta["ldp_config"]["context"]
    del meta["ldp_config"]["pooling"]
    meta_path.write_text(json.dumps(meta))
    loaded = load_adapter(make_tiny(), folder).eval()
    assert loaded.config.context == "final" and loaded.context_blocks == []
    assert loaded.config.pooling == "mean" and loaded.context_queries is None
    assert torch.equal(loaded(ids, t, instruction_mask=inst), expected)
    fresh = attach(make_tiny(), num_steps=30).config  # new adapters
    assert fresh.context == "blocks" and fresh.pooling == "attention"


def test_blocks_context_reads_the_middle_blocks(tiny, batch):
    """With ``context: blocks`` the perturbation depends on the middle blocks' prompt states:
    standardising one middle block's part of Enc(c) differently changes H'."""
    ids, t, inst = batch
    model = attach(tiny, num_steps=30)
    randomise(model)
    before = model.hidden_states(ids, t, instruction_mask=inst)
    d = tiny.hidden_size
    for module in model.phase_modules().values():
        assert module.film_weight.shape[-1] == d * len(tiny.blocks())
        with torch.no_grad():
            module.c_shift[:d] += 1.0  # block 0's prompt mean only
    assert not torch.allclose(model.hidden_states(ids, t, instruction_mask=inst), before)


def test_attention_pooling_starts_as_the_mean_then_learns_and_is_saved(tmp_path, batch):
    """``pooling: attention``: with its queries at zero (a fresh adapter) Enc(c) is the mean,
    so any adapter weights give what mean pooling gives; the queries get gradient from the
    loss, are counted as trainable, and round-trip through save / load."""
    from ldp.methods import load_adapter

    ids, t, inst = batch
    mean = attach(make_tiny(), num_steps=30, pooling="mean")
    attn = attach(make_tiny(), num_steps=30, pooling="attention")
    assert mean.context_queries is None
    queries = attn.context_queries
    assert queries.shape == (len(attn.base.blocks()), attn.base.hidden_size)
    assert torch.equal(queries, torch.zeros_like(queries))
    assert any(p is queries for p in attn.trainable_parameters())
    counts = attn.parameter_counts()["trainable"] - mean.parameter_counts()["trainable"]
    assert counts == queries.numel()
    randomise(mean)
    with torch.no_grad():  # the same adapter weights, queries still zero
        for mine, theirs in zip(attn.trainable_parameters(), mean.trainable_parameters()):
            mine.copy_(theirs)
    torch.testing.assert_close(
        attn(ids, t, instruction_mask=inst), mean(ids, t, instruction_mask=inst), rtol=1e-5, atol=1e-5
    )
    attn(ids, t, instruction_mask=inst).logsumexp(-1).sum().backward()
    assert queries.grad is not None and float(queries.grad.abs().sum()) > 0
    with torch.no_grad():
        queries.normal_()
    attn.eval()
    expected = attn(ids, t, instruction_mask=inst)
    assert not torch.allclose(expected, mean(ids, t, instruction_mask=inst))
    loaded = load_adapter(make_tiny(), attn.save_adapter(tmp_path / "a", base_name="test/native")).eval()
    assert loaded.config.pooling == "attention"
    assert torch.equal(loaded.context_queries, queries)
    assert torch.equal(loaded(ids, t, instruction_mask=inst), expected)


def test_attention_pooling_without_conditioning_adds_nothing():
    """No Enc(c), nothing to pool: the default ``pooling: attention`` with ``conditioning``
    off is accepted and trains no query."""
    free = attach(make_tiny(), num_steps=30, conditioning=False)
    assert free.config.pooling == "attention" and free.context_queries is None
    plain = attach(make_tiny(), num_steps=30, conditioning=False, pooling="mean")
    assert free.parameter_counts()["trainable"] == plain.parameter_counts()["trainable"]


def test_shared_module_acts_at_every_step_and_trains_on_every_row(tiny, batch):
    """``shared_rank``: one more module, used at every step beside the phase's. With only its
    W_A non-zero, every phase's steps are perturbed; in training every row sends it gradient."""
    ids, _, inst = batch
    model = attach(tiny, num_steps=30, shared_rank=4, shared_scale=0.5)
    shared = model.shared_module()
    assert shared is not None and shared.rank == 4 and shared.scale == 0.5
    assert set(model.phase_modules()) == {"early", "middle", "late"}
    assert {id(p) for p in shared.adapter_params()} <= {id(p) for p in model.trainable_parameters()}
    for step in (30, 15, 2):  # one step of each phase
        steps = torch.tensor([step, step])
        assert torch.equal(model(ids, steps=steps, instruction_mask=inst), tiny(ids, steps / 30))
    torch.manual_seed(0)
    with torch.no_grad():
        shared.lora_A.normal_()
        shared.lora_B.normal_()  # large enough that some ReLU units are on at every step
    for step in (30, 15, 2):
        steps = torch.tensor([step, step])
        assert not torch.allclose(model(ids, steps=steps, instruction_mask=inst), tiny(ids, steps / 30))
    model.train()
    steps = torch.tensor([28, 3])  # rows in the early and the late phase
    model.hidden_states(ids, steps=steps, instruction_mask=inst).pow(2).sum().backward()
    assert shared.lora_B.grad.abs().sum() > 0
    # its perturbation is the written formula with sigma = shared_scale, summed with the phase's
    with torch.no_grad():
        for module in model.phase_modules().values():
            module.lora_A.zero_()
    model.eval()
    got = model.hidden_states(ids, steps=steps, instruction_mask=inst)
    H, blocks = run_base(tiny, ids, steps / 30, None, model.context_blocks)
    enc = model.encode_context(H, blocks, inst, ids, None)
    alone = 0.5 * shared.lora_A[0, 0] @ (
        torch.relu(torch.cat([H, sinusoidal_step_embedding(steps, 16)[:, None].expand(-1, 12, -1)], -1)
                   @ shared.lora_B[0, 0].T)
        * (1 + enc @ shared.film_weight[0, 0].T + shared.film_bias[0, 0])[:, None]
    ).transpose(-1, -2)
    torch.testing.assert_close(got, H + alone.transpose(-1, -2), rtol=1e-4, atol=1e-4)


def test_shared_module_is_calibrated_saved_and_regularised(tmp_path, batch):
    from ldp.diffusion import DiffusionConfig
    from ldp.methods import load_adapter

    ids, t, inst = batch
    model = attach(make_tiny(), num_steps=30, shared_rank=4)
    response = ~inst
    model.calibrate([{"input_ids": ids, "response_mask": response, "instruction_mask": inst}],
                    DiffusionConfig(num_steps=30))
    shared = model.shared_module()
    assert shared.h_shift.abs().sum() > 0 and not torch.equal(shared.c_scale, torch.ones_like(shared.c_scale))
    randomise(model)
    model.eval()
    expected = model(ids, t, instruction_mask=inst)
    loaded = load_adapter(make_tiny(), model.save_adapter(tmp_path / "a", base_name="test/native")).eval()
    assert loaded.config.shared_rank == 4
    assert torch.equal(loaded(ids, t, instruction_mask=inst), expected)
    shared_only = model.regularization()["rank"] - attach(make_tiny(), num_steps=30).regularization()["rank"]
    assert float(shared_only.detach()) != 0.0  # its nuclear norms are part of Eq. 17's term
    assert "shared" in model.effective_rank()


def test_nested_share_gives_each_phase_its_rank_and_scale_from_one_module(tiny, batch):
    """``share: nested``: one module of rank max(ranks); a row of phase p is the written formula
    over the first ranks[p] units only, scaled by scales[p]."""
    ids, _, inst = batch
    model = attach(tiny, num_steps=30, share="nested", context="final", pooling="mean")
    module = model.phase_modules()["early"]
    assert all(m is module for m in model.phase_modules().values()) and module.rank == 8
    assert model.parameter_counts()["trainable"] == sum(p.numel() for p in module.adapter_params())
    steps = torch.tensor([30, 30])
    assert torch.equal(model(ids, steps=steps, instruction_mask=inst), tiny(ids, steps / 30))  # identity
    randomise(model)
    for step, r, sigma in ((27, 8, 1.0), (14, 4, 0.5), (3, 2, 0.25)):  # early, middle, late
        steps = torch.tensor([step, 28])  # row 1 sits in another phase: rows do not mix
        got = model.hidden_states(ids, steps=steps, instruction_mask=inst)[0]
        H = tiny.hidden_states(ids, steps / 30)[0]
        enc = H[inst[0]].mean(0)
        x = torch.cat([H, sinusoidal_step_embedding(steps[:1], 16).expand(12, -1)], -1)
        ref = H + sigma * module.bias[0]
        for i in range(2):
            u = torch.relu(x @ module.lora_B[0, i, :r].T)
            gamma = module.film_weight[0, i, :r] @ enc + module.film_bias[0, i, :r]
            ref = ref + sigma * (u * (1 + gamma)) @ module.lora_A[0, i, :, :r].T
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_nested_share_trains_only_the_units_a_phase_uses(tiny, batch):
    from ldp.diffusion import DiffusionConfig

    ids, _, inst = batch
    model = attach(tiny, num_steps=30, share="nested").train()
    model.calibrate([{"input_ids": ids, "response_mask": ~inst, "instruction_mask": inst}],
                    DiffusionConfig(num_steps=30))
    assert model.phase_modules()["late"].h_shift.abs().sum() > 0  # pooled over the phases
    randomise(model)
    model.hidden_states(ids, steps=torch.tensor([2, 5]), instruction_mask=inst).pow(2).sum().backward()
    grad = model.phase_modules()["late"].lora_B.grad[0]  # (k, r, d + d_t); late uses 2 units
    assert grad[:, :2].abs().sum() > 0 and torch.equal(grad[:, 2:], torch.zeros_like(grad[:, 2:]))
    ranks = model.effective_rank()
    module = model.phase_modules()["middle"]
    ref = [
        effective_rank_of(module.lora_A[0, i, :, :4].double() @ module.lora_B[0, i, :4].double())
        for i in range(2)
    ]
    assert ranks["middle"] == pytest.approx(sum(ref) / 2, rel=1e-6)
    assert ranks["late"] <= 2.0 < ranks["early"]
