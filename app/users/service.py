"""User management."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth import cache as auth_cache
from app.auth.models import AuthSession, User
from app.auth.service import create_user
from app.errors import Conflict, NotFound
from app.security import hash_password
from app.users.schemas import UserCreate, UserUpdate


def add_user(db: Session, *, data: UserCreate) -> User:
    """Create a user with a unique name."""
    if db.scalar(select(User.id).where(User.username == data.username)) is not None:
        raise Conflict(f"the username {data.username!r} is taken")
    return create_user(db, username=data.username, password=data.password, role=data.role)


def list_users(db: Session) -> list[User]:
    """Every user, by name."""
    return list(db.scalars(select(User).order_by(User.username)))


def update_user(db: Session, *, user_id: int, data: UserUpdate) -> User:
    """Change a user's role, activity or password; disabling or re-keying ends their sessions."""
    user = db.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    if data.role is not None:
        user.role = data.role
    if data.active is not None:
        user.active = data.active
    if data.password is not None:
        user.password_hash = hash_password(data.password)
    if data.active is False or data.password is not None:
        db.execute(delete(AuthSession).where(AuthSession.user_id == user.id))
    db.flush()
    # Role, activity and password take effect at once in this process, within seconds elsewhere.
    auth_cache.forget_user(user.id, db=db)
    return user
