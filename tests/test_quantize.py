import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fingpt.generation import SamplingParams, generate
from fingpt.model import GPT, GPTConfig
from fingpt.quantize import Int8Linear, quantize_int8, to_dtype

SIZE = dict(vocab_size=512, block_size=32, n_embd=64, n_head=4, n_layer=2, dropout=0.0)


def model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**(SIZE | overrides))).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_an_int8_layer_is_within_the_error_its_rounding_allows(bias):
    """Each weight is off by at most half its row's step (scale / 2), the input is rounded to
    bfloat16 (2^-9 relative) and so is the output: bound the error of every output by those."""
    torch.manual_seed(0)
    linear = nn.Linear(384, 1152, bias=bias)
    layer = Int8Linear(linear)
    x = torch.randn(5, 384)
    with torch.no_grad():
        exact, y = linear(x), layer(x)
    scale = layer.scale.float()
    dequantized = layer.qweight.float() * scale[:, None]
    assert (dequantized - linear.weight).abs().max(dim=1).values.le(scale / 2 * (1 + 1e-3)).all()
    bound = (
        x.abs().sum(dim=1, keepdim=True) * scale / 2  # the weights' rounding
        + 2**-9 * x.abs() @ dequantized.abs().t()  # the input's
        + 2**-8 * (y - (0 if linear.bias is None else linear.bias)).abs()  # the output's
        + 1e-5
    )
    assert ((y - exact).abs() <= bound).all()
    assert (y - exact).abs().max() > 0  # it is int8 arithmetic, not the float layer


def test_every_linear_layer_and_the_tied_head_become_int8_and_the_embedding_stays_float():
    m = model()
    embedding = m.wte.weight.detach().clone()
    quantize_int8(m)
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    int8 = [mod for mod in m.modules() if isinstance(mod, Int8Linear)]
    assert not linears and len(int8) == 4 * SIZE["n_layer"] + 1 and isinstance(m.lm_head, Int8Linear)
    assert m.wte.weight.dtype == torch.float32 and torch.equal(m.wte.weight, embedding)
    assert m.lm_head.qweight.dtype == torch.int8 and m.lm_head.qweight.shape == embedding.shape


@pytest.mark.parametrize("layout", [{}, {"tie_weights": False}, {"pos_emb": "rope", "norm": "rmsnorm"}])
def test_int8_next_token_distributions_are_close_to_float32(layout):
    """What int8 costs in bits per byte is the extra log-loss, KL(float32 || int8) per token when
    the text follows the model. The goal allows 1% of a trained model's ~2.5 nats per token, 0.025:
    require a mean KL 25x below that (measured here: 3e-4), and no token's over 5e-3 (1.2e-3)."""
    m = model(**layout)
    with torch.no_grad():  # logits spread like a trained model's (a random one's are all near 0)
        for name, p in m.named_parameters():
            if name.endswith(".weight") and p.dim() == 2:
                p.mul_(8)
    q = quantize_int8(copy.deepcopy(m))
    x = torch.randint(0, SIZE["vocab_size"], (3, 32))
    with torch.no_grad():
        exact, approx = F.log_softmax(m(x)[0], -1), F.log_softmax(q(x)[0], -1)
    kl = (exact.exp() * (exact - approx)).sum(-1)
    assert kl.mean() < 1e-3 and kl.max() < 5e-3
    assert not torch.equal(exact, approx)


def test_an_int8_model_decodes_scores_and_takes_its_loss(bpe):
    m = quantize_int8(model(vocab_size=bpe.vocab_size))
    params = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    (out,) = generate(m, bpe, ["Revenue"], params)
    assert len(out.tokens) == 40  # past the block of 32: the cache slides
    x = torch.randint(0, bpe.vocab_size, (2, 16))
    with torch.no_grad():
        logits, _ = m(x)
        _, loss = m(x[:, :-1], x[:, 1:])
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    assert loss == pytest.approx(expected.item(), rel=0.01)  # the loss reads the dequantized head


def test_unsupported_dtypes_and_int8_off_a_cpu_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, int8, got 'int4'"):
        to_dtype(model(), "int4")
    with pytest.raises(ValueError, match="int8 runs on a CPU only"):
        quantize_int8(model().to("meta"))
    assert to_dtype(model(), "bfloat16").wte.weight.dtype == torch.bfloat16


def test_evaluate_scores_an_int8_model_and_refuses_an_unknown_dtype(trained_run, tmp_path):
    from fingpt.evaluate import evaluate
    from tests.helpers import compose

    (tmp_path / "call.txt").write_text(
        "Operator: Good day. Revenue was $1.48 billion, up 24.9% in Q3'24." * 4
    )
    args = [f"model_path={trained_run}", "data=local", f"data.path={tmp_path / 'call.txt'}"]
    exact, int8 = (evaluate(compose("evaluate", [*args, f"dtype={d}"])) for d in ("float32", "int8"))
    assert int8.tokens == exact.tokens and int8.bpb != exact.bpb
    assert int8.bpb == pytest.approx(exact.bpb, rel=0.01)
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, int8, got 'int4'"):
        evaluate(compose("evaluate", [*args, "dtype=int4"]))
