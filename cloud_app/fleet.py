"""The fleet in the database: synced from the config's ``fleet`` section, grown by discovery.

    sync_fleet(session, config.fleet)        # at start: sites, lines, edges, detectors, brands
    line = find_line(session, "s1/l1")        # NotFound naming it otherwise
    node = discover_node(session, "detector", site="s1", line="l1", det="d3")   # from a birth message

Every line has one edge node (key "site/line"); detectors have keys "site/line/det/<id>",
the broker usernames of topics.yaml. Nodes and lines removed from the config stay
(history refers to them) but are marked ``configured=False``.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from fabbus.acl import username_for

from cloud_app.config import FleetConfig
from cloud_app.errors import NotFound
from cloud_app.models import Brand, Line, Node, Site

log = logging.getLogger(__name__)


def line_key(site: str, line: str) -> str:
    return username_for("edge", site=site, line=line)


def detector_key(site: str, line: str, det: str) -> str:
    return username_for("detector", site=site, line=line, det=det)


def sync_fleet(s: Session, fleet: FleetConfig) -> None:
    """Make the database's sites, lines, nodes and brands match the config (idempotent)."""
    listed_lines: set[str] = set()
    listed_nodes: set[str] = set()
    for site_name, site_spec in fleet.sites.items():
        site = _site(s, site_name)
        site.title = site_spec.title
        for line_name, line_spec in site_spec.lines.items():
            line = _line(s, site, line_name, configured=True)
            line.title, line.configured = line_spec.title, True
            listed_lines.add(line.key)
            edge = _node(s, line, "edge", "edge", line.key, configured=True)
            edge.configured = True
            listed_nodes.add(edge.key)
            for det in line_spec.detectors:
                node = _node(s, line, "detector", det, detector_key(site_name, line_name, det), configured=True)
                node.configured = True
                listed_nodes.add(node.key)
    if fleet.sites:
        for line in s.scalars(select(Line).where(Line.configured.is_(True))):
            line.configured = line.key in listed_lines
        for node in s.scalars(select(Node).where(Node.configured.is_(True))):
            node.configured = node.key in listed_nodes
    for name, spec in fleet.brands.items():
        brand = s.scalar(select(Brand).where(Brand.name == name))
        if brand is None:
            brand = Brand(name=name, classes=list(spec.classes), ok_class=spec.ok)
            s.add(brand)
        brand.classes, brand.ok_class = list(spec.classes), spec.ok
    s.flush()


def _site(s: Session, name: str) -> Site:
    site = s.scalar(select(Site).where(Site.name == name))
    if site is None:
        site = Site(name=name, title="")
        s.add(site)
        s.flush()
    return site


def _line(s: Session, site: Site, name: str, *, configured: bool) -> Line:
    key = line_key(site.name, name)
    line = s.scalar(select(Line).where(Line.key == key))
    if line is None:
        line = Line(site=site, name=name, key=key, title="", configured=configured)
        s.add(line)
        s.flush()
    return line


def _node(s: Session, line: Line, kind: str, name: str, key: str, *, configured: bool) -> Node:
    node = s.scalar(select(Node).where(Node.key == key))
    if node is None:
        node = Node(line=line, kind=kind, name=name, key=key, configured=configured, online=False, reason="",
                    version="")
        s.add(node)
        s.flush()
    return node


def discover_node(s: Session, kind: str, *, site: str, line: str, det: str | None = None) -> Node:
    """The node for bus ids, created (with its site and line) if unknown."""
    key = detector_key(site, line, det) if kind == "detector" and det else line_key(site, line)
    node = s.scalar(select(Node).where(Node.key == key))
    if node is not None:
        return node
    line_row = _line(s, _site(s, site), line, configured=False)
    if kind == "detector" and det:
        node = _node(s, line_row, "detector", det, key, configured=False)
    else:
        node = _node(s, line_row, "edge", "edge", key, configured=False)
    log.info("discovered %s %s", kind, key)
    return node


def find_node(s: Session, kind: str, *, site: str, line: str, det: str | None = None) -> Node | None:
    key = detector_key(site, line, det) if kind == "detector" and det else line_key(site, line)
    return s.scalar(select(Node).where(Node.key == key))


def find_line(s: Session, key: str, field: str = "line") -> Line:
    """The line ``"site/line"``; NotFound naming it."""
    line = s.scalar(select(Line).where(Line.key == key)) if isinstance(key, str) else None
    if line is None:
        raise NotFound("line", key, field)
    return line


def find_brand(s: Session, name: str, field: str = "brand") -> Brand:
    brand = s.scalar(select(Brand).where(Brand.name == name)) if isinstance(name, str) else None
    if brand is None:
        raise NotFound("brand", name, field)
    return brand


def line_detectors(s: Session, line: Line) -> dict[str, Node]:
    """Detector id -> node, for the detectors of a line."""
    rows = s.scalars(select(Node).where(Node.line_id == line.id, Node.kind == "detector"))
    return {n.name: n for n in rows}


def edge_of(s: Session, line: Line) -> Node | None:
    return s.scalar(select(Node).where(Node.line_id == line.id, Node.kind == "edge"))
