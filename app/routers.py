"""Every router of the API, in the order they are matched (the front end's static files last).

``ROUTERS`` answer signed-in callers, so each of their routes may give the common errors
(app.http.API_ERRORS); ``OPEN_ROUTERS`` answer anyone (health) and declare their own.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.auth.router import router as auth_router
from app.coresets.router import router as coresets_router
from app.embeddings.router import router as embeddings_router
from app.evaluations.router import router as evaluations_router
from app.exports.router import router as exports_router
from app.items.router import router as items_router
from app.jobs.router import router as jobs_router
from app.labeling.router import router as labeling_router
from app.projects.router import router as projects_router
from app.rounds.router import router as rounds_router
from app.system.router import router as system_router
from app.users.router import router as users_router

ROUTERS: list[APIRouter] = [
    # The labelling hot path first: a request is matched against each route in turn, and these
    # (the queue, labels, image bytes) are most of the traffic. No path of theirs overlaps
    # another router's.
    labeling_router,
    items_router,
    auth_router,
    users_router,
    projects_router,
    rounds_router,
    coresets_router,
    embeddings_router,
    evaluations_router,
    jobs_router,
    exports_router,
]

OPEN_ROUTERS: list[APIRouter] = [system_router]
