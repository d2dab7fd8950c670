import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fingpt.loss
import fingpt.model
from fingpt.model import GPT, GPTConfig, apply_rotary, rotary
from tests.helpers import compose

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "conf/model").glob("*.yaml"))  # not layout/
TEST_SIZE = dict(vocab_size=64, block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.0)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**(TEST_SIZE | overrides))).eval()


@functools.cache
def preset_config(name: str) -> dict:
    """conf/model/NAME as training composes it (its layout included)."""
    return OmegaConf.to_container(compose("train", [f"model={name}"]).model)


def preset(name: str, **overrides) -> GPT:
    """A conf/model preset's layout (positions, norms, MLP, ...) at the test size."""
    layout = preset_config(name)
    layout = {
        k: v for k, v in layout.items() if k not in {"_target_", "block_size", "n_embd", "n_head", "n_layer"}
    }
    model = tiny(**(layout | {"dropout": 0.0} | overrides))
    if model.config.zero_init_proj:  # start from random projections: zeros would hide mistakes
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, std=0.02)
    return model


def pattern(text: str) -> str:
    return "".join("\\" + c if c in "()[]" else c for c in text)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_embd", 100, "n_embd (100) must be divisible by n_head (6)"),
        ("dropout", 1.0, "dropout must be in [0, 1)"),
        ("vocab_size", 0, "vocab_size must be a positive integer"),
        ("n_layer", -1, "n_layer must be a positive integer"),
        ("mlp", "tanh", "mlp must be one of ['gelu', 'relu', 'relu2', 'swiglu'], got 'tanh'"),
        ("pos_emb", "alibi", "pos_emb must be one of ['learned', 'rope'], got 'alibi'"),
        ("norm", "batchnorm", "norm must be one of ['layernorm', 'rmsnorm'], got 'batchnorm'"),
        ("logit_softcap", 0.0, "logit_softcap must be positive or null, got 0.0"),
        ("rope_base", -1.0, "rope_base must be positive, got -1.0"),
    ],
)
def test_config_is_validated_with_a_message_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=pattern(f"GPTConfig.{message}")):
        GPTConfig(**{field: value, "n_head": 6})


def test_rotary_positions_need_an_even_head_size():
    with pytest.raises(ValueError, match="pos_emb=rope needs an even head size, got 5"):
        GPTConfig(n_embd=20, n_head=4, pos_emb="rope")


def test_a_config_without_the_new_fields_is_the_gpt2_layout_as_before():
    """What config.json of a bundle exported before the layout options held."""
    old = dict(TEST_SIZE, bias=True, qkv_bias=True, activation="gelu", tie_weights=True)
    config = GPTConfig(**old)
    assert (config.mlp, config.pos_emb, config.norm, config.qk_norm) == (
        "gelu",
        "learned",
        "layernorm",
        False,
    )
    assert (config.zero_init_proj, config.logit_softcap, config.activation) == (False, None, None)
    assert GPTConfig(**config.to_dict()) == config  # and it round-trips through config.json
    assert GPTConfig(**dict(old, activation="relu")).mlp == "relu"  # the lecture layout's name
    with pytest.raises(ValueError, match="activation is the old name of mlp, set only mlp"):
        GPTConfig(activation="relu", mlp="swiglu")


def test_karpathys_char_lecture_layout_counts_10_715_998_parameters():
    config = GPTConfig(
        vocab_size=94,
        block_size=8,
        n_embd=384,
        n_head=6,
        n_layer=6,
        dropout=0.2,
        mlp="relu",
        bias=True,
        qkv_bias=False,
        tie_weights=False,
    )
    assert GPT(config).num_parameters() == 10_715_998


def test_tied_head_shares_the_embedding_and_is_counted_once():
    tied, untied = tiny(tie_weights=True), tiny(tie_weights=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.lm_head.bias is None  # as in GPT-2; an untied one has one, as in the lecture model
    assert untied.num_parameters() - tied.num_parameters() == 64 * 32 + 64


@pytest.mark.parametrize(
    ("size", "count"),
    [
        ("tiny", 1_246_272),
        ("small", 13_891_584),
        ("medium", 29_676_544),
        ("gpt2", 92_133_888),
        ("modern_tiny", 1_836_416),
        ("modern_small", 13_768_320),
    ],
)
def test_named_sizes_count_what_the_docs_say(size, count):
    config = instantiate(preset_config(size), vocab_size=8192)
    assert GPT(config).num_parameters() == count
    assert f"{count:,}" in (ROOT / "docs" / "training.md").read_text()


def test_gpt2_size_with_gpt2_vocabulary_counts_124m():
    config = instantiate(preset_config("gpt2"), vocab_size=50257)
    assert GPT(config).num_parameters() == 124_439_808  # GPT-2 small's count


def test_gpt2_initialisation_scales_residual_projections_and_zero_init_zeroes_them():
    model = tiny(n_embd=256, n_layer=8, vocab_size=512)
    assert model.blocks[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].attn.c_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    zero = tiny(zero_init_proj=True)
    for block in zero.blocks:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        x = torch.randn(2, 5, 32)
        torch.testing.assert_close(block(x), x)  # each block starts as the identity


# --- each option against its definition --------------------------------------------------------


def test_rotary_turns_each_pair_of_a_head_as_a_complex_number_by_position_times_frequency():
    x = torch.randn(2, 7, 3, 8)  # (batch, position, head, head size)
    positions = torch.arange(7)
    rotated = apply_rotary(x, *rotary(positions, head_size=8, base=500.0))
    # pairs (x[i], x[i + 4]) as complex numbers, turned by position / 500 ** (2i / 8)
    z = torch.complex(x[..., :4].double(), x[..., 4:].double())
    frequencies = 500.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = positions[:, None, None] * frequencies
    expected = z * torch.polar(torch.ones_like(angles), angles)
    torch.testing.assert_close(rotated, torch.cat([expected.real, expected.imag], dim=-1).float())


def test_rotary_scores_depend_on_relative_position_only_even_far_past_the_block():
    q, k = torch.randn(2, 1, 1, 16).unbind(0)

    def score(m: int, n: int) -> float:
        rq = apply_rotary(q, *rotary(torch.tensor([m]), 16, 10000.0))
        rk = apply_rotary(k, *rotary(torch.tensor([n]), 16, 10000.0))
        return float((rq * rk).sum())

    assert score(9, 4) == pytest.approx(score(5, 0), abs=1e-5)
    assert score(10**7 + 9, 10**7 + 4) == pytest.approx(score(5, 0), abs=1e-5)  # float64 angles


def test_rmsnorm_is_x_over_its_root_mean_square_times_a_weight():
    model = tiny(norm="rmsnorm", qk_norm=True)
    norm = model.blocks[0].ln_1
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 32)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    q_norm = model.blocks[0].attn.q_norm  # qk_norm: the same over each head's 8 dimensions
    heads = torch.randn(3, 5, 4, 8)
    torch.testing.assert_close(q_norm(heads), heads / torch.sqrt(heads.pow(2).mean(-1, keepdim=True) + 1e-5))


@pytest.mark.parametrize(
    ("kind", "definition"),
    [
        ("gelu", lambda h: F.gelu(h)),
        ("relu", lambda h: F.relu(h)),
        ("relu2", lambda h: F.relu(h) ** 2),
        ("swiglu", lambda h: F.silu(h[..., : h.shape[-1] // 2]) * h[..., h.shape[-1] // 2 :]),
    ],
)
def test_each_mlp_is_its_definition(kind, definition):
    mlp = tiny(mlp=kind).blocks[0].mlp
    x = torch.randn(3, 5, 32)
    expected = definition(x @ mlp.c_fc.weight.T + mlp.c_fc.bias) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.parametrize("n_embd", [96, 128, 384, 768])
def test_swiglu_has_the_parameters_of_the_4x_mlp_within_2_percent(n_embd):
    config = GPTConfig(n_embd=n_embd, n_head=4, mlp="swiglu", bias=False)
    swiglu = sum(p.numel() for p in fingpt.model.MLP(config).parameters())
    assert config.mlp_hidden % 16 == 0
    assert swiglu == pytest.approx(8 * n_embd**2, rel=0.02)


def test_logit_softcap_is_cap_times_tanh_of_the_logits_over_cap():
    idx = torch.randint(0, 64, (2, 9))
    raw, _ = tiny(tie_weights=False)(idx)  # an untied head: its logits can be large
    capped, _ = tiny(tie_weights=False, logit_softcap=0.05)(idx)
    torch.testing.assert_close(capped, 0.05 * torch.tanh(raw / 0.05))
    assert capped.abs().max() < 0.05


# --- the loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [{}, {"tie_weights": False, "logit_softcap": 3.0}])
def test_the_chunked_loss_and_its_gradients_equal_cross_entropy_over_full_logits(layout, monkeypatch):
    monkeypatch.setattr(fingpt.loss, "loss_chunk_rows", lambda *_: 7)  # ragged chunks
    model = tiny(**layout).train()
    idx, targets = torch.randint(0, 64, (2, 2, 16)).unbind(0)
    targets[:, 10:] = -100
    _, loss = model(idx, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits, _ = model(idx)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # validation's path computes no gradients and the same loss
        torch.testing.assert_close(model(idx, targets)[1], loss)


# --- attention and the KV cache, for every preset's layout ----------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_changing_later_tokens_never_changes_earlier_logits(name):
    model = preset(name)
    idx = torch.randint(0, 64, (2, 32))
    logits, _ = model(idx)
    for t in (0, 7, 30):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, 64, (2, 31 - t))
        other, _ = model(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])


def test_targets_of_minus_100_are_ignored():
    model = tiny()
    idx = torch.randint(0, 64, (2, 16))
    targets = torch.randint(0, 64, (2, 16))
    _, full = model(idx, targets)
    masked = targets.clone()
    masked[:, 8:] = -100
    _, loss = model(idx, masked)
    logits, _ = model(idx)
    expected = F.cross_entropy(logits[:, :8].reshape(-1, 64), targets[:, :8].reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, full)


def test_forward_refuses_sequences_longer_than_the_block():
    with pytest.raises(ValueError, match="exceeds block_size 32"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))


def sliding_window_forward(model: GPT, ids: list[int], monkeypatch) -> torch.Tensor:
    """Logits of a rotary model over a whole sequence longer than its block, each query seeing
    only the last block_size tokens: what a KV cache that slides token by token computes."""
    window, sdpa = model.config.block_size, F.scaled_dot_product_attention

    def banded(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        i = torch.arange(q.shape[-2])
        return sdpa(q, k, v, attn_mask=(i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window))

    with monkeypatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", banded)
        x = model.wte(torch.tensor([ids]))
        rope = rotary(torch.arange(len(ids)), model.config.head_size, model.config.rope_base)
        for block in model.blocks:
            x = block(x, rope)
        return model._logits(model.ln_f(x))[0]


@pytest.mark.parametrize("name", PRESETS)
@torch.no_grad()
def test_cached_decoding_equals_a_full_forward_across_the_window_boundary(name, monkeypatch):
    """Learned positions: the cache is refilled when it slides, and equals a full forward over
    the tokens it holds. Rotary positions: the cache slides a token at a step, and equals a full
    forward in which every token attends to its last block_size tokens (with more than one layer
    that is not a forward over the held tokens alone: a held key was computed from tokens that
    have left the window since)."""
    model = preset(name)
    block_size = model.config.block_size
    rope = model.config.pos_emb == "rope"
    prompts = [[1, 2, 3], list(range(5, 16)), list(range(40, 63))]
    sequences = [list(p) for p in prompts]
    cache = model.new_cache(3)
    rows = torch.arange(3)
    logits = model.prefill(cache, rows, prompts)
    slid = 0
    for step in range(65):
        for r, seq in enumerate(sequences):
            context = cache.context(r)
            assert context == seq[-len(context) :]  # the cache holds the newest tokens
            if rope:
                assert len(context) == min(len(seq), block_size)
                expected = sliding_window_forward(model, seq, monkeypatch)[-1]
            else:
                assert block_size - block_size // 4 < len(context) <= block_size or len(seq) <= block_size
                expected = model(torch.tensor([context]))[0][0, -1]
            torch.testing.assert_close(logits[r], expected, rtol=0, atol=2e-5)
            if len(seq) <= block_size:  # before any slide both are a forward over the tokens held
                torch.testing.assert_close(logits[r], model(torch.tensor([seq]))[0][0, -1], rtol=0, atol=2e-5)
        if step == 64:
            break
        next_tokens = torch.randint(0, 64, (3,))
        for seq, token in zip(sequences, next_tokens.tolist(), strict=True):
            seq.append(token)
        slid += int((cache.lengths == block_size).sum())
        logits = model.decode(cache, rows, next_tokens)
    assert all(len(s) > block_size + block_size // 2 for s in sequences)
    assert slid >= 3  # every row crossed the window boundary at least once


@pytest.mark.parametrize("name", ["tiny", "modern_tiny"])
@torch.no_grad()
def test_prefill_keeps_the_last_block_of_a_long_prompt(name):
    model = preset(name)
    prompt = torch.randint(0, 64, (50,)).tolist()
    cache = model.new_cache(1)
    logits = model.prefill(cache, torch.tensor([0]), [prompt])
    full, _ = model(torch.tensor([prompt[-32:]]))
    torch.testing.assert_close(logits[0], full[0, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "modern_tiny"])
@torch.no_grad()
def test_rows_that_are_not_neighbours_decode_like_alone(name):
    model = preset(name)
    cache = model.new_cache(4)
    prompts = {0: [1, 2, 3], 2: list(range(10, 30)), 3: [7]}
    logits = model.prefill(cache, torch.tensor([0, 2]), [prompts[0], prompts[2]])
    logits = torch.cat([logits, model.prefill(cache, torch.tensor([3]), [prompts[3]])])
    rows = torch.tensor([0, 2, 3])
    for _ in range(10):
        for i, r in enumerate(rows.tolist()):
            full, _ = model(torch.tensor([cache.context(r)]))
            torch.testing.assert_close(logits[i], full[0, -1], rtol=0, atol=1e-5)
        logits = model.decode(cache, rows, torch.randint(0, 64, (3,)))
    assert cache.lengths[1] == 0  # the row between them was never touched


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_overfits_one_batch(name):
    model = preset(name).train()
    torch.manual_seed(0)
    batch = torch.randint(0, 64, (4, 33))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 3.5 and losses[-1] < 0.1  # from ln(64) = 4.2, chance
