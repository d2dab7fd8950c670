import pytest
import torch

from fingpt.generation import Sampler, SamplingParams, TextStream, generate, sample, stream
from fingpt.model import GPT, GPTConfig
from fingpt.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def model(bpe):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=bpe.vocab_size, block_size=32, n_embd=32, n_head=4, n_layer=2)
    return GPT(config).eval()


def settings(batch, temperature=1.0, top_k=0, top_p=1.0):
    return dict(
        temperature=torch.full((batch,), temperature),
        top_k=torch.full((batch,), top_k),
        top_p=torch.full((batch,), top_p),
    )


def test_top_k_1_and_temperature_0_are_greedy():
    logits = torch.randn(5, 100)
    uniform = torch.rand(5)
    greedy = logits.argmax(-1)
    assert torch.equal(sample(logits, uniform=uniform, **settings(5, temperature=0.0)), greedy)
    assert torch.equal(sample(logits, uniform=uniform, **settings(5, top_k=1)), greedy)


def test_a_rows_token_does_not_depend_on_what_its_neighbours_cut():
    logits, uniform = torch.randn(64, 100), torch.rand(64)
    plain = sample(logits, uniform=uniform, **settings(64))
    for cut in ({"top_k": 5}, {"top_p": 0.5}):
        mixed = {name: value.clone() for name, value in settings(64).items()}
        mixed[next(iter(cut))][1::2] = next(iter(cut.values()))  # every other row cuts
        assert torch.equal(sample(logits, uniform=uniform, **mixed)[0::2], plain[0::2])


def test_a_tiny_temperature_is_greedy_not_nan():
    logits = torch.randn(8, 100) * 10
    chosen = sample(logits, uniform=torch.rand(8), **settings(8, temperature=1e-40))
    assert torch.equal(chosen, logits.argmax(-1))


def test_top_k_keeps_only_the_k_most_likely_tokens():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.15, 0.1]])).expand(200, -1)
    chosen = sample(logits, uniform=torch.linspace(0, 0.999, 200), **settings(200, top_k=3))
    assert set(chosen.tolist()) == {1, 2, 3}


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.4, {1}), (0.7, {1, 2}), (0.71, {1, 2, 3}), (1.0, {0, 1, 2, 3, 4})]
)
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(top_p, kept):
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.15, 0.1]])).expand(500, -1)
    chosen = sample(logits, uniform=torch.linspace(0, 0.999, 500), **settings(500, top_p=top_p))
    assert set(chosen.tolist()) == kept


def test_stream_holds_back_split_characters_until_complete(bpe):
    ids = bpe.encode("Revenue 📈")
    assert len(ids) > 3  # the emoji is spread over byte tokens
    text_stream = TextStream(bpe)
    deltas = [text_stream.push(i) for i in ids] + [text_stream.finish()]
    assert "".join(deltas) == "Revenue 📈"
    assert "📈" in deltas and "\ufffd" not in "".join(deltas)


def test_stop_strings_are_cut_and_their_prefixes_held_back():
    tok = CharTokenizer.train(["Operator: next question. Analyst: thanks"])
    text_stream = TextStream(tok, stop=["Analyst:", "zz"])
    deltas = [text_stream.push(i) for i in tok.encode("next question. Analyst: thanks")]
    assert "".join(deltas) == "next question. "
    assert text_stream.stopped
    assert all("A" not in d for d in deltas)  # 'Analyst:' was never partly shown
    # a prefix of a stop string that never completes is released at the end
    text_stream = TextStream(tok, stop=["Analyst:"])
    deltas = [text_stream.push(i) for i in tok.encode("thanks Anal")]
    assert "".join(deltas) == "thanks "
    assert text_stream.finish() == "Anal"


def test_generation_stops_at_a_stop_string(model, bpe):
    params = SamplingParams(max_new_tokens=40, seed=3)
    (free,) = generate(model, bpe, ["Operator: Good day"], params)
    assert free.finish_reason == "length" and len(free.tokens) == 40
    stop = free.text[10:13]
    (stopped,) = generate(
        model, bpe, ["Operator: Good day"], SamplingParams(max_new_tokens=40, seed=3, stop=[stop])
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]


def test_a_seeded_row_gives_the_same_text_alone_or_batched(model, bpe):
    params = SamplingParams(max_new_tokens=48, temperature=0.9, top_k=50, top_p=0.95, seed=1234)
    (alone,) = generate(model, bpe, ["The CFO said revenue"], params)
    batched = generate(
        model,
        bpe,
        ["Operator: Welcome", "The CFO said revenue", "Q3"],
        [
            SamplingParams(max_new_tokens=60, seed=7),
            params,
            SamplingParams(max_new_tokens=5, temperature=0),
        ],
    )
    assert batched[1].tokens == alone.tokens and batched[1].text == alone.text
    assert batched[0].tokens != alone.tokens


def test_a_row_that_joins_a_running_batch_gets_the_same_text(model, bpe):
    params = SamplingParams(max_new_tokens=40, seed=99)
    (alone,) = generate(model, bpe, ["Guidance for the year"], params)
    sampler = Sampler(model, bpe, max_batch_size=4)
    sampler.add("Operator: Welcome", SamplingParams(max_new_tokens=80, seed=1))
    for _ in range(7):
        sampler.step()
    row = sampler.add("Guidance for the year", params)
    tokens = []
    while row in sampler.rows:
        tokens.append(sampler.step()[row].token)
    assert tokens == alone.tokens


def test_streamed_deltas_concatenate_to_the_full_text(model, bpe):
    params = SamplingParams(max_new_tokens=64, seed=5)
    (full,) = generate(model, bpe, ["Revenue"], params)
    deltas = list(stream(model, bpe, "Revenue", params))
    assert "".join(deltas) == full.text
    assert all(deltas)  # only text, never an empty delta (split characters: the test above)


def test_generation_past_the_context_window_never_errors(model, bpe):
    (long,) = generate(model, bpe, ["x" * 100], SamplingParams(max_new_tokens=100, seed=0))
    assert len(long.tokens) == 100 and long.finish_reason == "length"


def test_an_empty_prompt_starts_a_new_document(model, bpe):
    (out,) = generate(model, bpe, [""], SamplingParams(max_new_tokens=4, temperature=0))
    with torch.no_grad():
        logits, _ = model(torch.tensor([[bpe.eot_id]]))
    assert out.tokens[0] == logits[0, -1].argmax().item()


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", 0)],
)
def test_sampling_params_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        SamplingParams(stop=[""])


def sample_by_full_sort(logits, temperature, top_k, top_p, uniform):
    """The sampler as first written (every row's whole vocabulary sorted): the reference."""
    logits = logits.float()
    greedy = temperature == 0
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    probs = torch.softmax(shifted / torch.where(greedy, 1.0, temperature)[:, None], dim=-1)
    cdf = probs.cumsum(dim=-1)
    plain = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    rank = torch.arange(probs.shape[-1])
    keep = ((top_k[:, None] == 0) | (rank < top_k[:, None])) & (
        sorted_probs.cumsum(dim=-1) - sorted_probs < top_p[:, None]
    )
    keep[:, 0] = True
    cdf = (sorted_probs * keep).cumsum(dim=-1)
    choice = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
    cut = order.gather(-1, choice)
    sampled = torch.where(((top_k > 0) | (top_p < 1))[:, None], cut, plain).squeeze(-1)
    return torch.where(greedy, logits.argmax(dim=-1), sampled)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bfloat16 logits tie often
def test_the_sampler_picks_exactly_what_a_full_sort_picks(dtype):
    torch.manual_seed(0)
    rows = 64
    logits = (torch.randn(rows, 8192) * 3).to(dtype)
    row_settings = dict(
        temperature=torch.tensor([0.0, 0.7, 1.0, 1.3] * (rows // 4)),
        top_k=torch.tensor([0, 1, 50, 200, 0, 8192, 7, 40] * (rows // 8)),
        top_p=torch.tensor([1.0, 0.9, 1.0, 0.5, 0.95, 1.0, 0.3, 1.0] * (rows // 8)).roll(3),
    )
    for _ in range(8):
        uniform = torch.rand(rows)
        for batch in (slice(None), slice(2, 3), slice(4, 8)):  # mixed rows; one cutting row; top-k rows
            chosen = sample(
                logits[batch], uniform=uniform[batch], **{k: v[batch] for k, v in row_settings.items()}
            )
            expected = sample_by_full_sort(
                logits[batch], uniform=uniform[batch], **{k: v[batch] for k, v in row_settings.items()}
            )
            assert torch.equal(chosen, expected)


def peaked(model: GPT) -> GPT:
    """A copy whose next-token distributions are spread as a trained model's are."""
    model = GPT(model.config).eval()
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    with torch.no_grad():
        model.wte.weight.mul_(10)
    return model


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_cached_decoding_gives_the_tokens_of_the_plain_forward(bpe, pos_emb):
    """Greedy and seeded sampling, one row alone and rows of different lengths batched, within
    the block: every token is the one the uncached forward over the row's text, sampled as the
    full-sort sampler does with the row's own draws, would give."""
    torch.manual_seed(1)
    model = peaked(
        GPT(
            GPTConfig(
                vocab_size=bpe.vocab_size, block_size=48, n_embd=32, n_head=4, n_layer=2, pos_emb=pos_emb
            )
        )
    )
    prompts = ["Revenue", "Operator: Good day and welcome to the call", "Q3"]
    params = [
        SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True),
        SamplingParams(max_new_tokens=30, temperature=0.8, top_k=50, top_p=0.95, seed=11, ignore_eos=True),
        SamplingParams(max_new_tokens=30, temperature=1.0, seed=12, ignore_eos=True),
    ]

    def reference(prompt: str, p: SamplingParams) -> list[int]:
        ids, generator = bpe.encode(prompt), torch.Generator().manual_seed(p.seed or 0)
        for _ in range(p.max_new_tokens):
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[0][:, -1]
            settings = dict(
                temperature=torch.tensor([p.temperature]),
                top_k=torch.tensor([p.top_k]),
                top_p=torch.tensor([p.top_p]),
            )
            ids.append(
                int(sample_by_full_sort(logits, uniform=torch.rand((1,), generator=generator), **settings))
            )
        return ids[len(bpe.encode(prompt)) :]

    expected = [reference(prompt, p) for prompt, p in zip(prompts, params, strict=True)]
    for prompt, p, tokens in zip(prompts, params, expected, strict=True):
        assert generate(model, bpe, [prompt], p)[0].tokens == tokens
    assert [c.tokens for c in generate(model, bpe, prompts, params)] == expected
