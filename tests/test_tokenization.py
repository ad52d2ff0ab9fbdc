from pathlib import Path

import pytest

from ablate.errors import AblateError
from ablate.tokenization import (
    CLS_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    TokenizerChoice,
    build_tokenizer,
    char_tokenizer,
    complement_ids,
    kmer_tokenizer,
    load_tokenizer,
    parse_tokenizer_choice,
    token_limit,
    tokenizer_hash,
    train_bpe_tokenizer,
)

SEQ = "ACGTTGCANNACGTA"


def test_char_tokenizer_one_token_per_base():
    tok = char_tokenizer()
    enc = tok.encode(SEQ)
    assert enc.tokens == ["[CLS]", *SEQ, "[SEP]"]
    assert enc.ids[0] == CLS_ID and enc.ids[-1] == SEP_ID
    assert tok.get_vocab_size() == len(SPECIAL_TOKENS) + 5
    assert tok.token_to_id("[PAD]") == PAD_ID


def test_kmer_tokenizer_is_non_overlapping_with_short_tail():
    tok = kmer_tokenizer(4)
    enc = tok.encode(SEQ)
    assert enc.tokens[1:-1] == ["ACGT", "TGCA", "NNAC", "GTA"]
    assert "[UNK]" not in enc.tokens
    assert tok.get_vocab_size() == len(SPECIAL_TOKENS) + sum(5**i for i in range(1, 5))


def test_bpe_trains_on_sequences_and_merges(tmp_path):
    seqs = ["ACGTACGTACGTTTGA" * 4, "ACGTACGTGGGCCCAA" * 4] * 20
    tok = train_bpe_tokenizer(seqs, vocab_size=40)
    enc = tok.encode(seqs[0])
    assert len(enc.ids) < len(seqs[0]) + 2  # merges shortened the sequence
    assert "".join(enc.tokens[1:-1]) == seqs[0]  # lossless
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    assert tokenizer_hash(load_tokenizer(path)) == tokenizer_hash(tok)


def test_dnabert2_tokenizer_loads_with_shared_specials(dnabert2_tokenizer_path):
    tok = load_tokenizer(dnabert2_tokenizer_path)
    assert tok.get_vocab_size() == 4096
    enc = tok.encode("ACGTAGCATCGGATCTATCTATCGACACTCTACGAGG")
    assert enc.ids[0] == CLS_ID and enc.ids[-1] == SEP_ID
    assert "".join(enc.tokens[1:-1]) == "ACGTAGCATCGGATCTATCTATCGACACTCTACGAGG"


def test_parse_choice_and_errors(tmp_path, dnabert2_tokenizer_path):
    assert parse_tokenizer_choice("char") == TokenizerChoice("char")
    assert parse_tokenizer_choice("kmer", default_k=3).k == 3
    assert parse_tokenizer_choice("kmer:5").k == 5
    assert parse_tokenizer_choice("bpe").path is None
    loaded = parse_tokenizer_choice(f"bpe:{dnabert2_tokenizer_path.parent}")
    assert loaded.path == dnabert2_tokenizer_path.resolve()
    for bad in ("word", "kmer:x", "kmer:0", "char:2", f"bpe:{tmp_path}/none.json"):
        with pytest.raises(AblateError):
            parse_tokenizer_choice(bad)


def test_load_rejects_other_special_ids(tmp_path):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"A": 0, "[UNK]": 1}, unk_token="[UNK]"))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    with pytest.raises(AblateError, match="special token"):
        load_tokenizer(path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AblateError, match="broken.json"):
        load_tokenizer(tmp_path / "broken.json")


def test_token_limit_covers_every_input():
    seq = "ACGT" * 25 + "A"  # 101 bp
    for choice, tok in [
        (TokenizerChoice("char"), char_tokenizer()),
        (TokenizerChoice("kmer", k=6), kmer_tokenizer(6)),
        (TokenizerChoice("bpe"), train_bpe_tokenizer([seq] * 10, 30)),
    ]:
        assert len(tok.encode(seq).ids) <= token_limit(choice, len(seq))
    assert token_limit(TokenizerChoice("kmer", k=6), 101) == 17 + 2  # ceil(101 / 6) = 17


def test_complement_table():
    tok = char_tokenizer()
    table = complement_ids(tok)
    vocab = tok.get_vocab()
    assert table[vocab["A"]] == vocab["T"] and table[vocab["C"]] == vocab["G"]
    assert table[vocab["N"]] == vocab["N"] and table[PAD_ID] == PAD_ID
    kmer = kmer_tokenizer(2)
    kv = kmer.get_vocab()
    assert complement_ids(kmer)[kv["AC"]] == kv["TG"]


def test_build_tokenizer_dispatch(dnabert2_tokenizer_path):
    assert build_tokenizer(TokenizerChoice("char")).get_vocab_size() == 10
    assert build_tokenizer(TokenizerChoice("bpe", path=Path(dnabert2_tokenizer_path))) \
        .get_vocab_size() == 4096


# --- special-token ids: ablate's own tokenizers use DNABERT-2's, a loaded one brings its own --


def test_own_tokenizers_have_dnabert2_ids(dnabert2_tokenizer_path):
    from ablate.tokenization import DNABERT2_IDS, special_ids

    seqs = ["ACGTACGTACGTTTGA" * 4, "ACGTACGTGGGCCCAA" * 4] * 20
    for tok in (char_tokenizer(), kmer_tokenizer(3), train_bpe_tokenizer(seqs, vocab_size=40),
                load_tokenizer(dnabert2_tokenizer_path)):
        assert special_ids(tok) == DNABERT2_IDS
    assert DNABERT2_IDS.pad == PAD_ID and DNABERT2_IDS.cls == CLS_ID


def test_nt_style_tokenizer_keeps_its_own_ids(tmp_path):
    from ablate.tokenization import SpecialIds, special_ids
    from tests.checkpoints import nt_tokenizer

    path = tmp_path / "tokenizer.json"
    nt_tokenizer().save(str(path))
    tok = load_tokenizer(path)  # no longer needs DNABERT-2's ids
    assert special_ids(tok) == SpecialIds(pad=1, cls=3, sep=4, mask=2, unk=0)
    assert special_ids(tok).ids == (0, 1, 2, 3, 4)
    enc = tok.encode("ACGTACGTACGTN")
    assert enc.tokens == ["<cls>", "ACGTAC", "GTACGT", "N"] and enc.ids[0] == 3
    table = complement_ids(tok)
    vocab = tok.get_vocab()
    assert all(table[i] == i for i in range(5))  # <unk> <pad> <mask> <cls> <eos>
    assert table[vocab["AAAAAC"]] == vocab["TTTTTG"] and table[vocab["A"]] == vocab["T"]


def test_load_accepts_any_ids_with_a_padding_token(tmp_path):
    from tokenizers import Tokenizer, models

    from ablate.tokenization import SpecialIds, special_ids

    tok = Tokenizer(models.WordLevel({"A": 0, "C": 1, "<pad>": 7, "[UNK]": 2},
                                     unk_token="[UNK]"))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))  # <pad> is a plain vocabulary entry here, not an added special token
    assert special_ids(load_tokenizer(path)) == SpecialIds(pad=7, unk=2)
    assert SpecialIds(pad=7, unk=2).ids == (2, 7)
    no_pad = Tokenizer(models.WordLevel({"A": 0, "<unk>": 1}, unk_token="<unk>"))
    with pytest.raises(AblateError, match=r"no padding token.*\[PAD\], <pad>"):
        special_ids(no_pad)
    no_pad.save(str(tmp_path / "nopad.json"))
    with pytest.raises(AblateError, match="nopad.json"):
        load_tokenizer(tmp_path / "nopad.json")


def test_complement_keeps_the_tokenizers_own_specials():
    from tokenizers import Tokenizer, models

    # Special tokens whose names complement each other, as A and T do: each stays itself.
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<A>": 1, "<T>": 2, "A": 3, "T": 4, "C": 5},
                                     unk_token="<pad>"))
    tok.add_special_tokens(["<pad>", "<A>", "<T>"])
    assert complement_ids(tok) == [0, 1, 2, 4, 3, 5]
    # A plain token whose complement is a special token's name does not map onto it either.
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[GLS]": 1, "[CLS]": 2}, unk_token="[PAD]"))
    tok.add_special_tokens(["[PAD]", "[CLS]"])
    assert complement_ids(tok) == [0, 1, 2]
