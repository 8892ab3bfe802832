"""Steps that cross domains, called by the routers and runners; services never call this module.

- an undo, and what it means for the rounds whose batch holds the item (a round it had
  completed goes back to labelling);
- a round canceled, and its job with it;
- a round's job canceled or retried, and its round with it;
- a member removed from a project, or a user disabled: their leases end with their right.

A label and the completion of the rounds it finished are two units of work (the completion
waits on labels in flight, so it runs after the label's commit): ``app.labeling.router`` runs
``app.labeling.service.store_label``, then ``app.rounds.service.complete_round``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.auth.models import User
from app.errors import NotFound
from app.jobs import service as jobs
from app.jobs.models import FINISHED_JOB_STATUSES, Job, JobKind
from app.labeling import service as labeling
from app.projects import service as projects
from app.projects.service import Access
from app.rounds import service as rounds
from app.rounds.models import Round, RoundStatus
from app.users import service as users
from app.users.schemas import UserUpdate


def undo_label(db: Session, *, user: User, label_id: int) -> None:
    """Undo a label (idempotent); an item left without a label reopens the round it completed."""
    undone = labeling.undo_label(db, user=user, label_id=label_id)
    if undone is None:
        return
    # The rounds' locks before the item's selection rows change (see hold_rounds_of_item).
    held = rounds.hold_rounds_of_item(db, project_id=undone.project_id, item_id=undone.item_id)
    if labeling.settle_item(db, item_id=undone.item_id) is None:
        rounds.reopen_rounds(db, held=held)


def cancel_round(db: Session, *, round_id: int) -> Round:
    """Cancel a round and its job: queued or labelling at once, running at its next report."""
    # Locked as a completion locks it: a cancel racing the last label's completion either
    # waits for it and finds the round completed (409), or goes first and cancels it.
    rnd = rounds.lock_round(db, round_id=round_id)
    if rnd is None:
        raise NotFound("no such round")
    rounds.check_cancelable(rnd)
    job = db.get(Job, rnd.job_id) if rnd.job_id is not None else None
    live_job = job is not None and job.status not in FINISHED_JOB_STATUSES
    if job is not None and live_job:
        jobs.cancel_job(db, job=job)
    if rnd.status == RoundStatus.running and live_job:
        # The runner sees the request at its next progress report (each epoch) and ends the
        # round as canceled itself.
        return rnd
    return rounds.mark_canceled(db, rnd=rnd)


def cancel_job(db: Session, *, job: Job) -> Job:
    """Cancel a job; a round whose queued job is canceled is canceled with it."""
    jobs.cancel_job(db, job=job)
    if job.kind == JobKind.round and job.project_id is not None:
        rounds.follow_jobs(db, project_id=job.project_id)
    return job


def retry_job(db: Session, *, job: Job) -> Job:
    """Queue a failed or canceled job again; a round's job takes its round back to queued."""
    jobs.check_retryable(job)
    if job.kind == JobKind.round:
        rounds.requeue(db, job_id=job.id)
    return jobs.retry_job(db, job=job)


def remove_member(db: Session, *, access: Access, user_id: int) -> None:
    """Take a user out of the project; the items they held go back to the queue at once."""
    projects.remove_member(db, access=access, user_id=user_id)
    labeling.drop_leases(db, user_id=user_id, project_id=access.project.id)


def update_user(
    db: Session, *, user_id: int, data: UserUpdate, keep_session_id: int | None
) -> User:
    """Change a user; one disabled loses their leases at once, as their sessions."""
    user = users.update_user(db, user_id=user_id, data=data, keep_session_id=keep_session_id)
    if not user.active:
        labeling.drop_leases(db, user_id=user.id)
    return user
