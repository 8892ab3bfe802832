"""Shapes of background jobs, as the monitor and 202 answers show them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from app.visibility import for_viewer, viewer_is_admin


class JobRead(BaseModel):
    """A job: status, stage, progress 0..1, and its result or error once finished."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    stage: str | None
    progress: float
    project_id: int | None
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Beyond the contract's shape, for the monitor: who runs it, how often it was started, and
    # whether a stop was asked of a running job.
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False

    @model_validator(mode="after")
    def _worker_identities_for_admins(self) -> JobRead:
        # One rule for every route that shows a job (app.visibility).
        if not viewer_is_admin():
            self.worker = None
            self.result = for_viewer(self.result)
        return self
