"""Projects and membership."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from app import flows
from app.auth.deps import DB, CurrentUser, EngineerUser
from app.fields import PathId
from app.http import error_responses
from app.projects import service
from app.projects.deps import EngineerAccess, ProjectAccess
from app.projects.models import Project
from app.projects.schemas import (
    MemberRead,
    MemberSet,
    ProjectCounts,
    ProjectCreate,
    ProjectRead,
    ProjectUpdate,
)

router = APIRouter(prefix="/api/projects", tags=["projects"])


def _read(db: Session, project: Project, role: str | None) -> ProjectRead:
    counts = service.project_counts(db, project_ids=[project.id])[project.id]
    return _with_counts(project, role, counts)


def _with_counts(project: Project, role: str | None, counts: dict[str, int]) -> ProjectRead:
    return ProjectRead(
        id=project.id,
        name=project.name,
        kind=project.kind,
        description=project.description,
        classes=project.classes,
        settings=service.project_settings(project),
        created_at=project.created_at,
        counts=ProjectCounts(**counts),
        role=role,
        **counts,
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(409))
def create_project(body: ProjectCreate, user: EngineerUser, db: DB) -> ProjectRead:
    """Create a project; the caller becomes its engineer."""
    project = service.create_project(db, data=body, user=user)
    return _read(db, project, service.member_role(db, project_id=project.id, user=user))


@router.get("")
def list_projects(user: CurrentUser, db: DB) -> list[ProjectRead]:
    """The projects the caller is a member of (all of them for an admin), with counts."""
    visible = service.visible_projects(db, user=user)
    counts = service.project_counts(db, project_ids=[p.id for p, _ in visible])
    return [_with_counts(p, role, counts[p.id]) for p, role in visible]


@router.get("/{project_id}")
def get_project(access: ProjectAccess, db: DB) -> ProjectRead:
    """One project with counts."""
    return _read(db, access.project, access.role)


@router.patch("/{project_id}")
def update_project(body: ProjectUpdate, access: EngineerAccess, db: DB) -> ProjectRead:
    """Change a project's description or settings (engineers of it)."""
    project = service.update_project(db, access=access, data=body)
    return _read(db, project, access.role)


@router.put("/{project_id}/members")
def set_member(body: MemberSet, access: EngineerAccess, db: DB) -> MemberRead:
    """Add a member or change their role (engineers of the project, admins)."""
    member, member_user = service.set_member(
        db, access=access, username=body.username, role=body.role
    )
    return MemberRead(user_id=member_user.id, username=member_user.username, role=member.role)


@router.get("/{project_id}/members")
def list_members(access: EngineerAccess, db: DB) -> list[MemberRead]:
    """The project's members (engineers of the project, admins)."""
    return [
        MemberRead(user_id=u.id, username=u.username, role=m.role)
        for m, u in service.list_members(db, project_id=access.project.id)
    ]


@router.delete("/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(user_id: PathId, access: EngineerAccess, db: DB) -> None:
    """Take a user out of the project; the items they held go back to the queue."""
    flows.remove_member(db, access=access, user_id=user_id)
