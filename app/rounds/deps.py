"""A round's access as request dependencies: its project's, as the caller may reach it.

``round_id`` comes from the route's path; a round in a project the caller cannot see is 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.auth.deps import DB, CurrentUser
from app.fields import PathId
from app.projects.service import Access
from app.rounds.service import round_project_access


def round_access(round_id: PathId, user: CurrentUser, db: DB) -> Access:
    """The project of the path's round, for any member of it."""
    return round_project_access(db, round_id=round_id, user=user)


def round_engineer_access(round_id: PathId, user: CurrentUser, db: DB) -> Access:
    """The project of the path's round, for its engineers and admins."""
    return round_project_access(db, round_id=round_id, user=user, engineer=True)


RoundAccess = Annotated[Access, Depends(round_access)]
RoundEngineerAccess = Annotated[Access, Depends(round_engineer_access)]
