"""A model's card: what export writes to `card.json`, and what `load_model`, the server and the
page read back. Plain Python (no torch), so the page can import it.

A card written before a field existed still loads (that field takes its default), and a key no
field has (an older or newer card's) is ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class Card:
    """What a model is: its size, its training and how it scored on validation."""

    name: str | None = None  # the bundle's folder name, which the server serves it as
    parameters: int | None = None
    dtype: str = "float32"  # the stored weights'
    context_length: int | None = None  # tokens: the model's block_size
    # bits per byte on the whole validation split, as train printed at its end (result.json);
    # a checkpoint exported without its run's result.json: val_bpb_during_fit
    val_bpb: float | None = None
    val_bpb_during_fit: float | None = None  # the best checkpoint's, on the val_windows sampled in fit
    steps: int | None = None
    tokens_seen: int | None = None
    data: dict | None = None  # name, fingerprint, splits: {split: {calls, tokens, bytes}}
    checkpoint: str | None = None  # the .ckpt it came from (a file name in a bundle's card)
    training_config: dict | None = None  # the resolved Hydra config that trained it
    created: str | None = None  # ISO 8601, UTC, when exported
    sha256: dict[str, str] = field(default_factory=dict)  # of every other file of the bundle

    @classmethod
    def from_dict(cls, values: dict) -> Card:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> Card:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"{path} is not a model card ({e}): export the model again (fingpt-export)"
            ) from e
        if not isinstance(values, dict):
            raise ValueError(f"{path} is not a model card (not a JSON object): export the model again")
        return cls.from_dict(values)

    def save(self, path: str | Path, **extra) -> None:
        """Write the card as JSON; `extra` keys go first (the HF folder's `architecture`)."""
        Path(path).write_text(json.dumps(extra | self.to_dict(), indent=2, default=str))
