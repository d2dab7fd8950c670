import copy

import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate

from fingpt.model import GPT, GPTConfig
from fingpt.optim import ORTHOGONALIZERS, Muon, MuonAdamW, adamw, muon, orthogonalize, parameter_groups
from tests.helpers import compose

SIZE = dict(vocab_size=64, block_size=16, n_embd=32, n_head=2, n_layer=2, dropout=0.0)


def names(model: GPT, params) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_muon_gets_the_blocks_matrices_and_adamw_everything_else_by_name():
    model = GPT(GPTConfig(**SIZE, pos_emb="learned", tie_weights=False, qk_norm=True, norm="rmsnorm"))
    optimizer = muon(model)
    muon_group, embeddings, vectors = optimizer.param_groups
    assert names(model, muon_group["params"]) == {
        f"blocks.{i}.{layer}.weight"
        for i in range(2)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert names(model, embeddings["params"]) == {"wte.weight", "wpe.weight", "lm_head.weight"}
    assert names(model, vectors["params"]) == {
        "ln_f.weight",
        "lm_head.bias",
        *(f"blocks.{i}.{n}.{p}" for i in range(2) for n in ("ln_1", "ln_2") for p in ("weight",)),
        *(f"blocks.{i}.attn.{n}.weight" for i in range(2) for n in ("q_norm", "k_norm")),
        *(
            f"blocks.{i}.{layer}.bias"
            for i in range(2)
            for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        ),
    }
    assert optimizer.muon.param_groups == [muon_group]  # the inner optimizers see the same groups
    assert optimizer.adamw.param_groups == [embeddings, vectors]


def test_a_tied_head_is_one_embedding_and_every_parameter_is_in_exactly_one_group():
    model = GPT(GPTConfig(**SIZE, pos_emb="rope", bias=False))
    groups = parameter_groups(model)
    assert names(model, groups["embeddings"]) == {"wte.weight"}  # rope: no position table
    everything = [p for params in groups.values() for p in params]
    assert len(everything) == len({id(p) for p in everything}) == len(list(model.parameters()))


def test_adamw_decays_matrices_and_embeddings_not_vectors():
    model = GPT(GPTConfig(**SIZE))
    decayed, others = adamw(model, weight_decay=0.1).param_groups
    assert (decayed["weight_decay"], others["weight_decay"]) == (0.1, 0.0)
    assert names(model, decayed["params"]) == {n for n, p in model.named_parameters() if p.dim() == 2}
    assert all(p.dim() == 1 for p in others["params"])


def steps(model: GPT, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
    for batch in batches:
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_muon_adamw_continues_exactly_from_its_state_dict_and_follows_a_scheduler():
    torch.manual_seed(0)
    batches = [torch.randint(0, 64, (4, 17)) for _ in range(6)]
    model = GPT(GPTConfig(**SIZE, pos_emb="rope", bias=False)).train()
    optimizer = muon(model, lr=0.02, adamw_lr=3e-3)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # sets the groups' rates
    steps(model, optimizer, batches[:3])
    # the scheduler's rate reaches both inner optimizers, which keep their own state
    assert optimizer.muon.param_groups[0]["lr"] == 0.01 and optimizer.adamw.param_groups[0]["lr"] == 1.5e-3
    assert "momentum_buffer" in optimizer.state[optimizer.muon.param_groups[0]["params"][0]]
    assert "exp_avg_sq" in optimizer.state[model.wte.weight]

    resumed_model = copy.deepcopy(model)
    resumed = muon(resumed_model, lr=0.02, adamw_lr=3e-3)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert isinstance(resumed, MuonAdamW) and resumed.muon.param_groups[0]["lr"] == 0.01
    steps(model, optimizer, batches[3:])
    steps(resumed_model, resumed, batches[3:])
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_muon_steps_as_torch_optim_muon_does_in_bfloat16():
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(shape)) for shape in ((96, 32), (32, 32), (96, 32), (32, 128))]
    theirs = copy.deepcopy(ours)
    mine = Muon(ours, lr=0.01, weight_decay=0.1, ns_dtype="bfloat16")
    reference = torch.optim.Muon(theirs, lr=0.01, weight_decay=0.1, adjust_lr_fn="original")
    for _ in range(3):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        mine.step()
        reference.step()
    for a, b in zip(ours, theirs, strict=True):  # same shapes batched together: the same numbers
        assert torch.equal(a, b)


@pytest.mark.parametrize("orthogonalizer", sorted(ORTHOGONALIZERS))
def test_orthogonalize_brings_every_singular_value_near_one(orthogonalizer):
    torch.manual_seed(0)
    updates = torch.randn(3, 96, 32) * torch.logspace(-1, 0, 32)  # tall, singular values 10x apart
    singular = torch.linalg.svdvals(orthogonalize(updates, orthogonalizer, torch.float32))
    assert singular.shape == (3, 32)
    assert 0.6 < singular.min() and singular.max() < 1.2
    wide = orthogonalize(updates.mT, orthogonalizer, torch.float32)
    assert torch.allclose(wide, orthogonalize(updates, orthogonalizer, torch.float32).mT)


def test_muon_refuses_an_unknown_choice_by_name():
    with pytest.raises(
        ValueError, match="optimizer.orthogonalizer must be one of newton_schulz, polar_express"
    ):
        muon(GPT(GPTConfig(**SIZE)), orthogonalizer="svd")


def test_a_state_dict_of_torch_optim_muon_groups_resumes_with_the_defaults():
    model = GPT(GPTConfig(**SIZE, pos_emb="rope", bias=False))
    optimizer = muon(model, orthogonalizer="polar_express")
    state = copy.deepcopy(optimizer.state_dict())
    for key in ("orthogonalizer", "ns_dtype"):  # what torch.optim.Muon's groups did not have
        del state["param_groups"][0][key]
    optimizer.load_state_dict(state)
    assert optimizer.muon.param_groups[0]["orthogonalizer"] == "polar_express"
    steps(model, optimizer, [torch.randint(0, 64, (2, 17))])


@pytest.mark.parametrize(
    ("override", "kind"), [("optimizer=adamw", torch.optim.AdamW), ("optimizer=muon", MuonAdamW)]
)
def test_the_optimizer_group_builds_what_it_names(override, kind):
    optimizer = instantiate(compose("train", [override]).optimizer)(GPT(GPTConfig(**SIZE)))
    assert type(optimizer) is kind


@pytest.mark.parametrize("override", ["scheduler=cosine", "scheduler=wsd"])
def test_each_schedule_warms_up_then_ends_at_its_floor(override):
    cfg = compose("train", [override]).scheduler
    schedule = instantiate(cfg)
    assert schedule(0, 0.0) == pytest.approx(1 / cfg.warmup_steps)
    assert schedule(cfg.warmup_steps, 0.05) > 0.95
    assert schedule(10**6, 1.0) == pytest.approx(cfg.min_lr_ratio)
