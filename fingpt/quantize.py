"""Weight-only int8 for decoding on a CPU.

Decoding one stream reads every weight once per token, so a step takes at least the time its
linear layers take to stream their weights (bench/serve.py's floor). Stored as int8 with one
scale per output row, the weights take a quarter of the bytes, and PyTorch's own CPU kernel
(`torch._weight_int8pack_mm`) multiplies activations by them without dequantizing the matrix.
That kernel is fast only for bfloat16 activations (30-40x slower for float32 or float16 ones
on a 2-core AVX-512 EPYC, torch 2.13), so each int8 layer takes its input in bfloat16 and returns
its output in the input's dtype; embeddings, norms, attention and the KV cache stay float32.

    model = to_dtype(model, "int8")  # in place; float32, bfloat16 and float16 work too
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fingpt.devices import check_dtype


class Int8Linear(nn.Module):
    """y = x W^T + b with W ~= scale[:, None] * q: q int8, one scale per output row (channel).

    The scale is the row's largest |w| / 127 (in bfloat16, as the kernel wants it), so every
    weight is off by at most half a step, scale / 2: 0.4% of the row's largest weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        tiny = torch.finfo(torch.bfloat16).tiny  # an all-zero row keeps a usable scale
        scale = (w.abs().amax(dim=1) / 127).clamp(min=tiny).to(torch.bfloat16)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The weights as float32, dequantized (what the chunked loss, fingpt.loss, reads)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(rows, self.qweight, self.scale).view(*x.shape[:-1], self.out_features)
        return y.to(x.dtype) if self.bias is None else y + self.bias  # a float32 bias: a float32 sum

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Make every nn.Linear of `model` (the LM head included) an Int8Linear, in place.

    A head tied to the token embedding gets an int8 copy of that matrix; the embedding stays
    float for the lookup. int8 runs on a CPU only: the kernel has no CUDA version."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(
            f"dtype int8 runs on a CPU only (torch._weight_int8pack_mm has no {device.type} kernel): "
            "use bfloat16 on a GPU"
        )
    model.float()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model


def to_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """`model` in `dtype` (one of fingpt.devices.DTYPES), in place: int8 is weight-only (quantize_int8)."""
    if check_dtype(dtype) == "int8":
        return quantize_int8(model)
    return model.to(getattr(torch, dtype))
