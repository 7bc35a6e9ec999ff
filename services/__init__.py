"""Service entry points: the REST API (``services.api``); the library lives in ``autosched``."""
