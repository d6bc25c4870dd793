"""What people use to talk to a model: the web app of `nanochat-pl serve` (a Gradio page and an
OpenAI-compatible API)."""
