"""Imports every table so Alembic and ``Base.metadata`` see the whole schema."""

from app.auth.models import ApiToken, AuthSession, Role, User
from app.db import Base
from app.embeddings.models import ChunkStatus, EmbedChunk, EmbeddingShard
from app.items.models import ImportChunk, ImportChunkStatus, Item, Split
from app.jobs.models import Job, JobKind, JobStatus, WorkerNode
from app.labeling.models import Label, LabelSource, Lease
from app.projects.models import ItemCount, Member, MemberRole, Project
from app.rounds.models import Round, RoundStatus, Selection

__all__ = [
    "ApiToken",
    "AuthSession",
    "Base",
    "ChunkStatus",
    "EmbedChunk",
    "EmbeddingShard",
    "ImportChunk",
    "ImportChunkStatus",
    "Item",
    "ItemCount",
    "Job",
    "JobKind",
    "JobStatus",
    "Label",
    "LabelSource",
    "Lease",
    "Member",
    "MemberRole",
    "Project",
    "Role",
    "Round",
    "RoundStatus",
    "Selection",
    "Split",
    "User",
    "WorkerNode",
]
