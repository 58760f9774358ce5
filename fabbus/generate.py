"""fab-contract: the bus contract's command line.

    fab-contract generate [--topics PATH] [--docs DIR]   write docs/schemas/*.json, docs/asyncapi.yaml, docs/topics.md
    fab-contract check    [--topics PATH] [--docs DIR]   exit 1 listing every generated file that is out of date
    fab-contract acl --cloud-user NAME [...] [-o FILE]  the Mosquitto ACL for the contract
    fab-contract passwd FILE USERNAME [--password P]    add or update a user (password from stdin otherwise)
    fab-contract validate [PATH]                         check a topics.yaml; exit 2 listing every problem
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from fabbus import acl, topics
from fabbus.asyncapi import build as build_asyncapi
from fabbus.errors import ConfigError, FabError
from fabbus.passwords import hash_password, read_password_file
from fabbus.schemas import schema_files
from fabbus.topicdoc import render as render_topics

log = logging.getLogger(__name__)

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
SCHEMA_DIR = "schemas"
_YAML_HEADER = "# Generated from topics.yaml and fabbus/messages.py by `fab-contract generate`; do not edit.\n"


class _Dumper(yaml.SafeDumper):
    """Stable YAML: no anchors or aliases, multi-line strings as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def render_docs(c: topics.Contract) -> dict[str, str]:
    """Relative path under the docs folder -> file text, for every generated document."""
    files = {f"{SCHEMA_DIR}/{name}": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
             for name, schema in schema_files().items()}
    files["asyncapi.yaml"] = _YAML_HEADER + dump_yaml(build_asyncapi(c))
    files["topics.md"] = render_topics(c)
    return files


def _stale(docs: Path, expected: dict[str, str]) -> list[str]:
    """Schema files in the docs folder that nothing generates any more."""
    folder = docs / SCHEMA_DIR
    found = sorted(f"{SCHEMA_DIR}/{p.name}" for p in folder.glob("*.json")) if folder.is_dir() else []
    return [rel for rel in found if rel not in expected]


def check_docs(docs: Path, c: topics.Contract) -> list[str]:
    """One line per generated file that differs from what would be generated; empty when current."""
    expected = render_docs(c)
    problems = []
    for rel, text in expected.items():
        path = docs / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from what topics.yaml and the message models generate")
    problems += [f"{docs / rel}: stale (no message type generates it)" for rel in _stale(docs, expected)]
    return problems


def write_docs(docs: Path, c: topics.Contract) -> list[Path]:
    """Write every generated file that changed and remove stale schema files; the paths touched."""
    expected = render_docs(c)
    touched = []
    for rel, text in expected.items():
        path = docs / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        log.debug("wrote %s", path)
        touched.append(path)
    for rel in _stale(docs, expected):
        (docs / rel).unlink()
        touched.append(docs / rel)
    return touched


def set_password(path: str | Path, username: str, password: str) -> bool:
    """Add or update one user in a Mosquitto-format password file; True when it was updated."""
    if not username or username != username.strip() or any(ch in username for ch in ":\r\n\0"):
        raise ConfigError(f"username {username!r}: must be non-empty, without ':', line breaks or outer spaces")
    if not password or any(ch in password for ch in "\r\n\0"):
        raise ConfigError("password: must be non-empty and a single line")
    p = Path(path)
    lines = []
    if p.exists():
        read_password_file(p)  # refuses a malformed file, naming the line
        lines = p.read_text(encoding="utf-8").splitlines()
    entry = f"{username}:{hash_password(password)}"
    out, updated = [], False
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped.partition(":")[0] == username:
            if not updated:
                out.append(entry)
            updated = True
            continue
        out.append(line)
    if not updated:
        out.append(entry)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, p)
    return updated


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ConfigError("passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _cmd_generate(args: argparse.Namespace) -> int:
    touched = write_docs(args.docs, topics.load(args.topics))
    for path in touched:
        print(f"wrote {path}" if path.exists() else f"removed {path}")
    if not touched:
        print(f"{args.docs}: up to date")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    problems = check_docs(args.docs, topics.load(args.topics))
    for line in problems:
        print(line)
    if problems:
        print("run `fab-contract generate` and commit the result", file=sys.stderr)
        return 1
    print(f"{args.docs}: up to date")
    return 0


def _cmd_acl(args: argparse.Namespace) -> int:
    text = acl.generate(args.cloud_user, topics.load(args.topics))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_passwd(args: argparse.Namespace) -> int:
    password = args.password if args.password is not None else _read_password()
    updated = set_password(args.file, args.username, password)
    print(f"{args.file}: {'updated' if updated else 'added'} {args.username}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    c = topics.load(args.path)
    types = {m for t in c.topics.values() for m in t.payload}
    print(f"{c.path}: OK ({len(c.topics)} topics, {len(c.roles)} roles, {len(types)} payload types)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fab-contract", description="The bus contract: documents, ACL, passwords.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("generate", _cmd_generate, "write the generated documents"),
                             ("check", _cmd_check, "exit 1 when a generated document is out of date")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--topics", type=Path, default=None, help="topics.yaml (default: the project's)")
        p.add_argument("--docs", type=Path, default=DOCS_DIR, help=f"docs folder (default: {DOCS_DIR})")
        p.set_defaults(func=func)
    p = sub.add_parser("acl", help="print or write the Mosquitto ACL generated from topics.yaml")
    p.add_argument("--cloud-user", action="append", required=True, metavar="NAME", help="a cloud username")
    p.add_argument("--topics", type=Path, default=None, help="topics.yaml (default: the project's)")
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    p.set_defaults(func=_cmd_acl)
    p = sub.add_parser("passwd", help="add or update a user in a Mosquitto-format password file")
    p.add_argument("file", type=Path)
    p.add_argument("username")
    p.add_argument("--password", help="the password (default: read from stdin)")
    p.set_defaults(func=_cmd_passwd)
    p = sub.add_parser("validate", help="check a topics.yaml and list every problem")
    p.add_argument("path", nargs="?", type=Path, default=None, help="topics.yaml (default: the project's)")
    p.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except FabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
