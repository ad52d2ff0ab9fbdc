"""Small stand-ins for external checkpoints, built in seconds with random weights.

- ``make_dnabert2_checkpoint``: the real DNABERT-2 model folder (its remote code, tokenizer and
  config, from the shared data) with a shrunken config.json and random masked-LM weights saved
  the way the release is (``bert.*`` and ``cls.*`` keys), as ``pytorch_model.bin`` or
  ``model.safetensors``, or no weights at all.
- ``make_nt_checkpoint``: a Nucleotide-Transformer-style ESM checkpoint with its own 6-mer
  tokenizer, whose special-token ids differ from DNABERT-2's.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Literal

import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DNABERT2_FOLDER = SHARED_DATA / "DNABERT-2-117M"

# The NT-style tokenizer's special tokens, in id order.
NT_SPECIALS = ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>")


def make_dnabert2_checkpoint(
    folder: Path,
    *,
    weights: Literal["bin", "safetensors"] | None = "bin",
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate_size: int = 64,
) -> Path:
    """A copy of the DNABERT-2 folder, shrunken, with random masked-LM weights (or none)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    folder = Path(folder)
    # Plain copies: the shared files are read-only, and config.json is rewritten here.
    shutil.copytree(DNABERT2_FOLDER, folder, copy_function=shutil.copyfile)
    config_path = folder / "config.json"
    values = json.loads(config_path.read_text())
    values.update(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=intermediate_size)
    config_path.write_text(json.dumps(values, indent=2) + "\n")
    if weights is None:
        return folder
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    # What transformers 4, which the release was made with, gave every configuration.
    for name, value in (("is_decoder", False), ("pad_token_id", None)):
        if not hasattr(config, name):
            setattr(config, name, value)
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_config(config, trust_remote_code=True)
    state = model.state_dict()
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    elif weights == "safetensors":
        from safetensors.torch import save_file

        # The decoder shares the embedding matrix; safetensors stores no shared tensors.
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()},
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        raise ValueError(f"weights must be 'bin', 'safetensors' or None, not {weights!r}")
    return folder


def nt_tokenizer():
    """A Nucleotide-Transformer-style tokenizer: 6-mers over ACGT, else single nucleotides.

    Special tokens <unk>=0, <pad>=1, <mask>=2, <cls>=3, <eos>=4; every encoding starts with
    <cls> and has no end token.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    words = ["".join(chars) for chars in itertools.product("ACGT", repeat=6)] + list("ACGTN")
    vocab = {token: idx for idx, token in enumerate([*NT_SPECIALS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[ACGT]{6}|."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(list(NT_SPECIALS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<cls> $A",
        pair="<cls> $A <eos> $B:1",
        special_tokens=[("<cls>", vocab["<cls>"]), ("<eos>", vocab["<eos>"])],
    )
    return tokenizer


def make_nt_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random ESM masked-LM checkpoint (model.safetensors) with its tokenizer.json."""
    from transformers import EsmConfig, EsmForMaskedLM

    folder = Path(folder)
    tokenizer = nt_tokenizer()
    config = EsmConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.token_to_id("<pad>"),
        mask_token_id=tokenizer.token_to_id("<mask>"),
        token_dropout=False,
        emb_layer_norm_before=False,
    )
    torch.manual_seed(seed)
    EsmForMaskedLM(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder
