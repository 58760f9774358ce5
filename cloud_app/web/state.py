"""The web layer's state on the app, and the database session of each request.

A request gets one session, opened on first use: read-only (no write lock on SQLite)
for GET and HEAD, a writer otherwise. It is committed before the response leaves
when the status is below 400, rolled back otherwise, and closed at teardown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wrappers import Response

from cloud_app.backend import Backend
from cloud_app.config import CloudConfig
from cloud_app.db import Database

log = logging.getLogger(__name__)

_READ_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class WebState:
    """The back end the app works with; ``owned``: the app made it and closes it."""

    backend: Backend
    owned: bool = True

    def __post_init__(self) -> None:
        self.config: CloudConfig = self.backend.config
        self.db: Database = self.backend.db
        self.readers = sessionmaker(self.db.engine.execution_options(readonly=True), expire_on_commit=False)

    def dispatch(self, task_id: str) -> None:
        """Queue the dispatch of a committed task; a queue that is down is logged (the follower catches up)."""
        try:
            self.backend.tasks.dispatch(task_id)
        except Exception:  # boundary: the task row is committed; the follower re-dispatches it
            log.exception("could not enqueue the dispatch of %s; the follower will retry", task_id)

    def cancel(self, task_id: str, reason: str) -> None:
        try:
            self.backend.tasks.cancel(task_id, reason)
        except Exception:  # boundary: as above
            log.exception("could not enqueue the cancel of %s", task_id)


def web_state() -> WebState:
    state: WebState = current_app.extensions["fab"]
    return state


def db() -> Session:
    """The request's session."""
    if "db" not in g:
        state = web_state()
        g.db = (state.readers if request.method in _READ_METHODS else state.db.sessions)()
    session: Session = g.db
    return session


def register_session(app: Flask) -> None:
    @app.after_request
    def _commit(response: Response) -> Response:
        session: Session | None = g.get("db")
        if session is None:
            return response
        if response.status_code >= 400:
            session.rollback()
        elif request.method in _READ_METHODS:
            try:   # a read may have touched a token's last use: keep it if the database lets us
                session.commit()
            except SQLAlchemyError as exc:
                log.warning("could not commit after %s %s: %s", request.method, request.path, exc)
                session.rollback()
        else:
            session.commit()
        return response

    @app.teardown_request
    def _close(exc: BaseException | None) -> None:
        session: Session | None = g.pop("db", None)
        if session is not None:
            if exc is not None:
                session.rollback()
            session.close()
