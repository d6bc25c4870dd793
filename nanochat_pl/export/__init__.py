"""Exporting a model to other ecosystems: `hf` writes a Hugging Face transformers model directory."""
