"""Model architectures behind one interface (token ids in, logits out)."""
