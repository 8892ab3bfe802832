"""Project access as request dependencies: a route names what it needs, FastAPI checks it.

``project_id`` comes from the route's path. A caller who is not a member gets 404 (the project
does not exist as far as they can tell); a member who needs to be an engineer and is not, 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.auth.deps import DB, CurrentUser
from app.fields import PathId
from app.projects.service import Access, get_access


def project_access(project_id: PathId, user: CurrentUser, db: DB) -> Access:
    """The project of the path, for any member of it."""
    return get_access(db, project_id=project_id, user=user)


def engineer_access(project_id: PathId, user: CurrentUser, db: DB) -> Access:
    """The project of the path, for its engineers and admins."""
    return get_access(db, project_id=project_id, user=user, engineer=True)


ProjectAccess = Annotated[Access, Depends(project_access)]
EngineerAccess = Annotated[Access, Depends(engineer_access)]
