"""HTTP serving of an index (FastAPI + uvicorn) with request micro-batching."""

from colzero.serve.app import ServeLimits, create_app, serve

__all__ = ["ServeLimits", "create_app", "serve"]
