"""The domain routers beyond auth, users and projects, in the order they are matched."""

from __future__ import annotations

from fastapi import APIRouter

from app.coresets.router import router as coresets_router
from app.embeddings.router import router as embeddings_router
from app.evaluations.router import router as evaluations_router
from app.exports.router import router as exports_router
from app.items.router import router as items_router
from app.jobs.router import router as jobs_router
from app.labeling.router import router as labeling_router
from app.rounds.router import router as rounds_router

ROUTERS: list[APIRouter] = [
    rounds_router,
    coresets_router,
    embeddings_router,
    evaluations_router,
    labeling_router,
    jobs_router,
    items_router,
    exports_router,
]
