import math
from pathlib import Path

import pytest
import torch

from fingpt.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides) -> GPT:
    config = dict(vocab_size=64, block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.0)
    torch.manual_seed(0)
    return GPT(GPTConfig(**(config | overrides))).eval()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_embd", 100, "n_embd (100) must be divisible by n_head (6)"),
        ("dropout", 1.0, "dropout must be in [0, 1)"),
        ("vocab_size", 0, "vocab_size must be a positive integer"),
        ("n_layer", -1, "n_layer must be a positive integer"),
        ("activation", "tanh", "activation must be one of"),
    ],
)
def test_config_is_validated_with_a_message_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        GPTConfig(**{field: value, "n_head": 6})


def test_the_original_layout_counts_10_715_998_parameters():
    config = GPTConfig(
        vocab_size=94,
        block_size=8,
        n_embd=384,
        n_head=6,
        n_layer=6,
        dropout=0.2,
        activation="relu",
        bias=True,
        qkv_bias=False,
        tie_weights=False,
    )
    assert GPT(config).num_parameters() == 10_715_998


def test_tied_head_shares_the_embedding_and_is_counted_once():
    tied, untied = tiny(tie_weights=True), tiny(tie_weights=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.lm_head.bias is None  # as in GPT-2; an untied head has one, as in the original
    assert untied.num_parameters() - tied.num_parameters() == 64 * 32 + 64


@pytest.mark.parametrize(
    ("size", "count"),
    [("tiny", 1_246_272), ("small", 13_891_584), ("medium", 29_676_544), ("gpt2", 92_133_888)],
)
def test_named_sizes_count_what_the_readme_says(size, count):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = instantiate(OmegaConf.load(ROOT / f"conf/model/{size}.yaml"), vocab_size=8192)
    assert GPT(config).num_parameters() == count
    assert f"{count:,}" in (ROOT / "README.md").read_text()


def test_gpt2_size_with_gpt2_vocabulary_counts_124m():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = instantiate(OmegaConf.load(ROOT / "conf/model/gpt2.yaml"), vocab_size=50257)
    assert GPT(config).num_parameters() == 124_439_808  # GPT-2 small's count


def test_gpt2_initialisation_scales_residual_projections():
    model = tiny(n_embd=256, n_layer=8, vocab_size=512)
    assert model.blocks[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].attn.c_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_changing_later_tokens_never_changes_earlier_logits():
    model = tiny()
    idx = torch.randint(0, 64, (2, 32))
    logits, _ = model(idx)
    for t in (0, 7, 30):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, 64, (2, 31 - t))
        other, _ = model(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])


def test_targets_of_minus_100_are_ignored():
    model = tiny()
    idx = torch.randint(0, 64, (2, 16))
    targets = torch.randint(0, 64, (2, 16))
    _, full = model(idx, targets)
    masked = targets.clone()
    masked[:, 8:] = -100
    logits, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, :8].reshape(-1, 64), targets[:, :8].reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, full)


def test_forward_refuses_sequences_longer_than_the_block():
    with pytest.raises(ValueError, match="exceeds block_size 32"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))


@torch.no_grad()
def test_cached_decoding_equals_full_recomputation_across_the_sliding_window():
    model = tiny()
    block = model.config.block_size
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
            assert block - block // 4 < len(context) <= block or len(seq) <= block
            full, _ = model(torch.tensor([context]))
            torch.testing.assert_close(logits[r], full[0, -1], rtol=0, atol=1e-5)
        if step == 64:
            break
        next_tokens = torch.randint(0, 64, (3,))
        for seq, token in zip(sequences, next_tokens.tolist(), strict=True):
            seq.append(token)
        slid += int((cache.lengths == block).sum())
        logits = model.decode(cache, rows, next_tokens)
    assert all(len(s) > block + block // 2 for s in sequences)
    assert slid >= 3  # every row crossed the window boundary at least once


@torch.no_grad()
def test_prefill_keeps_the_last_block_of_a_long_prompt():
    model = tiny()
    prompt = torch.randint(0, 64, (50,)).tolist()
    cache = model.new_cache(1)
    logits = model.prefill(cache, torch.tensor([0]), [prompt])
    full, _ = model(torch.tensor([prompt[-32:]]))
    torch.testing.assert_close(logits[0], full[0, -1], rtol=0, atol=1e-5)


def test_a_tiny_model_overfits_one_batch():
    model = tiny().train()
    torch.manual_seed(0)
    batch = torch.randint(0, 64, (4, 33))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


@torch.no_grad()
def test_rows_that_are_not_neighbours_decode_like_alone():
    model = tiny()
    cache = model.new_cache(4)
    prompts = {0: [1, 2, 3], 2: list(range(10, 30)), 3: [7]}
    logits = model.prefill(cache, torch.tensor([0, 2]), [prompts[0], prompts[2]])
    logits = torch.cat([logits, model.prefill(cache, torch.tensor([3]), [prompts[3]])])
    rows = torch.tensor([0, 2, 3])
    for _ in range(20):
        for i, r in enumerate(rows.tolist()):
            full, _ = model(torch.tensor([cache.context(r)]))
            torch.testing.assert_close(logits[i], full[0, -1], rtol=0, atol=1e-5)
        logits = model.decode(cache, rows, torch.randint(0, 64, (3,)))
    assert cache.lengths[1] == 0  # the row between them was never touched
