"""fingpt's model in the layout of a Hugging Face transformers family, without importing it.

`hf_family(config)` names the family a layout matches (or says which option has none), and
`to_hf(model)` returns that family's `config.json` and its state dict, so that
`AutoModelForCausalLM.from_pretrained` loads the weights with no custom code:

- learned positions, LayerNorm, GELU or ReLU: GPT-2 (`GPT2LMHeadModel`; its Conv1D layers store
  weights as (in, out), and a layout without biases gets zero biases);
- rotary positions, RMSNorm, SwiGLU, no biases: Llama (`LlamaForCausalLM`), and with qk_norm
  Qwen3 (`Qwen3ForCausalLM`). Our rotary pairs are Llama's (x[i], x[i + d/2]), so q and k need
  no permutation;
- rotary positions, RMSNorm, ReLU², qk_norm, no biases (the demo's layout): Apertus
  (`ApertusForCausalLM`: a non-gated MLP, per-head q and k norms). Its activation is written as
  xIELU, the one that vLLM's and llama.cpp's Apertus take, with parameters that make it ReLU²
  (`XIELU_RELU2`), so one folder loads in transformers, vLLM and llama.cpp.
"""

from __future__ import annotations

import math

import torch

from fingpt.model import GPT, NORM_EPS, GPTConfig


def hf_family(config: GPTConfig) -> str:
    """ "gpt2", "llama", "qwen3" or "apertus"; a ValueError naming the option no family has."""
    if config.logit_softcap is not None:
        raise ValueError("logit_softcap has no Hugging Face equivalent: export a model without it")
    if not config.tie_weights and config.bias:
        raise ValueError("an untied LM head with a bias has no Hugging Face equivalent (bias: true)")
    if config.pos_emb == "learned":
        for name, value in (("norm", "rmsnorm"), ("mlp", "relu2"), ("mlp", "swiglu"), ("qk_norm", True)):
            if getattr(config, name) == value:
                raise ValueError(f"{name}={value} with learned positions has no Hugging Face family")
        return "gpt2"
    if config.norm != "rmsnorm" or config.mlp not in ("swiglu", "relu2"):
        option = "norm=layernorm" if config.norm != "rmsnorm" else f"mlp={config.mlp}"
        raise ValueError(
            f"{option} with rotary positions has no Hugging Face family "
            "(Llama, Qwen3: rmsnorm and swiglu; Apertus: rmsnorm, relu2 and qk_norm)"
        )
    if config.bias or config.qkv_bias:
        raise ValueError("biases with rotary positions have no Hugging Face family: set bias: false")
    if config.mlp == "relu2":
        if not config.qk_norm:
            raise ValueError("mlp=relu2 without qk_norm has no Hugging Face family (Apertus has qk_norm)")
        return "apertus"
    return "qwen3" if config.qk_norm else "llama"


def to_hf(model: GPT, eot_id: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """The transformers `config.json` (as a dict) and state dict of `model`; `<|endoftext|>`
    (the tokenizer's `eot_id`) is both its bos and eos, as in training."""
    config = model.config
    family = hf_family(config)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if family == "gpt2":
        hf_config, hf_state = _gpt2_config(config), _gpt2_state(config, state)
    else:
        hf_config, hf_state = _llama_config(config, family), _llama_state(config, family, state)
    hf_config |= {
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,  # Apertus's default (3) would be one of our ids
        "torch_dtype": "float32",
    }
    return hf_config, hf_state


def _gpt2_config(config: GPTConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_hidden,
        # F.gelu is the exact (erf) GELU: transformers' "gelu", not GPT-2's "gelu_new" (tanh)
        "activation_function": config.mlp,
        "layer_norm_epsilon": NORM_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def _gpt2_state(config: GPTConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"]}
    conv1d = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # weights stored (in, out)
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for name in (*conv1d, "ln_1", "ln_2"):
            weight = state[ours + name + ".weight"]
            out[theirs + name + ".weight"] = weight.t().contiguous() if name in conv1d else weight
            bias = state.get(ours + name + ".bias")
            out[theirs + name + ".bias"] = bias if bias is not None else weight.new_zeros(weight.shape[0])
    out["transformer.ln_f.weight"] = state["ln_f.weight"]
    out["transformer.ln_f.bias"] = state.get("ln_f.bias", state["ln_f.weight"].new_zeros(config.n_embd))
    if not config.tie_weights:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


# xIELU(x) = a_p x² + b x for x > 0, a_n (expm1(min(x, eps)) - x) + b x otherwise, where the
# engines compute a_p = softplus(alpha_p) and a_n = b + softplus(alpha_n) from the stored values:
# a_p = 1, b = 0 and a_n = softplus(-80) = 2e-35 make it ReLU² (x² for x > 0, else 0)
XIELU_RELU2 = {"alpha_p": math.log(math.expm1(1.0)), "alpha_n": -80.0, "beta": 0.0, "eps": -1e-6}

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "apertus": "ApertusForCausalLM"}


def _llama_config(config: GPTConfig, family: str) -> dict:
    """Llama's config, and that of the families that extend it (Qwen3, Apertus)."""
    return {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_size,
        "hidden_act": "xielu" if family == "apertus" else "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": NORM_EPS,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False,
        "mlp_bias": False,
    }


NORMS = ("input_layernorm", "post_attention_layernorm")  # Llama's names for our ln_1 and ln_2


def _llama_state(config: GPTConfig, family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["ln_f.weight"]}
    norms = ("attention_layernorm", "feedforward_layernorm") if family == "apertus" else NORMS
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.c_attn.weight"].chunk(3, dim=0)
        out |= {
            theirs + f"{norms[0]}.weight": state[ours + "ln_1.weight"],
            theirs + "self_attn.q_proj.weight": q,
            theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": state[ours + "attn.c_proj.weight"],
            theirs + f"{norms[1]}.weight": state[ours + "ln_2.weight"],
            theirs + "mlp.down_proj.weight": state[ours + "mlp.c_proj.weight"],
        }
        if family == "apertus":  # down(relu2(up(x))): no gate
            out[theirs + "mlp.up_proj.weight"] = state[ours + "mlp.c_fc.weight"]
            shape = {"alpha_p": (1,), "alpha_n": (1,), "beta": (), "eps": ()}  # as transformers' XIELU
            for name, value in XIELU_RELU2.items():
                out[theirs + f"mlp.act_fn.{name}"] = torch.full(shape[name], value)
        else:  # SwiGLU: our c_fc holds the gate and up projections, stacked
            gate, up = state[ours + "mlp.c_fc.weight"].chunk(2, dim=0)
            out |= {theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up}
        if config.qk_norm:
            out[theirs + "self_attn.q_norm.weight"] = state[ours + "attn.q_norm.weight"]
            out[theirs + "self_attn.k_norm.weight"] = state[ours + "attn.k_norm.weight"]
    if not config.tie_weights:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {name: tensor.contiguous() for name, tensor in out.items()}
