"""The web app `nanochat-pl serve` runs: the Gradio chat page at `/` and the OpenAI-compatible API under `/v1`,
both answered by one pool of model replicas."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from nanochat_pl.apps.api import add_api
from nanochat_pl.apps.pool import ReplicaPool
from nanochat_pl.apps.ui import page
from nanochat_pl.engine import Engine


def create_app(engines: list[Engine], model_name: str, checkpoint: str, meta: dict) -> FastAPI:
    pool = ReplicaPool(engines)
    app = FastAPI(title="nanochat-pl")
    add_api(app, pool, model_name)  # before the page: a mount at `/` answers every path it is given
    return gr.mount_gradio_app(app, page(pool, checkpoint, meta), path="/")
