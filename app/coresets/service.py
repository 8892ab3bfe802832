"""Core-set jobs: check the request, then leave the work to a worker."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.errors import Invalid
from app.items.service import count_labeled
from app.jobs.models import Job, JobKind
from app.jobs.service import create_job, draw_seed
from app.projects.models import Project
from app.projects.service import project_settings
from app.rounds.schemas import ProxyConfig
from app.rounds.service import resolve_proxy


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
    if resolved["arch"] in ("linear", "fasttext") and strategy == "forgetting":
        # fastText trains inside its library: no epoch-by-epoch predictions to count them from.
        raise Invalid(
            "forgetting events are counted while a proxy trains from scratch here, epoch by "
            f"epoch, not with {resolved['arch']}; "
            + (
                "choose another strategy on a text project"
                if project.kind == "text"
                else "name one (e.g. proxy.arch tiny_cnn) or choose another strategy"
            )
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
