"""Score a call: where a transcript surprises the model, from the server's per-token logprobs.

Plain Python on the JSON the server sends (no torch): the page draws what these return.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from dataclasses import dataclass

MAX_CHARS = 200_000  # about 50,000 tokens: one request, scored in well under a minute on 2 cores
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class Token:
    text: str
    offset: int  # where the token starts in the call's text
    logprob: float  # natural log
    top: dict[str, float]  # the most likely tokens at its place, with their logprobs

    @property
    def bits(self) -> float:
        """Surprisal: how unlikely the model found the token, -log2 p."""
        return -self.logprob / math.log(2)


def tokens(logprobs: dict) -> list[Token]:
    """The call's tokens from an echoed prompt's logprobs, without the leading <|endoftext|>."""
    start = len(logprobs["tokens"][0])  # the offsets count <|endoftext|>'s text too
    columns = ("tokens", "text_offset", "token_logprobs", "top_logprobs")
    rows = list(zip(*(logprobs[c] for c in columns), strict=True))[1:]
    return [Token(text, offset - start, lp, top or {}) for text, offset, lp, top in rows]


def bits_per_byte(scored: list[Token], text: str) -> float:
    return sum(t.bits for t in scored) / len(text.encode("utf-8"))


@dataclass
class Sentence:
    text: str
    bits: float  # mean surprisal of its tokens
    tokens: int


def sentences(scored: list[Token], text: str) -> list[Sentence]:
    """The call's sentences, most surprising first: each with the mean surprisal of the tokens
    that start inside it."""
    bounds = [0, *(m.end() for m in SENTENCE_END.finditer(text)), len(text)]
    found = []
    for begin, end in zip(bounds, bounds[1:], strict=False):
        inside = [t.bits for t in scored if begin <= t.offset < end]
        if inside and text[begin:end].strip():
            found.append(Sentence(text[begin:end].strip(), sum(inside) / len(inside), len(inside)))
    return sorted(found, key=lambda s: s.bits, reverse=True)


def shade(bits: float, darkest: float = 16.0) -> str:
    """A background from clear (expected) to deep red (16 bits or more: 1 in 65,000)."""
    return f"rgba(214, 39, 40, {min(bits / darkest, 1.0):.2f})"


def shaded_html(scored: list[Token]) -> str:
    """The text, each token shaded by its surprisal; hovering shows its probability and the
    model's top alternatives."""
    spans = []
    for t in scored:
        alternatives = ", ".join(f"{a!r} {math.exp(lp):.1%}" for a, lp in t.top.items())
        title = f"{t.bits:.1f} bits, p = {math.exp(t.logprob):.2%}; expected: {alternatives}"
        style = f"background:{shade(t.bits)}"
        spans.append(f'<span style="{style}" title="{html.escape(title)}">{html.escape(t.text)}</span>')
    return '<div style="white-space: pre-wrap; line-height: 1.6">' + "".join(spans) + "</div>"


def legend_html() -> str:
    steps = [0, 2, 4, 8, 12, 16]
    cells = "".join(f'<span style="background:{shade(b)}; padding: 0 0.5em">{b} bits</span> ' for b in steps)
    return f"<div>surprisal: {cells}(16+: 1 in 65,000 or rarer)</div>"


def scores_csv(scored: list[Token]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["index", "token", "offset", "logprob", "surprisal_bits", "probability", "top_alternatives"]
    )
    for i, t in enumerate(scored):
        top = "; ".join(f"{a}={lp:.4f}" for a, lp in t.top.items())
        writer.writerow(
            [i, t.text, t.offset, f"{t.logprob:.6f}", f"{t.bits:.4f}", f"{math.exp(t.logprob):.6g}", top]
        )
    return out.getvalue()
