"""Three ways to turn DNA into tokens, all as Hugging Face ``tokenizers`` objects.

- ``char``: one token per nucleotide (A, C, G, T, N).
- ``kmer``: non-overlapping k-mers; a tail shorter than k becomes one shorter token.
- ``bpe``: byte-pair encoding trained on a task's training split, or loaded from an existing
  ``tokenizer.json`` such as DNABERT-2's.

The tokenizers ablate builds share DNABERT-2's special tokens and ids: [UNK]=0, [CLS]=1,
[SEP]=2, [PAD]=3, [MASK]=4 (``DNABERT2_IDS``), and every encoding is wrapped as
``[CLS] ... [SEP]``. A loaded ``tokenizer.json`` (an external checkpoint's, say) keeps its own
special tokens and ids; ``special_ids`` reads them from the tokenizer, by the token names in use
(``[PAD]`` or ``<pad>``, ``[CLS]``, ``<cls>`` or ``<s>``, and so on).

Inputs are cut in base pairs, never in tokens: every tokenizer sees the same DNA context, and the
token limit of a model is derived from the base-pair length (``token_limit``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from ablate.errors import AblateError

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
UNK_ID, CLS_ID, SEP_ID, PAD_ID, MASK_ID = range(5)

# The names each special token goes by, in the order they are looked for.
SPECIAL_NAMES = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "sep": ("[SEP]", "<eos>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>"),
}

NUCLEOTIDES = "ACGTN"
KINDS = ("char", "kmer", "bpe")
_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


@dataclass(frozen=True)
class SpecialIds:
    """A tokenizer's special-token ids; only a padding token is required of every tokenizer."""

    pad: int
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    unk: int | None = None

    @property
    def ids(self) -> tuple[int, ...]:
        """The ids found, in ascending order (what masking must never select or draw)."""
        found = (self.pad, self.cls, self.sep, self.mask, self.unk)
        return tuple(sorted({idx for idx in found if idx is not None}))


DNABERT2_IDS = SpecialIds(pad=PAD_ID, cls=CLS_ID, sep=SEP_ID, mask=MASK_ID, unk=UNK_ID)


def _special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The tokenizer's special tokens (added tokens marked special): content -> id."""
    return {
        token.content: idx
        for idx, token in tokenizer.get_added_tokens_decoder().items()
        if token.special
    }


def special_ids(tokenizer: Tokenizer, *, source: str | Path | None = None) -> SpecialIds:
    """The special-token ids ``tokenizer`` uses, found by name (``SPECIAL_NAMES``).

    A name among the tokenizer's special tokens wins over the same name as a plain vocabulary
    entry. A tokenizer without a padding token is refused: batches are padded with it.
    ``source`` (the file it came from) names the tokenizer in that error.
    """
    specials = _special_token_ids(tokenizer)

    def find(role: str) -> int | None:
        for name in SPECIAL_NAMES[role]:
            if name in specials:
                return specials[name]
        for name in SPECIAL_NAMES[role]:
            idx = tokenizer.token_to_id(name)
            if idx is not None:
                return idx
        return None

    pad = find("pad")
    if pad is None:
        where = f"{source}: " if source is not None else ""
        raise AblateError(
            f"{where}the tokenizer has no padding token: none of the special tokens "
            f"{', '.join(SPECIAL_NAMES['pad'])} is in its vocabulary; add one (ablate pads "
            "batches with it)"
        )
    return SpecialIds(pad=pad, cls=find("cls"), sep=find("sep"), mask=find("mask"),
                      unk=find("unk"))


@dataclass(frozen=True)
class TokenizerChoice:
    """One value of the study's tokenizer axis, parsed.

    Axis values are ``char``, ``kmer`` (k from the study's tokenizer options) or ``kmer:K``,
    ``bpe`` (trained on each task's train split) or ``bpe:PATH`` (a ``tokenizer.json`` to load).
    """

    kind: str
    k: int | None = None
    path: Path | None = None
    value: str = field(default="", compare=False)  # the axis value as the spec spells it

    @property
    def label(self) -> str:
        """Short, stable name used in cell names and tags."""
        if self.kind == "kmer":
            return f"kmer{self.k}"
        if self.kind == "bpe" and self.path is not None:
            return f"bpe:{self.path.parent.name or self.path.stem}"
        return self.kind


def parse_tokenizer_choice(value: str, *, default_k: int = 6, base_dir: Path | None = None) -> (
    TokenizerChoice
):
    """Parse an axis value such as ``char``, ``kmer:3`` or ``bpe:path/to/tokenizer.json``.

    Parsed once, where a spec is read; the typed value travels from there.
    """
    return replace(_parse(value, default_k, base_dir), value=value)


def _parse(value: str, default_k: int, base_dir: Path | None) -> TokenizerChoice:
    kind, _, arg = value.partition(":")
    if kind not in KINDS:
        raise AblateError(
            f"unknown tokenizer {value!r} in axes.tokenizer; allowed: char, kmer, kmer:K, bpe, "
            "bpe:PATH (a tokenizer.json)"
        )
    if kind == "char":
        if arg:
            raise AblateError(f"tokenizer 'char' takes no argument, got {value!r}")
        return TokenizerChoice("char")
    if kind == "kmer":
        try:
            k = int(arg) if arg else default_k
        except ValueError:
            raise AblateError(f"tokenizer {value!r}: k must be an integer, e.g. kmer:6") from None
        if not 1 <= k <= 8:
            raise AblateError(f"tokenizer {value!r}: k must be between 1 and 8")
        return TokenizerChoice("kmer", k=k)
    if not arg:
        return TokenizerChoice("bpe")
    path = Path(arg).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise AblateError(f"tokenizer {value!r}: no tokenizer.json at {path}")
    return TokenizerChoice("bpe", path=path.resolve())


def _wrap(tokenizer: Tokenizer) -> Tokenizer:
    """Add the shared [CLS] ... [SEP] template."""
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    return tokenizer


def _word_level(vocab_words: Iterable[str], split_pattern: str) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocab_words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(split_pattern), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return _wrap(tokenizer)


def char_tokenizer() -> Tokenizer:
    """Single-nucleotide tokens: vocabulary of the 5 specials plus A, C, G, T, N."""
    return _word_level(NUCLEOTIDES, ".")


def kmer_tokenizer(k: int) -> Tokenizer:
    """Non-overlapping k-mers over ACGTN; the tail of a sequence (shorter than k) is one token.

    The vocabulary holds every string over ACGTN of length 1..k, so no DNA input is ever unknown.
    """
    words = (
        "".join(chars)
        for length in range(k, 0, -1)
        for chars in itertools.product(NUCLEOTIDES, repeat=length)
    )
    return _word_level(words, f".{{1,{k}}}")


def train_bpe_tokenizer(sequences: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train byte-pair encoding on DNA sequences (each sequence is one 'word', as in DNABERT-2)."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(NUCLEOTIDES),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sequences, trainer=trainer)
    return _wrap(tokenizer)


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a ``tokenizer.json``; it must have a padding token (see ``special_ids``).

    Its special tokens and ids are its own (``special_ids`` reads them).
    """
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise AblateError(f"{path}: not a readable tokenizer.json ({exc})") from None
    special_ids(tokenizer, source=path)
    return tokenizer


def build_tokenizer(
    choice: TokenizerChoice, *, train_sequences: Iterable[str] = (), bpe_vocab_size: int = 4096
) -> Tokenizer:
    """Build the tokenizer an axis value names; BPE without a path trains on ``train_sequences``."""
    if choice.kind == "char":
        return char_tokenizer()
    if choice.kind == "kmer":
        return kmer_tokenizer(choice.k or 6)
    if choice.path is not None:
        return load_tokenizer(choice.path)
    return train_bpe_tokenizer(train_sequences, bpe_vocab_size)


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """Content hash of a tokenizer's full definition (vocabulary, merges, rules)."""
    canonical = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def token_limit(choice: TokenizerChoice, length_bp: int) -> int:
    """Most tokens an input of ``length_bp`` base pairs can become, [CLS] and [SEP] included.

    Every token covers at least one base, so ``length_bp + 2`` bounds char and BPE; k-mers need
    ``ceil(length_bp / k) + 2``. No input cut to ``length_bp`` is ever truncated in tokens.
    """
    if choice.kind == "kmer":
        return math.ceil(length_bp / (choice.k or 6)) + 2
    return length_bp + 2


def complement_ids(tokenizer: Tokenizer) -> list[int]:
    """For each token id, the id of its base complement (A<->T, C<->G; not reversed).

    Special tokens map to themselves (the tokenizer's own, whatever their names, and any token
    named in ``SPECIAL_NAMES``), and so does any token whose complement is not in the vocabulary
    (possible for BPE). ConvNova uses this table for its complement-strand stream.
    """
    vocab = tokenizer.get_vocab()
    table = list(range(tokenizer.get_vocab_size()))
    names = set(_special_token_ids(tokenizer)) | {n for ns in SPECIAL_NAMES.values() for n in ns}
    special = {vocab[name] for name in names if name in vocab}
    for token, idx in vocab.items():
        if idx in special or idx >= len(table):
            continue
        partner = vocab.get(token.translate(_COMPLEMENT), idx)
        if partner not in special and partner < len(table):
            table[idx] = partner
    return table
