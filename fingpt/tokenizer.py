"""Tokenizers: byte-level BPE (the default) and character-level (as Karpathy's lecture model).

Both share one interface and are each saved to, and loaded from, one JSON file.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from fingpt.files import short_hash, write_text

EOT = "<|endoftext|>"  # separates documents


class Tokenizer:
    """text <-> token ids. Every id also has its raw bytes, so decoding can stream."""

    eot_id: int

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash never leaves a half-written tokenizer file."""
        write_text(Path(path), self.to_json())

    @cached_property
    def hash(self) -> str:
        """A fingerprint of the vocabulary and rules, to key caches by."""
        return short_hash(self.to_json())


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the byte each printable stand-in character means."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    assert set(mapping) == set(pre_tokenizers.ByteLevel.alphabet())
    return mapping


def _reservoir_sample(texts: Iterable[str], k: int, seed: int = 0) -> list[str]:
    """k texts drawn uniformly from a stream of unknown length, holding only k in memory."""
    rng = random.Random(seed)
    sample: list[str] = []
    for i, text in enumerate(texts):
        if i < k:
            sample.append(text)
        elif (j := rng.randrange(i + 1)) < k:
            sample[j] = text
    return sample


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers`; digits are split one per token."""

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        eot_id = hf.token_to_id(EOT)
        if eot_id is None:
            raise ValueError(f"BPE tokenizer has no {EOT} token: train it with fingpt")
        self.eot_id = eot_id
        byte_of = _byte_decoder()
        specials = {i: t.content for i, t in hf.get_added_tokens_decoder().items()}
        self._bytes = [
            specials[i].encode() if i in specials else bytes(byte_of[c] for c in hf.id_to_token(i))
            for i in range(hf.get_vocab_size())
        ]

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 8192, sample_calls: int | None = None
    ) -> BPETokenizer:
        """Learn merges from `texts`, or from a uniform sample of `sample_calls` of them.

        Merges for a few thousand tokens settle on a few MB of text: sampling trains several
        times faster on a large corpus and changes the vocabulary's quality very little.
        """
        if sample_calls:
            texts = _reservoir_sample(texts, sample_calls)
        if vocab_size < 257:
            raise ValueError(f"BPE vocab_size must be at least 257 (256 bytes + {EOT}), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # the fast variant skips character offsets, which fingpt never uses
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def to_json(self) -> str:
        return self.hf.to_str()


class CharTokenizer(Tokenizer):
    """One id per character seen in training, then one for unseen characters, then EOT.

    Unseen characters are counted in `unknown`, never an error.
    """

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.unk_id = len(self.chars)
        self.eot_id = self.unk_id + 1
        self.unknown: Counter[str] = Counter()

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(seen)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 2

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece_index, piece in enumerate(text.split(EOT)):
            if piece_index:
                ids.append(self.eot_id)
            for c in piece:
                i = self.stoi.get(c)
                if i is None:
                    self.unknown[c] += 1
                    i = self.unk_id
                ids.append(i)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < self.unk_id:
            return self.chars[token_id].encode()
        return EOT.encode() if token_id == self.eot_id else "\ufffd".encode()

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load either kind from its JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist: train one with fingpt-prepare")
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer file {path} is not valid JSON ({e}): prepare it again") from e


def tokenizer_from_json(text: str) -> Tokenizer:
    """Either kind from the JSON text that `Tokenizer.to_json` wrote."""
    data = json.loads(text)
    if data.get("type") == "char":
        return CharTokenizer(data["chars"])
    return BPETokenizer(HFTokenizer.from_str(text))
