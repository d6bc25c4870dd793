"""Benchmarks: `nanochat-pl bench tokenizer|train|infer`, each printing one JSON line last."""
