"""Users and roles, for admins."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app import flows
from app.auth.deps import DB, AdminUser
from app.fields import PathId
from app.http import error_responses
from app.users import service
from app.users.schemas import UserCreate, UserDetail, UserUpdate

router = APIRouter(prefix="/api/users", tags=["users"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(409))
def create_user(body: UserCreate, admin: AdminUser, db: DB) -> UserDetail:
    """Add a user."""
    return UserDetail.model_validate(service.add_user(db, data=body))


@router.get("")
def list_users(admin: AdminUser, db: DB) -> list[UserDetail]:
    """Every user."""
    return [UserDetail.model_validate(u) for u in service.list_users(db)]


@router.patch("/{user_id}")
def update_user(
    user_id: PathId, body: UserUpdate, admin: AdminUser, request: Request, db: DB
) -> UserDetail:
    """Change a user's role, activity or password; a new password or disabling revokes the
    user's sessions and tokens (an admin changing their own password keeps this session), and
    disabling ends the user's leases."""
    keep = getattr(request.state, "session_id", None) if admin.id == user_id else None
    return UserDetail.model_validate(
        flows.update_user(db, user_id=user_id, data=body, keep_session_id=keep)
    )
