"""The ``svplabel`` command."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from app.auth.models import Role, User
from app.auth.service import create_user
from app.db import unit_of_work
from app.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.metrics import multiprocess_dir
    from app.migrate import upgrade

    if not args.no_migrate:
        upgrade()
    trusted = get_settings().trusted_proxies.strip()
    with multiprocess_dir(args.workers):
        _run_uvicorn(uvicorn, args, trusted)
    return 0


def _run_uvicorn(uvicorn: Any, args: argparse.Namespace, trusted: str) -> None:
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=get_settings().log_level.lower(),
        # uvicorn would otherwise believe forwarded headers from 127.0.0.1, i.e. from any client
        # on the same machine: only the proxies named in SVP_TRUSTED_PROXIES are believed.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )


def _db_upgrade(args: argparse.Namespace) -> int:
    from app.migrate import upgrade

    upgrade()
    print("database is at the newest schema")
    return 0


def _users_create(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            print("the passwords differ", file=sys.stderr)
            return 2
    if len(password) < 8:
        print("a password needs at least 8 characters", file=sys.stderr)
        return 2
    with unit_of_work() as db:
        if db.scalar(select(User.id).where(User.username == args.username)) is not None:
            print(f"the username {args.username!r} is taken", file=sys.stderr)
            return 1
        user = create_user(db, username=args.username, password=password, role=args.role)
        print(f"created {user.role} {user.username} (id {user.id})")
    return 0


def _worker(args: argparse.Namespace) -> int:
    # The one import of worker/ in app/: this command is the worker (tests/test_import_graph.py).
    from worker.celery_app import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    run_worker(
        concurrency=args.concurrency,
        queues=queues,
        name=args.name,
        pool=args.pool,
        events=args.events,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(host=args.host, port=args.port, allow_demo_logins=args.allow_demo_logins)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="svplabel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web server (migrates first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate at start")
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate to the newest schema").set_defaults(func=_db_upgrade)

    users = sub.add_parser("users", help="user accounts")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create = users_sub.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument("--role", choices=[r.value for r in Role], required=True)
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    create.set_defaults(func=_users_create)

    worker = sub.add_parser("worker", help="run one Celery worker")
    # Torch on the CPU uses every core for one job: one job at a time per worker is right.
    worker.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    worker.add_argument(
        "--queues", default=None, help="comma-separated queues to serve (default: default,rounds)"
    )
    worker.add_argument("--name", default=None, help="node name (default: svp-<pid>@<host>)")
    worker.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo", "threads"], help="Celery pool"
    )
    worker.add_argument(
        "--events", action="store_true", help="send task events (for Flower's task views)"
    )
    worker.set_defaults(func=_worker)

    demo = sub.add_parser("demo", help="demo project, users, server and worker together")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument(
        "--allow-demo-logins",
        action="store_true",
        help="run even in production, on a non-SQLite database or on a non-loopback --host "
        "(the demo's logins are well known)",
    )
    demo.set_defaults(func=_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svplabel``."""
    logging.basicConfig(
        level=get_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
