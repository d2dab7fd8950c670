"""The GGUF export, run by llama.cpp itself (llama-cpp-python, built from source by `make test`)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fingpt.checkpoint import load_model
from fingpt.evaluate import score
from fingpt.export import main
from fingpt.gguf_export import write_gguf
from fingpt.model import GPT, GPTConfig
from serving.llama_backend import LlamaCppModel

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python: pip install -e '.[dev]'")

LAYOUT = {"pos_emb": "rope", "norm": "rmsnorm", "bias": False, "n_embd": 64, "n_head": 4, "n_layer": 2}
FAMILIES = {  # the layouts llama.cpp has an architecture for
    "apertus": {"mlp": "relu2", "qk_norm": True},
    "qwen3": {"mlp": "swiglu", "qk_norm": True},
    "llama": {"mlp": "swiglu", "rope_base": 500.0},
}


def llama(path: Path, context: int) -> "llama_cpp.Llama":
    """llama.cpp on `path`, its cache in float32 (float16 by default, which costs 1e-3 in logits)."""
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(
        str(path),
        n_ctx=context,
        n_batch=context,
        logits_all=True,
        type_k=f32,
        type_v=f32,
        n_threads=2,
        verbose=False,
    )


def llama_logits(model: "llama_cpp.Llama", ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids`, from an empty cache."""
    model.reset()
    model.eval(ids)
    return np.array(model.scores[: len(ids)])


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_gives_fingpts_logits_in_float32(family, bpe, tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=bpe.vocab_size, block_size=64, dropout=0.0, **LAYOUT, **FAMILIES[family])
    model = GPT(config).eval()
    with torch.no_grad():  # norms away from 1 and projections away from 0, so a misplaced one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = write_gguf(model, bpe, tmp_path / f"{family}.gguf")
    ids = torch.randint(0, bpe.vocab_size, (config.block_size,))
    with torch.no_grad():
        ours = model(ids[None])[0][0].numpy()
    theirs = llama_logits(llama(path, config.block_size), ids.tolist())
    assert np.abs(theirs - ours).max() < 1e-3
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


@pytest.fixture(scope="module")
def calls(sample_calls):
    """The sample's 25 shortest calls (108 KB: the suite's time)."""
    return sorted(sample_calls, key=len)[:25]


def test_llama_cpp_scores_25_real_calls_in_q8_0_within_1_percent_of_fingpt(demo_run, calls, tmp_path):
    main([str(demo_run), "--format", "gguf", "--dtype", "q8_0", "--out", str(tmp_path / "m.gguf")])
    ours = load_model(demo_run)
    block = ours.model.config.block_size
    fingpt_bpb = score(ours.model, ours.tokenizer, calls, stride=block).bpb
    # llama.cpp's logits, through the same windows and sums as fingpt-evaluate's
    llama_cpp_model = LlamaCppModel(tmp_path / "m.gguf", ours.model.config, exact=False)
    theirs = score(llama_cpp_model, ours.tokenizer, calls, stride=block).bpb
    assert fingpt_bpb < 3.0  # trained: a random model of 8192 tokens scores about 3.3 bits a byte here
    assert abs(theirs / fingpt_bpb - 1) < 0.01


def test_llama_cpp_tokenizes_as_fingpt_does(demo_run, sample_calls, tmp_path):
    main([str(demo_run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")])
    ours = load_model(demo_run).tokenizer
    theirs = llama(tmp_path / "m.gguf", 64)
    odd = "Revenue rose 12.5% to $1,234.56M in Q3’24 — naïve café, 東京, 2024-10-31, 1e6, x²\n\n  Operator:"
    for text in [*sample_calls[:3], *sample_calls[-2:], odd]:  # MAEC's, Earnings-21/22's
        assert theirs.tokenize(text.encode(), add_bos=False, special=False) == ours.encode(text)
    assert theirs.token_eos() == theirs.token_bos() == ours.eot_id
    assert theirs.detokenize(ours.encode(odd)).decode() == odd


def test_the_export_names_the_file_after_its_type_and_refuses_what_llama_cpp_cannot_run(
    demo_run, trained_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FINGPT_MODELS_DIR", str(tmp_path))
    main([str(demo_run), "--format", "gguf", "--dtype", "q8_0"])
    assert (tmp_path / f"{demo_run.name}-q8_0.gguf").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [f"{demo_run.name}-q8_0.gguf"]  # nothing half-written
    for args, message in [
        ([str(trained_run), "--format", "gguf"], "error: learned positions have no llama.cpp architecture"),
        ([str(demo_run), "--dtype", "q8_0"], "--dtype q8_0 is for --format gguf only"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
