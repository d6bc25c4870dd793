"""nanochat-pl: a small ChatGPT, end to end, on PyTorch Lightning."""

__version__ = "0.1.0"
