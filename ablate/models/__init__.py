"""Model architectures behind one interface (token ids in, logits out).

- `registry`: `ARCHITECTURES`, `PRESETS`, `build_classifier`, `build_encoder`,
  `count_parameters` (importing it does not import torch).
- `convnova`: ConvNova, dilated gated convolutions with a base-complement gating stream.
- `transformer`: a BERT-style encoder built from a `transformers` config.
- `heads`: `masked_mean_pool`, `ClassificationHead`, `SequenceClassifier`.

Every encoder exposes `hidden_size` and `forward(input_ids, attention_mask)` returning hidden
states (batch x length x hidden_size); padding (attention_mask 0) never changes the result.
"""
