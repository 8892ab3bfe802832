"""Celery workers: the app, the task that runs jobs, heartbeats and the reconciler."""
