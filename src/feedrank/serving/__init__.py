"""HTTP serving: the FastAPI app factory, its metrics, and the uvicorn runner."""

from feedrank.serving.app import create_app
from feedrank.serving.server import serve_forever

__all__ = ["create_app", "serve_forever"]
