import math
import sys

import pytest
import torch
import torch.nn.functional as F

from fingpt.checkpoint import load_model
from fingpt.data.corpus import Corpus
from fingpt.evaluate import evaluate, main, score
from tests.helpers import compose

TEXT = "Operator: Good day. Revenue was $1.48 billion, up 24.9% in Q3'24."


def test_bpb_equals_the_value_computed_by_hand(trained_run):
    loaded = load_model(trained_run)
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = [tokenizer.eot_id, *tokenizer.encode(TEXT)]
    assert len(ids) <= model.config.block_size
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    nll = F.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum").item()
    result = score(model, tokenizer, [TEXT])
    assert result.bpb == pytest.approx(nll / math.log(2) / len(TEXT.encode()), rel=1e-5)
    assert result.tokens == len(ids) - 1 and result.bytes == len(TEXT.encode())
    assert result.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)


def test_a_long_call_is_scored_with_a_sliding_window(trained_run):
    loaded = load_model(trained_run)
    model, tokenizer = loaded.model, loaded.tokenizer
    block = model.config.block_size
    text = TEXT * 3
    ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    assert len(ids) > 2 * block
    nll = 0.0
    with torch.no_grad():  # stride 1: token p is predicted from the block_size tokens before it
        for p in range(1, len(ids)):
            context = ids[max(0, p - block) : p]
            logits, _ = model(torch.tensor([context]))
            nll += F.cross_entropy(logits[0, -1:], torch.tensor([ids[p]]), reduction="sum").item()
    result = score(model, tokenizer, [text], stride=1, batch_size=7)
    assert result.nll == pytest.approx(nll, rel=1e-5)


def test_evaluate_reads_any_corpus_with_the_models_tokenizer(trained_run, tmp_path):
    corpus = tmp_path / "calls"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT)
    (corpus / "b.txt").write_text("Analyst: What about margins?")
    cfg = compose(
        "evaluate", [f"model_path={trained_run}", "data=local", f"data.path={corpus}", "sample.tokens=5"]
    )
    result = evaluate(cfg)
    assert result.calls == 2 and result.bytes == len(TEXT.encode()) + len(b"Analyst: What about margins?")
    assert 0 < result.bpb < 20


def test_the_cli_takes_model_equals_path_and_prints_bpb(trained_run, tmp_path, capsys, monkeypatch):
    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["fingpt-evaluate", *args])
        with pytest.raises(SystemExit) as exit:
            main()
        return exit.value.code

    (tmp_path / "calls.txt").write_text(TEXT)
    calls = ["data=local", f"data.path={tmp_path / 'calls.txt'}"]
    loaded = load_model(trained_run)  # the figures the command must print: score() on the same call
    texts = Corpus.from_path(tmp_path / "calls.txt").texts()
    expected = score(loaded.model, loaded.tokenizer, texts, stride=8)
    for model in (f"model={trained_run}", f"model_path={trained_run}"):
        monkeypatch.setattr(sys, "argv", ["fingpt-evaluate", model, *calls, "stride=8"])
        main()
        out = capsys.readouterr().out
        assert out.startswith(f"bpb {expected.bpb:.4f}  perplexity {expected.perplexity:.2f}  ")
        assert out.endswith(f"tokens {expected.tokens:,}  bytes {expected.bytes:,}  calls 1\n")
    assert run(f"model={tmp_path}/missing.ckpt", *calls) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert run(f"model={trained_run}", *calls, "stride=0") == 2
    assert capsys.readouterr().err == "error: stride must be in [1, block_size=32], got 0\n"
    assert run(*calls) == 2
    missing = "error: which model? add model=PATH (a bundle, a run folder or a .ckpt)\n"
    assert capsys.readouterr().err == missing


def test_the_cli_scores_one_split_and_sweeps_with_m(trained_run, tmp_path, capsys, monkeypatch):
    """split=validation scores that split's calls only; -m runs one evaluation per value."""
    loaded = load_model(trained_run)
    cfg = compose("evaluate", [f"model_path={trained_run}", "data=cc_by_sa"])
    texts = list(Corpus(cfg.data).texts("validation"))
    assert 0 < len(texts) < len(list(Corpus(cfg.data).texts()))
    expected = {s: score(loaded.model, loaded.tokenizer, texts, stride=s) for s in (16, 32)}
    argv = ["fingpt-evaluate", "-m", f"model={trained_run}", "data=cc_by_sa", f"paths.log_dir={tmp_path}"]
    argv += ["split=validation"]
    monkeypatch.setattr(sys, "argv", [*argv, "stride=16,32"])
    main()
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bpb ")]
    assert printed == [
        f"bpb {e.bpb:.4f}  perplexity {e.perplexity:.2f}  tokens {e.tokens:,}  bytes {e.bytes:,}  "
        f"calls {len(texts)}"
        for e in expected.values()
    ]
