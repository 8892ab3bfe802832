"""The domain routers beyond auth, users and projects, in the order they are matched."""

from __future__ import annotations

from fastapi import APIRouter

ROUTERS: list[APIRouter] = []
