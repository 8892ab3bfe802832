"""Users live in ``app.auth.models``; re-exported here so every domain has the same rooms."""

from app.auth.models import Role, User

__all__ = ["Role", "User"]
