import pytest
import torch
import transformers

from fingpt.hf import hf_family, to_hf
from fingpt.model import GPT, GPTConfig

SIZE = {"vocab_size": 97, "block_size": 32, "n_embd": 48, "n_head": 4, "n_layer": 2, "dropout": 0.0}
FAMILIES = {
    "gpt2": {},
    "gpt2 untied, no biases, relu": {"tie_weights": False, "bias": False, "mlp": "relu"},
    "llama": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "rope_base": 500.0},
    "qwen3": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qk_norm": True},
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


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"mlp": "relu2", "pos_emb": "rope", "norm": "rmsnorm", "bias": False}, "mlp=relu2"),
        ({"logit_softcap": 15.0}, "logit_softcap"),
        ({"norm": "rmsnorm"}, "norm=rmsnorm"),
        ({"tie_weights": False}, "untied LM head with a bias"),
    ],
)
def test_a_layout_without_a_family_is_refused_naming_the_option(layout, message):
    with pytest.raises(ValueError, match=message):
        hf_family(GPTConfig(**SIZE, **layout))
