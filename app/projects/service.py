"""Projects, membership, and the access checks every project-scoped endpoint goes through."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import case, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.auth.models import Role, User
from app.db import flush_new
from app.errors import Conflict, Invalid, NotFound, PermissionDenied
from app.projects import kinds
from app.projects.models import ALL_ITEMS, ItemCount, Member, MemberRole, Project, ProjectKind
from app.projects.schemas import ProjectCreate, ProjectSettings, ProjectUpdate
from app.rounds.models import Round

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Access:
    """A project as one caller may reach it, with that caller's effective role there."""

    project: Project
    role: str  # "admin", "engineer" or "annotator"

    @property
    def can_engineer(self) -> bool:
        """Whether the caller may change the project (upload, start rounds, export)."""
        return self.role in ("admin", MemberRole.engineer)


def effective_role(user: User, membership: str | None) -> str | None:
    """A caller's role in a project, from their membership role there (None: not a member).

    Admins are members of every project, as ``admin``. The one rule, for the ORM reads below
    and the labelling hot path's driver-level statements alike.
    """
    return "admin" if user.role == Role.admin else membership


def member_role(db: Session, *, project_id: int, user: User) -> str | None:
    """The caller's effective role in a project: admin everywhere, else their membership."""
    if user.role == Role.admin:
        return effective_role(user, None)
    return effective_role(
        user,
        db.scalar(
            select(Member.role).where(Member.project_id == project_id, Member.user_id == user.id)
        ),
    )


def get_access(db: Session, *, project_id: int, user: User, engineer: bool = False) -> Access:
    """The project if the caller is a member (404 otherwise); 403 if it needs an engineer."""
    project: Project | None
    membership: str | None = None
    if user.role == Role.admin:
        project = db.get(Project, project_id)
    else:
        # One round trip: the project with the caller's membership, none for a non-member.
        row = db.execute(
            select(Project, Member.role)
            .join(Member, (Member.project_id == Project.id) & (Member.user_id == user.id))
            .where(Project.id == project_id)
        ).first()
        project, membership = (row[0], row[1]) if row is not None else (None, None)
    role = effective_role(user, membership)
    if project is None or role is None:
        # Not a member: the project does not exist as far as this caller can tell.
        raise NotFound("no such project")
    access = Access(project=project, role=role)
    if engineer and not access.can_engineer:
        raise PermissionDenied("this needs an engineer of the project")
    return access


def lock_project(db: Session, *, project_id: int) -> None:
    """Take the project's row lock until the transaction ends (PostgreSQL).

    What changes which round of a project is labelling takes it first (a round's start, its
    completion, an undo that may reopen it), so those take turns and one round labels at a
    time. SQLite needs none: a write request's transaction began with BEGIN IMMEDIATE, so
    writers already run one at a time (the ``FOR UPDATE`` is not rendered there).
    """
    db.execute(select(Project.id).where(Project.id == project_id).with_for_update())


def _refuse_taken_name(db: Session, *, name: str, user: User) -> None:
    """Raise when a project holds this name: 409 to who can see it, a bare 422 to anyone else."""
    existing = db.scalar(select(Project.id).where(Project.name == name))
    if existing is None:
        return
    visible = user.role == Role.admin or (
        db.scalar(select(Member.id).where(Member.project_id == existing, Member.user_id == user.id))
        is not None
    )
    if visible:
        raise Conflict(f"a project named {name!r} exists")
    # Names are unique across the server, so that the name is taken cannot be hidden; the
    # answer says no more: not that a project holds it, nor anything of that project.
    raise Invalid("this project name is not available; choose another")


def create_project(db: Session, *, data: ProjectCreate, user: User) -> Project:
    """Create a project; its creator becomes its first engineer."""
    _refuse_taken_name(db, name=data.name, user=user)
    settings = kinds.fit_settings(data.kind, data.settings)
    project = Project(
        name=data.name,
        kind=data.kind,
        description=data.description,
        classes=data.classes,
        settings=settings.model_dump(),
        created_by=user.id,
    )
    if not flush_new(db, project):
        # Made at the same moment by another request (a double-click): answered as if seen.
        _refuse_taken_name(db, name=data.name, user=user)
        raise Conflict(f"a project named {data.name!r} was made at the same moment")
    db.add(Member(project_id=project.id, user_id=user.id, role=MemberRole.engineer))
    db.flush()
    return project


def update_project(db: Session, *, access: Access, data: ProjectUpdate) -> Project:
    """Change a project's description or settings; settings merge, key by key, and the kind
    stays what it was made as.

    Only the keys the body names change: a PATCH of ``auto_next_round`` alone reset every other
    setting to its default (issue 17 #4), since the body's model fills in what it was not sent.
    """
    project = access.project
    if data.kind is not None and data.kind != project.kind:
        raise Invalid(
            f"a project's kind is fixed when it is made: this is {kinds.a_kind(project.kind)} "
            f"project, so it cannot become {data.kind}; make a new {data.kind} project instead"
        )
    if data.description is not None:
        project.description = data.description
    if data.settings is not None:
        merged = {
            **project_settings(project).model_dump(),
            **data.settings.model_dump(exclude_unset=True),
        }
        fitted = kinds.fit_settings(project.kind, ProjectSettings.model_validate(merged))
        project.settings = fitted.model_dump()
    db.flush()
    return project


def visible_projects(db: Session, *, user: User) -> list[tuple[Project, str]]:
    """The projects the caller can see, with their role in each."""
    if user.role == Role.admin:
        return [(p, "admin") for p in db.scalars(select(Project).order_by(Project.id))]
    rows = db.execute(
        select(Project, Member.role)
        .join(Member, Member.project_id == Project.id)
        .where(Member.user_id == user.id)
        .order_by(Project.id)
    )
    return [(p, r) for p, r in rows.tuples()]


def project_counts(db: Session, *, project_ids: list[int]) -> dict[int, dict[str, int]]:
    """Items, labelled and unlabelled items, and rounds per project, in two grouped queries.

    The items are read from ``ItemCount`` (a few rows per project, kept by triggers), never
    counted: a COUNT over a million items took 64-117 ms a request (class counts 121-217 ms).
    """
    counts = {pid: {"items": 0, "labeled": 0, "unlabeled": 0, "rounds": 0} for pid in project_ids}
    if not project_ids:
        return counts
    every = ItemCount.label == ALL_ITEMS
    item_rows = db.execute(
        select(
            ItemCount.project_id,
            func.sum(case((every, ItemCount.n), else_=0)),
            func.sum(case((every, 0), else_=ItemCount.n)),
        )
        .where(ItemCount.project_id.in_(project_ids))
        .group_by(ItemCount.project_id)
    )
    for pid, total, labeled in item_rows.tuples():
        counts[pid].update(items=total, labeled=labeled, unlabeled=total - labeled)
    round_rows = db.execute(
        select(Round.project_id, func.count())
        .where(Round.project_id.in_(project_ids))
        .group_by(Round.project_id)
    )
    for pid, n in round_rows.tuples():
        counts[pid]["rounds"] = n
    return counts


def item_counts(db: Session, *, project_id: int) -> dict[tuple[str, str], int]:
    """A project's items per (split, current label), ``ALL_ITEMS`` for every item of a split,
    from ``ItemCount``'s few rows; keys whose count is zero are left out."""
    rows = db.execute(
        select(ItemCount.split, ItemCount.label, func.sum(ItemCount.n))
        .where(ItemCount.project_id == project_id)
        .group_by(ItemCount.split, ItemCount.label)
    ).tuples()
    return {(split, label): int(n) for split, label, n in rows if n}


def project_settings(project: Project) -> ProjectSettings:
    """A project's settings, with defaults for keys added since it was made.

    Settings are validated when written, but a stored value may predate a rule (or a backbone
    may have been uninstalled since): such a key falls back to its default, with a warning,
    so one stale value never fails a label, a lease or a round start.
    """
    return settings_of(project.id, project.settings, kind=project.kind)


def settings_of(
    project_id: int, stored_settings: dict[str, Any] | None, *, kind: str = ProjectKind.image
) -> ProjectSettings:
    """``project_settings`` from a plain row's columns, for paths that read no Project object.

    A key that falls back takes the default of the project's kind (a text project's backbone
    stays a text backbone, even one whose wheel is missing here: a round then says so).
    """
    stored = dict(stored_settings or {})
    try:
        return ProjectSettings.model_validate(stored)
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        log.warning(
            "project %s: stored settings %s are not valid any more; using their defaults",
            project_id,
            sorted(bad),
        )
        kept = ProjectSettings.model_validate({k: v for k, v in stored.items() if k not in bad})
        own = {k: v for k, v in kinds.KIND_DEFAULTS[kind].items() if k in bad}
        return kept.model_copy(update=own) if own else kept


def set_member(db: Session, *, access: Access, username: str, role: str) -> tuple[Member, User]:
    """Add a user to the project or change their role there."""
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise Invalid(f"no user named {username!r}")
    # One atomic upsert: a PUT is idempotent, and two of them at once (a double-click) must
    # both answer 200, where an insert after a read made the second a unique violation.
    insert = sqlite_insert if db.get_bind().dialect.name == "sqlite" else postgresql_insert
    member_id = db.execute(
        insert(Member)
        .values(project_id=access.project.id, user_id=user.id, role=role)
        .on_conflict_do_update(index_elements=["project_id", "user_id"], set_={"role": role})
        .returning(Member.id)
    ).scalar_one()
    member = db.get(Member, member_id, populate_existing=True)
    assert member is not None
    return member, user


def list_members(db: Session, *, project_id: int) -> list[tuple[Member, User]]:
    """The project's members with their users, by name."""
    rows = db.execute(
        select(Member, User)
        .join(User, User.id == Member.user_id)
        .where(Member.project_id == project_id)
        .order_by(User.username)
    )
    return [(m, u) for m, u in rows.tuples()]


def remove_member(db: Session, *, access: Access, user_id: int) -> None:
    """Take a user out of the project."""
    member = db.scalar(
        select(Member).where(Member.project_id == access.project.id, Member.user_id == user_id)
    )
    if member is None:
        raise NotFound("no such member")
    db.delete(member)
