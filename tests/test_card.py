import json
import subprocess
import sys

import pytest

from fingpt.card import Card
from tests.helpers import ROOT

CARD = Card(
    name="demo",
    parameters=1836416,
    dtype="bfloat16",
    context_length=128,
    val_bpb=1.1881,
    val_bpb_during_fit=1.1952,
    steps=175,
    tokens_seen=716800,
    data={"name": "all", "fingerprint": "03c18aedb54fae8d", "splits": {"train": {"calls": 1721}}},
    checkpoint="best.ckpt",
    training_config={"seed": 1337, "model": {"n_embd": 128}},
    created="2026-12-03T09:46:23+00:00",
    sha256={"model.safetensors": "bf80", "config.json": "91e6"},
)


def test_a_card_round_trips_through_json(tmp_path):
    CARD.save(tmp_path / "card.json")
    assert Card.load(tmp_path / "card.json") == CARD
    assert json.loads((tmp_path / "card.json").read_text())["val_bpb"] == 1.1881
    CARD.save(tmp_path / "fingpt_card.json", architecture="GPT2LMHeadModel")  # the HF folder's
    saved = json.loads((tmp_path / "fingpt_card.json").read_text())
    assert saved["architecture"] == "GPT2LMHeadModel" and Card.load(tmp_path / "fingpt_card.json") == CARD


def test_a_card_from_before_a_field_existed_loads_and_unknown_keys_are_ignored(tmp_path):
    old = {k: v for k, v in CARD.to_dict().items() if k not in ("val_bpb_during_fit", "context_length")}
    (tmp_path / "card.json").write_text(json.dumps(old | {"hyper_parameters": {"lr": 0.01}}))
    card = Card.load(tmp_path / "card.json")
    assert (card.val_bpb, card.steps, card.sha256) == (1.1881, 175, CARD.sha256)
    assert card.val_bpb_during_fit is None and card.context_length is None
    assert Card.from_dict({}) == Card()  # an old server's page: every field its default


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_a_file_that_is_not_a_card_is_refused_by_name(tmp_path, text):
    (tmp_path / "card.json").write_text(text)
    with pytest.raises(ValueError, match=f"{tmp_path / 'card.json'} is not a model card"):
        Card.load(tmp_path / "card.json")


def test_the_card_imports_no_torch():  # the page reads it, and the page never imports torch
    code = "import sys, fingpt.card; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
