"""Celery device-farm workers: one process per device, measuring trials from its own queue."""
