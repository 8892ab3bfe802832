"""Core-set jobs: check the request, then leave the work to a worker."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import Invalid
from app.items.models import Item, Split
from app.jobs.models import Job, JobKind
from app.jobs.service import create_job, draw_seed
from app.projects.models import Project
from app.projects.service import project_settings
from app.rounds.schemas import ProxyConfig
from app.rounds.service import resolve_proxy


def count_labeled(db: Session, *, project_id: int, split: str = Split.pool) -> int:
    """Items of a split that have a label."""
    return (
        db.scalar(
            select(func.count())
            .select_from(Item)
            .where(Item.project_id == project_id, Item.split == split, Item.label.is_not(None))
        )
        or 0
    )


def start_coreset(
    db: Session,
    *,
    project: Project,
    fraction: float,
    strategy: str,
    proxy: ProxyConfig | None,
    seed: int | None,
    created_by: int | None,
) -> Job:
    """Write a queued core-set job; it runs once the transaction commits."""
    labeled = count_labeled(db, project_id=project.id)
    if labeled < 2:
        raise Invalid(f"a core-set needs at least 2 labelled pool items; the project has {labeled}")
    if int(fraction * labeled) < 1:
        raise Invalid(f"fraction {fraction} of {labeled} labelled items chooses nothing")
    resolved = resolve_proxy(project_settings(project), proxy, kind=project.kind)
    if resolved["arch"] == "linear" and strategy == "forgetting":
        raise Invalid(
            "forgetting events are counted while a proxy trains from scratch; "
            "name one (e.g. proxy.arch tiny_cnn) or choose another strategy"
        )
    return create_job(
        db,
        kind=JobKind.coreset,
        project_id=project.id,
        params={
            "fraction": fraction,
            "strategy": strategy,
            "proxy": resolved,
            "seed": draw_seed(seed),
        },
        created_by=created_by,
    )


def jobs_of_kind(db: Session, *, project_id: int, kind: str) -> list[Job]:
    """A project's jobs of one kind, newest first."""
    return list(
        db.scalars(
            select(Job)
            .where(Job.project_id == project_id, Job.kind == kind)
            .order_by(Job.id.desc())
        )
    )
