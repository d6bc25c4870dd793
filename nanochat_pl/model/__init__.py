"""The GPT backbone (plain nn.Module, gpt.py), its attention kernels, KV cache, rotary embeddings and FP8 linears."""
