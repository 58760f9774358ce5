"""Fleet endpoints: sites, lines, edges and detectors with their state and active models."""

from __future__ import annotations

from typing import Any

from cloud_app import queries
from cloud_app.web.api import check_id, operation, reply
from cloud_app.web.errors import not_found
from cloud_app.web.schemas import BrandListOut, FleetOut, LineOut
from cloud_app.web.state import db


@operation("GET", "/fleet", tag="fleet", summary="Sites, lines, edges and detectors, with brands",
           response=FleetOut)
def get_fleet() -> Any:
    """Every site with its lines; each line with its edge and detectors (online, last seen, active model per brand)."""
    s = db()
    return reply({"sites": queries.fleet(s), "brands": queries.brands(s)})


@operation("GET", "/lines/<site>/<line>", tag="fleet", summary="One line with its edge and detectors",
           response=LineOut, errors=(404,))
def get_line(site: str, line: str) -> Any:
    key = f"{check_id(site, 'site')}/{check_id(line, 'line')}"
    for s in queries.fleet(db()):
        for ln in s["lines"]:
            if ln["key"] == key:
                return reply(ln)
    raise not_found("line", key)


@operation("GET", "/brands", tag="fleet", summary="Product brands and their classes", response=BrandListOut)
def get_brands() -> Any:
    return reply({"brands": queries.brands(db())})
