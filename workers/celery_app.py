"""The workers' Celery app (``celery --app workers.celery_app:app``, e.g. Flower).

The configuration is the service's (``autosched.service.celery_app.make_celery``), shared with
the scheduler, which sends tasks by name (``autosched.service.device_tasks``).
"""

from __future__ import annotations

from autosched.service.celery_app import make_celery
from autosched.service.device_tasks import MEASURE_TASK, device_queue

__all__ = ["MEASURE_TASK", "app", "device_queue", "make_celery"]

#: The app for this process' settings (``celery -A workers.celery_app`` finds it).
app = make_celery()
