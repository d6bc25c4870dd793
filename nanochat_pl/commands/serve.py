"""`nanochat-pl serve`: the web app (nanochat_pl.apps) on any stage's checkpoint, imported when the command runs:
the app imports the library, never the reverse."""

from __future__ import annotations

import socket
from typing import Literal

import torch
from jsonargparse.typing import PositiveInt

from nanochat_pl.common import UserError
from nanochat_pl.engine import load_engine, resolve_device


def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: PositiveInt | None = None,
    device: str = "auto",
    tokenizer_dir: str | None = None,
    precision: Literal["auto", "bf16", "fp32"] = "auto",
) -> None:
    """Serve a model: the Gradio chat page at `/` and an OpenAI-compatible API at `/v1/chat/completions`
    (also `/v1/models` and `/health`), one FastAPI app run by uvicorn.

    Args:
        checkpoint: A checkpoint by name ("sft", "rl", "sft@step=100"), a .ckpt, or a nanochat checkpoint folder.
        host: Address to listen on; 0.0.0.0 to accept connections from other machines.
        port: Port to listen on.
        replicas: Copies of the model answering side by side, taking the CUDA devices in turn; default one per
            CUDA device, or one on the CPU.
        device: "auto" (every CUDA device if there is one, else the CPU), "cpu", "cuda" or "cuda:N".
        tokenizer_dir: A tokenizer to use instead of the one the checkpoint carries.
        precision: "auto" (bf16 on CUDA; on a CPU the faster of bf16 and fp32, measured), "bf16" or "fp32".
    """
    try:  # before the model loads: a port out of range, taken or not ours, an unknown host
        socket.create_server((host, port)).close()
    except (OSError, OverflowError) as error:
        raise UserError(f"cannot listen on {host}:{port}: {error}") from None
    import uvicorn

    from nanochat_pl.apps.web import create_app

    if device == "auto" and torch.cuda.is_available():
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    else:
        devices = [resolve_device(device)]
    replica_devices = [devices[i % len(devices)] for i in range(replicas or len(devices))]
    loaded = [load_engine(checkpoint, replica_device, tokenizer_dir, precision) for replica_device in replica_devices]
    meta = loaded[0][1]
    print(f"serving {checkpoint} with {len(loaded)} replica(s) on {', '.join(map(str, replica_devices))}")
    app = create_app([engine for engine, _ in loaded], f"nanochat-pl-{meta['stage']}", checkpoint, meta)
    uvicorn.run(app, host=host, port=port)
