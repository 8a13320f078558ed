"""The router (Eqs. 21-22): shapes, softmax, per-phase output, save/load round trip, base check."""

from __future__ import annotations

import json

import pytest
import torch
from ldp.errors import IntegrityError, UsageError
from ldp.methods import base_fingerprint, get_method
from ldp.methods.compose import Composition
from ldp.methods.router import Router, load_router, task_id_loss

from .conftest import make_tiny

TASKS = ["sst2", "agnews", "trec"]


def trained(router: Router, enc: torch.Tensor, labels: torch.Tensor, steps: int = 60) -> Router:
    opt = torch.optim.AdamW(router.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = task_id_loss(router, enc, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return router


def clusters(n=30, d=32, seed=0):
    """Three separable clusters of small-scale 'encodings' (like mean-pooled base states)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, d, generator=g) * 0.05
    labels = torch.arange(3).repeat_interleave(n)
    return centres[labels] + torch.randn(3 * n, d, generator=g) * 0.02, labels


def test_weights_are_a_softmax_over_tasks():
    torch.manual_seed(0)
    r = Router(TASKS, 32, hidden=16)
    w = r(torch.randn(5, 32))
    assert w.shape == (5, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    p = Router(TASKS, 32, hidden=16, phases=["early", "middle", "late"])
    wp = p(torch.randn(5, 32))
    assert wp.shape == (5, 3, 3) and p.per_phase
    torch.testing.assert_close(wp.sum(-1), torch.ones(5, 3))


@pytest.mark.parametrize("phases", [None, ["early", "middle", "late"]])
def test_task_identification_is_learnt(phases):
    enc, labels = clusters()
    torch.manual_seed(0)
    r = Router(TASKS, 32, hidden=64, phases=phases)
    r.fit_input_stats(enc)
    before = float(task_id_loss(r, enc, labels))
    trained(r, enc, labels)
    assert float(task_id_loss(r, enc, labels)) < 0.1 * before
    held, held_labels = clusters(seed=0)  # same centres, fresh noise below
    g = torch.Generator().manual_seed(7)
    held = held + torch.randn(held.shape, generator=g) * 0.005
    assert (r.task_scores(held).argmax(-1) == held_labels).float().mean() > 0.95


def test_router_file_round_trips(tmp_path):
    enc, labels = clusters()
    torch.manual_seed(0)
    r = trained(Router(TASKS, 32, hidden=64, phases=["early", "middle", "late"], base_hash="abc"), enc, labels, 5)
    r.fit_input_stats(enc)
    folder = r.save(tmp_path / "router", base_name="bases/tiny@1", extra={"adapters": {"sst2": "x"}})
    meta = json.loads((folder / "router_config.json").read_text())
    assert meta["tasks"] == TASKS and meta["base_hash"] == "abc" and meta["adapters"] == {"sst2": "x"}
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    back = load_router(folder, base_hash="abc")
    assert back.tasks == TASKS and back.phases == ["early", "middle", "late"]
    assert torch.equal(back(enc), r.eval()(enc))
    with pytest.raises(UsageError, match="not on this base"):
        load_router(folder, base_hash="def")
    meta["hidden"] = 8
    (folder / "router_config.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError):
        load_router(folder)


def test_composition_uses_the_router_for_auto_weights():
    base = make_tiny()
    h = base_fingerprint(base)
    method = get_method("lora-diffusion")
    cfg = method.build_config({"ranks": [4, 4, 2], "time_embed_dim": 16, "num_steps": 30})
    adapters = {}
    for i, name in enumerate(TASKS):
        a = method.attach(base, cfg, base_hash=h)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in a.trainable_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        adapters[name] = a.eval()
    comp = Composition(base, adapters)
    router = Router(TASKS, base.hidden_size, hidden=8)
    comp.set_router(router)
    ids = torch.randint(4, 40, (2, 10))
    inst = torch.zeros(2, 10, dtype=torch.bool)
    inst[:, :4] = True
    t = torch.tensor([0.5, 0.9])
    hidden, steps, _ = comp.base_states(ids, t)
    w = router(comp.encoding(hidden, ids, inst))
    assert torch.equal(comp(ids, t, instruction_mask=inst, weights="auto"),
                       comp(ids, t, instruction_mask=inst, weights=w))
    with pytest.raises(UsageError, match="differ"):
        comp.set_router(Router(["a", "b", "c"], base.hidden_size))
