"""The `nanochat-pl` commands that are plain typed functions; cli.py exposes them through jsonargparse."""
