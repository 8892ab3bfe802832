"""User management."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth import cache as auth_cache
from app.auth.models import ApiToken, AuthSession, Role, User
from app.auth.service import new_user
from app.db import flush_new
from app.errors import Conflict, NotFound
from app.security import hash_password
from app.users.schemas import UserCreate, UserUpdate


def add_user(db: Session, *, data: UserCreate) -> User:
    """Create a user with a unique name."""
    taken = Conflict(f"the username {data.username!r} is taken")
    if db.scalar(select(User.id).where(User.username == data.username)) is not None:
        raise taken
    user = new_user(username=data.username, password=data.password, role=data.role)
    if not flush_new(db, user):
        # The same name made at the same moment by another request.
        raise taken
    return user


def list_users(db: Session) -> list[User]:
    """Every user, by name."""
    return list(db.scalars(select(User).order_by(User.username)))


def update_user(
    db: Session, *, user_id: int, data: UserUpdate, keep_session_id: int | None = None
) -> User:
    """Change a user's role, activity or password.

    Disabling or re-keying a user ends their sessions and revokes their API tokens, whoever set
    the password (an admin's reset or the user's own change): a stolen credential must not
    outlive the new password. ``keep_session_id`` is the caller's own cookie session, kept when
    they change their own password so that they stay signed in where they did it.
    The last active admin cannot demote or disable themself (409): nobody could manage users.
    """
    user = db.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    demoted = data.role is not None and data.role != Role.admin
    if user.role == Role.admin and user.active and (demoted or data.active is False):
        # Locked, so two admins demoting each other at once on PostgreSQL cannot both succeed.
        admins = db.scalars(
            select(User.id).where(User.role == Role.admin, User.active).with_for_update()
        ).all()
        if set(admins) <= {user.id}:
            raise Conflict(
                "this is the only active admin: make another user admin before you demote "
                "or disable this one"
            )
    if data.role is not None:
        user.role = data.role
    if data.active is not None:
        user.active = data.active
    if data.password is not None:
        user.password_hash = hash_password(data.password)
    if data.active is False or data.password is not None:
        sessions = delete(AuthSession).where(AuthSession.user_id == user.id)
        if keep_session_id is not None and data.active is not False:
            sessions = sessions.where(AuthSession.id != keep_session_id)
        db.execute(sessions)
        db.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    db.flush()
    # Role, activity and password take effect at once in this process, within seconds elsewhere.
    auth_cache.forget_user(user.id, db=db)
    return user
