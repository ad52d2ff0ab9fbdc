"""Model architectures behind one interface: token ids + attention mask in, hidden states out.

- `registry`: `ARCHITECTURES`, `PRESETS`, `build_encoder`, `build_classifier`, `build_mlm`,
  `count_parameters` (importing it does not import torch).
- `transformer`: a DNABERT-2-style encoder on `transformers`' ModernBERT layers (GeGLU, rotary).
- `convnova`: ConvNova, dilated gated convolutions with a base-complement gating stream.
- `unet`: a 1D U-Net (strided down-sampling, transposed-conv up-sampling, skip connections).
- `cnn`: a plain Basset-style convolutional baseline at full resolution.
- `kmer`: the floor, logistic regression on normalised k-mer counts (char tokens only).
- `external`: an encoder from a local `transformers` checkpoint folder (DNABERT-2's remote code
  included), with its pretrained weights or its config at random init.
- `heads`: `masked_mean_pool`, `SequenceClassifier` and `MaskedLanguageModel`, shared by all.
- `mlm`: `mask_tokens`, BERT's 80/10/10 masking for masked-LM pretraining.
- `io`: `save_model`, `load_model`, `load_encoder_weights` (a folder with config.json and
  model.safetensors).

Every encoder exposes `hidden_size`, `config` (a dataclass with `vocab_size`) and
`forward(input_ids, attention_mask)` returning hidden states (batch x length x hidden_size;
the k-mer encoder returns one pooled vector, batch x 1 x 4^k, and says so with
`pooled_output = True`); padding (attention_mask 0) never changes the hidden states of real
tokens. Any tokenizer works but the k-mer model's (the vocabulary size and the padding id are
build arguments); ablate's own tokenizers use [UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4.
"""
