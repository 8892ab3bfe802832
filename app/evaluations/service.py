"""Evaluation jobs: the target's test accuracy at the current number of labels."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.errors import Invalid
from app.items.models import Split
from app.items.service import count_labeled
from app.jobs.models import Job, JobKind
from app.jobs.service import create_job, draw_seed
from app.projects.models import Project
from app.projects.service import project_settings
from app.rounds.schemas import ProxyConfig
from app.rounds.service import resolve_proxy


def start_evaluation(
    db: Session,
    *,
    project: Project,
    target: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    image_size: int | None,
    seed: int | None,
    created_by: int | None,
) -> Job:
    """Write a queued evaluation job; it needs labelled pool and labelled test items."""
    if count_labeled(db, project_id=project.id, split=Split.pool) == 0:
        raise Invalid("an evaluation needs labelled pool items to train on")
    if count_labeled(db, project_id=project.id, split=Split.test) == 0:
        raise Invalid("an evaluation needs labelled items in the test split to measure on")
    settings = project_settings(project)
    # The target's name goes in as the default arch: a proxy's names do not list targets.
    given = ProxyConfig(epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size)
    return create_job(
        db,
        kind=JobKind.evaluate,
        project_id=project.id,
        params={
            "target": resolve_proxy(
                settings,
                given,
                default_arch=target or settings.default_target,
                kind=project.kind,
                target=True,
            ),
            "seed": draw_seed(seed),
        },
        created_by=created_by,
    )
