import json
from pathlib import Path

import pytest
import torch
import transformers

from fingpt.checkpoint import load_model
from fingpt.export import main
from fingpt.files import sha256
from fingpt.generation import SamplingParams, generate
from fingpt.hf import hf_family, to_hf
from fingpt.model import GPT, GPTConfig
from fingpt.train import train
from tests.helpers import assert_transformers_matches, train_config

SIZE = {"vocab_size": 97, "block_size": 32, "n_embd": 48, "n_head": 4, "n_layer": 2, "dropout": 0.0}
FAMILIES = {
    "gpt2": {},
    "gpt2 untied, no biases, relu": {"tie_weights": False, "bias": False, "mlp": "relu"},
    "llama": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "rope_base": 500.0},
    "qwen3": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qk_norm": True},
    "apertus": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "relu2", "bias": False, "qk_norm": True},
}


def randomised(layout: dict) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SIZE, **layout)).eval()
    with torch.no_grad():  # norms and biases away from 1 and 0, so a misplaced one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_the_hf_model_gives_fingpts_logits(name):
    model = randomised(FAMILIES[name])
    hf_config, state = to_hf(model, eot_id=96)
    config = transformers.AutoConfig.for_model(**hf_config)
    assert hf_family(model.config) == config.model_type == name.split()[0]
    hf_model = transformers.AutoModelForCausalLM.from_config(config).eval()
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}  # tied: the embedding
    idx = torch.randint(0, SIZE["vocab_size"], (2, SIZE["block_size"]))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # greedy decoding through fingpt's KV cache and through transformers' own
    new = SIZE["block_size"] - 1
    prompt = idx[0, :1]
    (completion,) = generate(model, ByteIds(), [prompt.tolist()], SamplingParams(new, temperature=0.0))
    hf_ids = hf_model.generate(prompt[None], max_new_tokens=new, do_sample=False, eos_token_id=None)
    assert hf_ids[0, 1:].tolist() == completion.tokens and len(completion.tokens) == new


class ByteIds:
    """The little of a tokenizer the sampler needs for a vocabulary of random ids."""

    eot_id = None

    def token_bytes(self, token_id: int) -> bytes:
        return b"x"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"mlp": "relu2", "pos_emb": "rope", "norm": "rmsnorm", "bias": False}, "mlp=relu2 without qk_norm"),
        ({"mlp": "gelu", "pos_emb": "rope", "norm": "rmsnorm", "bias": False}, "mlp=gelu with rotary"),
        ({"logit_softcap": 15.0}, "logit_softcap"),
        ({"norm": "rmsnorm"}, "norm=rmsnorm"),
        ({"tie_weights": False}, "untied LM head with a bias"),
    ],
)
def test_a_layout_without_a_family_is_refused_naming_the_option(layout, message):
    with pytest.raises(ValueError, match=message):
        hf_family(GPTConfig(**SIZE, **layout))


# --- the exported folder, loaded as transformers would ------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(bundle, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("hf") / "tiny-hf"
    main([str(bundle), "--format", "hf", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # from_pretrained must need nothing from the network
        yield mp


def test_transformers_loads_the_export_and_gives_fingpts_logits_and_greedy_tokens(bundle, hf_folder):
    assert_transformers_matches(bundle, hf_folder, "GPT2LMHeadModel")


@pytest.mark.parametrize("folder", ["hf export", "bundle"])  # every bundle is a tokenizer folder too
def test_the_exported_tokenizer_gives_fingpts_ids_on_real_calls(bundle, hf_folder, sample_calls, folder):
    ours = load_model(bundle).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(hf_folder if folder == "hf export" else bundle)
    assert theirs.bos_token == theirs.eos_token == "<|endoftext|>"
    assert theirs.eos_token_id == ours.eot_id
    for call in sample_calls[:3] + sample_calls[-2:]:  # MAEC's and Earnings-21/22's
        assert theirs(call)["input_ids"] == ours.encode(call)


def test_the_export_keeps_checksums_and_never_overwrites_what_is_not_an_export(bundle, hf_folder, tmp_path):
    card = json.loads((hf_folder / "fingpt_card.json").read_text())
    assert card["architecture"] == "GPT2LMHeadModel"
    assert set(card["sha256"]) == {p.name for p in hf_folder.iterdir()} - {"fingpt_card.json"}
    assert card["sha256"]["model.safetensors"] == sha256(hf_folder / "model.safetensors")
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main([str(bundle), "--format", "hf", "--out", str(keep)])
    assert exit_info.value.code == 2 and (keep / "notes.txt").read_text() == "mine"
    (hf_folder / "stale.txt").write_text("only in the old export")
    main([str(bundle), "--format", "hf", "--out", str(hf_folder)])  # an export is replaced
    card = json.loads((hf_folder / "fingpt_card.json").read_text())
    assert not (hf_folder / "stale.txt").exists()
    assert set(card["sha256"]) == {p.name for p in hf_folder.iterdir()} - {"fingpt_card.json"}


def test_a_run_with_export_format_hf_writes_its_bundle_and_its_hf_folder(tmp_path, cache_dir):
    overrides = ["trainer.max_steps=2", "trainer.val_check_interval=2", "export.format=hf"]
    cfg = train_config(tmp_path, cache_dir, overrides)
    train(cfg)
    result = json.loads((Path(cfg.paths.output_dir) / "result.json").read_text())
    assert Path(result["hf"]).name == Path(result["bundle"]).name + "-hf"
    assert load_model(result["bundle"]).model.config.n_embd == 96
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(result["hf"])
    assert type(hf_model).__name__ == "GPT2LMHeadModel" and hf_model.config.n_embd == 96
