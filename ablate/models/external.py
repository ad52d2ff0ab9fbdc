"""A pretrained encoder from a local checkpoint folder, loaded with ``transformers``.

This is how a checkpoint pretrained elsewhere (a local copy of DNABERT-2, say) enters a study:
``AutoModel.from_pretrained`` on a folder, never a download (``local_files_only``), and remote
code only when the study spec sets ``trust_remote_code``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ablate.errors import AblateError


class ExternalEncoder(nn.Module):
    """Wraps a ``transformers`` encoder: token ids + mask in, hidden states (B x L x H) out."""

    def __init__(self, folder: str | Path, *, trust_remote_code: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise AblateError(f"{folder}: no config.json; not a transformers checkpoint folder")
        try:
            self.config = AutoConfig.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
            self.backbone = AutoModel.from_pretrained(
                folder, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except ValueError as exc:
            hint = "" if trust_remote_code else " (set trust_remote_code: true if it needs it)"
            raise AblateError(f"{folder}: cannot load the checkpoint{hint}: {exc}") from None
        self.hidden_size = int(self.config.hidden_size)
        self.vocab_size = int(self.config.vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        # Remote-code models (DNABERT-2's among them) may return a plain tuple.
        return outputs[0] if isinstance(outputs, tuple) else outputs.last_hidden_state


def build_external_classifier(
    folder: str | Path, *, num_classes: int, dropout: float = 0.1, trust_remote_code: bool = False
) -> nn.Module:
    """An external encoder with the shared mean-pooling classification head."""
    from ablate.models.heads import SequenceClassifier

    return SequenceClassifier(
        ExternalEncoder(folder, trust_remote_code=trust_remote_code), num_classes, dropout
    )
