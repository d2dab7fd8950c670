"""fingpt's model as one GGUF file, for llama.cpp and what runs on it (Ollama, LM Studio).

`write_gguf(model, tokenizer, path, dtype)` writes the layouts llama.cpp has an architecture for,
through the Hugging Face layout of fingpt/hf.py and the `gguf` package's own names for it:

- the demo's (rotary, RMSNorm, ReLU², qk_norm): llama.cpp's `apertus`, whose xIELU activation
  takes hf.XIELU_RELU2, the parameters that make it ReLU²;
- rotary, RMSNorm, SwiGLU: `qwen3` with qk_norm, else `llama` (whose rotary pairs neighbours,
  so q and k are permuted as llama.cpp's own converter does).

Learned positions are refused: llama.cpp's `gpt2` computes GELU by its tanh approximation, so
its logits would not be ours. The tokenizer goes in whole: the byte-level vocabulary, its merges
and `<|endoftext|>` as bos and eos, with the pre-tokenizer llama.cpp calls "command-r": digits
split one by one, then GPT-2's regex, spaces kept on decoding, as `BPETokenizer` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

from fingpt.files import new_file
from fingpt.hf import XIELU_RELU2, hf_family, to_hf
from fingpt.model import GPT, NORM_EPS, GPTConfig
from fingpt.tokenizer import BPETokenizer, Tokenizer

# our dtype: GGUF's tensor type, its file type, and llama.cpp's name for it (the file's suffix)
TYPES = {
    "float32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32, "f32"),
    "bfloat16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16, "bf16"),
    "float16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16, "f16"),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, "q8_0"),
}
GGUF_DTYPES = tuple(TYPES)
ARCHITECTURES = {
    "apertus": gguf.MODEL_ARCH.APERTUS,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "llama": gguf.MODEL_ARCH.LLAMA,
}


def write_gguf(model: GPT, tokenizer: Tokenizer, path: Path, dtype: str = "float32", name: str = "") -> Path:
    """Write `model` and `tokenizer` to the GGUF file `path` (whole, or not at all)."""
    config = model.config
    family = hf_family(config)
    if family == "gpt2":
        raise ValueError(
            "learned positions have no llama.cpp architecture that gives fingpt's logits "
            "(its gpt2 uses tanh GELU): export a rotary layout (model=modern_tiny), or --format hf"
        )
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError("tokenizer=char has no GGUF tokenizer: export a model trained with BPE")
    if dtype not in TYPES:
        raise ValueError(f"GGUF dtype must be one of {', '.join(TYPES)}, got {dtype!r}")
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {config.vocab_size}")
    tensor_type, file_type, _ = TYPES[dtype]
    with new_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[ARCHITECTURES[family]])
        writer.add_name(name or path.stem)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, config, family)
        _add_tokenizer(writer, tokenizer)
        _add_tensors(writer, model, tokenizer.eot_id, family, tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _add_hyperparameters(writer: gguf.GGUFWriter, config: GPTConfig, family: str) -> None:
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.mlp_hidden)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head)
    writer.add_key_length(config.head_size)
    writer.add_value_length(config.head_size)
    writer.add_rope_dimension_count(config.head_size)
    writer.add_rope_freq_base(config.rope_base)
    writer.add_layer_norm_rms_eps(NORM_EPS)
    if family == "apertus":  # the same activation in every layer
        writer.add_xielu_alpha_p([XIELU_RELU2["alpha_p"]] * config.n_layer)
        writer.add_xielu_alpha_n([XIELU_RELU2["alpha_n"]] * config.n_layer)
        writer.add_xielu_beta([XIELU_RELU2["beta"]] * config.n_layer)
        writer.add_xielu_eps([XIELU_RELU2["eps"]] * config.n_layer)


def _add_tensors(writer: gguf.GGUFWriter, model: GPT, eot_id: int, family: str, tensor_type) -> None:
    """The Hugging Face layout's tensors (fingpt/hf.py) under the `gguf` package's names for them."""
    config = model.config
    _, state = to_hf(model, eot_id)
    if config.tie_weights:  # llama.cpp's apertus requires its own output matrix
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    names = gguf.get_tensor_name_map(ARCHITECTURES[family], config.n_layer)
    for hf_name, tensor in state.items():
        if ".act_fn." in hf_name:  # xIELU's parameters: metadata in GGUF
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{hf_name} has no name in llama.cpp's {family}")
        array = tensor.to(torch.float32).numpy()
        if family == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            array = _interleave_rotary_pairs(array, config.n_head)
        stored, raw_dtype = _stored(array, tensor_type)
        writer.add_tensor(gguf_name, stored, raw_dtype=raw_dtype)


def _stored(array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, object]:
    """`array` as GGUF stores it in `qtype`: norms (1-D) stay float32, as llama.cpp's converter
    keeps them, and so does a matrix whose rows are not whole blocks of the quantized type."""
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32 or array.shape[-1] % block:
        return array, None
    return gguf.quants.quantize(array, qtype), qtype


def _interleave_rotary_pairs(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of q or k with rotary pairs (i, i + d/2), ours and Hugging Face's, reordered to
    llama.cpp's llama pairs (2i, 2i + 1)."""
    rows = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, 2, rows, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: BPETokenizer) -> None:
    model = json.loads(tokenizer.to_json())["model"]
    specials = set(tokenizer.hf.get_added_tokens_decoder())
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("command-r")  # llama.cpp's name for our pre-tokenizer (docstring)
    writer.add_token_list([tokenizer.hf.id_to_token(i) for i in range(tokenizer.vocab_size)])
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL
            for i in range(tokenizer.vocab_size)
        ]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(False)  # fingpt scores and writes from the text as given
