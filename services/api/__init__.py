"""The REST API: FastAPI app factory, dependencies, error mapping and one router per resource."""

from services.api.app import create_app, serve

__all__ = ["create_app", "serve"]
