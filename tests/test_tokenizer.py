import random

import pytest

from fingpt.tokenizer import EOT, BPETokenizer, CharTokenizer, load_tokenizer

SAMPLES = ["$1.48 billion", "EPS of $0.98", "24.9%", "Q3'24", "Dhingra", "é", "Revenue 📈 grew"]


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trips(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_round_trips_every_call_and_random_unicode(bpe, sample_calls):
    assert bpe.vocab_size == 8192
    for call in sample_calls[:5]:
        assert bpe.decode(bpe.encode(call)) == call
    rng = random.Random(0)
    for _ in range(200):
        chars = [
            chr(
                rng.choice(
                    [
                        rng.randrange(32, 0x250),
                        rng.randrange(0x250, 0xD800),
                        rng.randrange(0xE000, 0x110000),
                    ]
                )
            )
            for _ in range(rng.randrange(1, 30))
        ]
        text = " ".join(chars)
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_splits_digits_one_per_token(bpe):
    for text in ["$1.48 billion", "24.9%", "revenue of $12,345,678"]:
        pieces = [bpe.decode([i]) for i in bpe.encode(text)]
        digits = [p for p in pieces if any(c.isdigit() for c in p)]
        assert digits == [c for c in text if c.isdigit()]
    assert bpe.encode("24.9%")[:2] == bpe.encode("$24.9")[1:3]


def test_bpe_end_of_text_is_one_special_token(bpe):
    ids = bpe.encode(f"first call{EOT}second call")
    assert ids.count(bpe.eot_id) == 1
    assert bpe.token_bytes(bpe.eot_id) == EOT.encode()


def test_bpe_saves_and_loads_from_one_json_file(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(loaded, BPETokenizer)
    assert loaded.hash == bpe.hash
    assert loaded.encode(SAMPLES[0]) == bpe.encode(SAMPLES[0])
    assert list(tmp_path.iterdir()) == [tmp_path / "tokenizer.json"]  # no temporary left behind


def test_char_tokenizer_counts_unseen_characters_instead_of_failing(tmp_path):
    tok = CharTokenizer.train(["Operator: Good day.", "Revenue was $1.48 billion"])
    assert tok.decode(tok.encode("Good day. $1.48")) == "Good day. $1.48"
    ids = tok.encode("Q3 é€")
    assert ids.count(tok.unk_id) == 4  # Q, 3, é, €
    assert tok.unknown == {"Q": 1, "3": 1, "é": 1, "€": 1}
    assert tok.encode(f"a{EOT}b") == [tok.stoi["a"], tok.eot_id, tok.stoi["b"]]
    tok.save(tmp_path / "char.json")
    loaded = load_tokenizer(tmp_path / "char.json")
    assert isinstance(loaded, CharTokenizer)
    assert (loaded.vocab_size, loaded.hash) == (tok.vocab_size, tok.hash)


def test_char_tokenizer_of_the_sample_has_its_92_characters(sample_calls):
    tok = CharTokenizer.train(sample_calls)
    assert len(tok.chars) == 92 and {"€", "’", "…"} <= set(tok.chars)
    assert tok.vocab_size == 94  # + unknown + end of text


def test_loading_a_missing_or_broken_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json does not exist"):
        load_tokenizer(tmp_path / "nothere.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
