"""The service layer: what API routes, Celery tasks and the scheduler call (they stay thin)."""
