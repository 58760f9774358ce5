"""The broker ACL generated from topics.yaml, checked exhaustively against the contract,
and the Mosquitto-format password file."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fabbus import acl, topics
from fabbus.acl import AclFile
from fabbus.errors import ConfigError
from fabbus.generate import main, set_password
from fabbus.passwords import hash_password, read_password_file, verify_password, write_password_file

CLOUD_USERS = ["cloud", "cloud-worker"]
ID_VALUES = {"site": ["s1", "s2"], "line": ["l1", "l2"], "det": ["d1", "d2"], "task": ["t1"], "model": ["m1"],
             "brand": ["b1"], "node": ["cloud", "n2"]}
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@dataclass(frozen=True)
class Node:
    role: str
    username: str
    scope: str | None  # concrete scope topic prefix, None for the cloud
    ids: tuple[tuple[str, str], ...] = ()  # the ids that fix the scope

    @property
    def client_id(self) -> str:
        return f"fab-{self.role}-{self.username.replace('/', '.')}"


C = topics.load()
ACL = AclFile.parse(acl.generate(CLOUD_USERS, C))


def _scope_ids(role: topics.Role) -> list[str]:
    return [lvl[1:-1] for lvl in role.scope_levels if lvl.startswith("{")]


def _nodes() -> list[Node]:
    nodes = [Node(r.name, u, None) for r in C.roles.values() if r.scope is None for u in CLOUD_USERS]
    for role in C.roles.values():
        if role.scope is None:
            continue
        keys = _scope_ids(role)
        for values in itertools.product(*(ID_VALUES[k] for k in keys)):
            ids = dict(zip(keys, values))
            scope = "/".join(ids[lvl[1:-1]] if lvl.startswith("{") else lvl for lvl in role.scope_levels)
            nodes.append(Node(role.name, acl.username_for(role.name, C, **ids), scope, tuple(ids.items())))
    return nodes


def _instances(t: topics.Topic) -> list[str]:
    keys = t.placeholders
    return [t.format(**dict(zip(keys, values))) for values in itertools.product(*(ID_VALUES[k] for k in keys))]


NODES = _nodes()
SCOPED = [n for n in NODES if n.scope is not None]


def _expected(node: Node, t: topics.Topic, instance: str, action: str) -> bool:
    """What topics.yaml says: the role is listed for the action and the topic lies in the node's scope."""
    roles = t.publishers if action == "publish" else t.subscribers
    if node.scope is None:
        return True
    return node.role in roles and instance.startswith(node.scope + "/")


def _filters_intersect(a: str, b: str) -> bool:
    """True when some topic matches both MQTT filters."""
    al, bl = a.split("/"), b.split("/")
    for i in range(max(len(al), len(bl))):
        x, y = (al[i] if i < len(al) else None), (bl[i] if i < len(bl) else None)
        if x == "#" or y == "#":
            return True
        if x is None or y is None or (x != y and "+" not in (x, y)):
            return False
    return True


def test_nodes_cover_every_role() -> None:
    assert {n.role for n in NODES} == set(C.roles)
    assert len(SCOPED) >= 8


@pytest.mark.parametrize("node", NODES, ids=lambda n: f"{n.role}:{n.username}")
def test_acl_matches_the_contract_exhaustively(node: Node) -> None:
    """For every topic instance, publish and read/subscribe exactly as topics.yaml gives the node's role."""
    checked = 0
    for t in C.topics.values():
        for instance in _instances(t):
            pub = ACL.can_publish(node.username, node.client_id, instance)
            read = ACL.can_read(node.username, node.client_id, instance)
            sub = ACL.can_subscribe(node.username, node.client_id, instance)
            assert pub == _expected(node, t, instance, "publish"), f"publish {instance} ({t.name})"
            assert read == sub == _expected(node, t, instance, "subscribe"), f"read {instance} ({t.name})"
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("node", NODES, ids=lambda n: f"{n.role}:{n.username}")
def test_subscription_filters(node: Node) -> None:
    for t in C.topics.values():
        may_read = node.role in t.subscribers
        if node.scope is None:
            assert ACL.can_subscribe(node.username, node.client_id, t.filter())
            continue
        own = dict(node.ids)
        if set(own) <= set(t.placeholders):  # the node's own filter: its ids, '+' for the rest
            assert ACL.can_subscribe(node.username, node.client_id, t.filter(**own)) == may_read, t.name
        assert not ACL.can_subscribe(node.username, node.client_id, t.filter()), t.name
    assert ACL.can_subscribe(node.username, node.client_id, f"{C.prefix}/#") == (node.scope is None)
    assert not ACL.can_subscribe(node.username, node.client_id, "#")


def test_cloud_may_use_everything_under_the_prefix_only() -> None:
    for user in CLOUD_USERS:
        for topic in (f"{C.prefix}/anything/at/all", f"{C.prefix}/s9/l9/edge/cmd"):
            assert ACL.can_publish(user, "c", topic) and ACL.can_read(user, "c", topic)
        assert ACL.can_subscribe(user, "c", f"{C.prefix}/+/+/edge/task/+/status")
        assert not ACL.can_publish(user, "c", "other/topic")
        assert not ACL.can_publish(user, "c", "$SYS/broker/x")
    assert not ACL.can_publish("stranger", "c", f"{C.prefix}/cloud/x/state")


def test_edge_of_one_line_sees_nothing_of_another() -> None:
    edge = acl.username_for("edge", C, site="s1", line="l1")
    for t in C.topics.values():
        if "site" in t.placeholders and "line" in t.placeholders:
            ids = {p: ID_VALUES[p][0] for p in t.placeholders} | {"site": "s1", "line": "l2"}
            other = t.format(**ids)
            assert not ACL.can_publish(edge, "e", other) and not ACL.can_read(edge, "e", other), t.name


def test_isolation_between_nodes() -> None:
    """No grant of a node reaches into another node's scope, unless that scope lies inside its own."""
    pairs = 0
    for a, b in itertools.permutations(SCOPED, 2):
        assert a.scope and b.scope
        if b.scope.startswith(a.scope + "/"):
            continue  # an edge reaches its own line's detectors, as the contract says
        nested = a.scope.startswith(b.scope + "/")  # a detector inside its edge's line
        grants = ACL._rules(a.username, a.client_id)  # noqa: SLF001 (the expanded grants)
        assert grants
        for rule in grants:
            if nested and rule.topic.startswith(a.scope + "/"):
                continue  # its own topics, which lie in the edge's scope too
            assert not _filters_intersect(rule.topic, b.scope + "/#"), f"{a.username}: {rule.topic} reaches {b.scope}"
        pairs += 1
    assert pairs > 50


def test_grants_stay_inside_the_node_scope() -> None:
    for node in SCOPED:
        for rule in ACL._rules(node.username, node.client_id):  # noqa: SLF001
            assert rule.topic.startswith(node.scope + "/"), f"{node.username}: {rule.topic}"


def test_site_named_cloud_cannot_spoof_a_cloud_process() -> None:
    # cloud_state's first level is "_cloud", which no id can take (ids start with a letter or digit)
    edge = acl.username_for("edge", C, site="cloud", line="app")
    assert not ACL.can_publish(edge, "e", C.topic("cloud_state").format(node="app"))


@pytest.mark.parametrize("username", ["+", "#", "s1/+", "+/l1", "s1/#", "s1/l1/det/+", "a+b/l1"])
def test_dangerous_usernames_get_no_pattern_grants(username: str) -> None:
    assert ACL._rules(username, "client") == []  # noqa: SLF001
    for t in C.topics.values():
        for instance in _instances(t):
            assert not ACL.can_publish(username, "client", instance)
            assert not ACL.can_read(username, "client", instance)
    assert not ACL.can_publish(username, "client", f"{C.prefix}/{username}/edge/state")


def test_dangerous_client_ids_get_no_pattern_grants() -> None:
    edge = acl.username_for("edge", C, site="s1", line="l1")
    topic = C.topic("edge_state").format(site="s1", line="l1")
    assert ACL.can_publish(edge, "edge-1", topic)
    assert not ACL.can_publish(edge, "edge+1", topic)
    assert not ACL.can_publish(edge, "#", topic)
    assert ACL.can_publish("cloud", "cloud#1", topic)  # user blocks still apply, as in Mosquitto


def test_anonymous_gets_nothing() -> None:
    for t in C.topics.values():
        assert not ACL.can_publish(None, "anon", _instances(t)[0])
        assert not ACL.can_read(None, "anon", _instances(t)[0])


@pytest.mark.parametrize("ids", [{"site": "s1/x", "line": "l1"}, {"site": "+", "line": "l1"},
                                 {"site": "s1", "line": "#"}, {"site": "", "line": "l1"}, {"site": "s1"}])
def test_username_for_rejects_bad_ids(ids: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="username for role 'edge'"):
        acl.username_for("edge", C, **ids)


def test_username_for_roles() -> None:
    assert acl.username_for("detector", C, site="s1", line="l1", det="d1") == "s1/l1/det/d1"
    with pytest.raises(ConfigError, match="no scope"):
        acl.username_for("cloud", C, node="n")
    with pytest.raises(ConfigError, match="unknown role 'robot'"):
        acl.username_for("robot", C)


def test_generated_acl_is_stable() -> None:
    assert acl.generate(["b", "a", "b"], C) == acl.generate(["a", "b"], C)
    assert acl.generate(["a"], C).endswith("\n")


@pytest.mark.parametrize("text, line", [
    ("user cloud\ntopic readwrite fab/#\nbogus line\n", 3),
    ("# comment\n\nuser\n", 3),
    ("pattern read \n", 1),
    ("user a\ntopic deny\n", 2),
    ("user a\ntopic\n", 2),
])
def test_acl_parse_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError, match=f"^acl.conf:{line}: "):
        AclFile.parse(text, "acl.conf")


def test_acl_load(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text(acl.generate(["cloud"], C), encoding="utf-8")
    assert AclFile.load(path).can_publish("cloud", "c", f"{C.prefix}/x")
    with pytest.raises(ConfigError, match="cannot read ACL file"):
        AclFile.load(tmp_path / "missing")


# ---- password files -------------------------------------------------------------------------------

def test_hash_verify_round_trip() -> None:
    encoded = hash_password("s3cret pass ü")
    assert encoded.startswith("$7$101$")
    assert verify_password("s3cret pass ü", encoded)
    assert not verify_password("s3cret pass u", encoded)
    assert hash_password("x") != hash_password("x")  # salted
    assert verify_password("x", hash_password("x", iterations=1000))


@pytest.mark.parametrize("encoded", [
    "", "plain", "$7$0$AAAA$AAAA", "$7$-5$AAAA$AAAA", "$7$x$AAAA$AAAA", "$7$101$!!!!$AAAA", "$7$101$AAAA",
    "$6$onlysalt", "$5$AAAA$AAAA", "$7$101$AAAA$AAAA$AAAA",
])
def test_verify_never_raises_on_malformed_hashes(encoded: str) -> None:
    assert verify_password("x", encoded) is False


def _mosquitto_passwd(*args: str) -> None:
    assert os.access(MOSQUITTO_PASSWD, os.X_OK), "mosquitto_passwd is missing: `make setup` installs mosquitto"
    subprocess.run([MOSQUITTO_PASSWD, *args], check=True, capture_output=True, timeout=30)


@pytest.mark.parametrize("scheme", [[], ["-H", "sha512-pbkdf2"], ["-H", "sha512"]])
def test_mosquitto_passwd_files_are_accepted(tmp_path: Path, scheme: list[str]) -> None:
    path = tmp_path / "passwd"
    path.touch()
    users = {"cloud": "pw-1", "s1/l1": "long password with spaces", "s1/l1/det/d1": "ünïcode"}
    for user, pw in users.items():
        _mosquitto_passwd(*scheme, "-b", str(path), user, pw)
    entries = read_password_file(path)
    assert set(entries) == set(users)
    for user, pw in users.items():
        assert verify_password(pw, entries[user])
        assert not verify_password(pw + "x", entries[user])


def test_mosquitto_passwd_updates_our_files(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_password_file(path, {"cloud": "a"})
    set_password(path, "s1/l1", "b")
    _mosquitto_passwd("-b", str(path), "s1/l2", "c")
    entries = read_password_file(path)
    assert [verify_password(pw, entries[u]) for u, pw in (("cloud", "a"), ("s1/l1", "b"), ("s1/l2", "c"))] == [
        True, True, True]


@pytest.mark.parametrize("bad", ["no colon here", ":$7$101$AAAA$AAAA", "u:$5$AAAA$AAAA", "u:$7$101$AAAA",
                                 "u:plaintext", "u:"])
def test_malformed_password_lines_name_the_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"cloud:{hash_password('x')}\n\n# a comment\n{bad}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path}:4: expected"):
        read_password_file(path)


def test_cli_passwd_adds_and_updates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broker" / "passwd"
    assert main(["passwd", str(path), "cloud", "--password", "one"]) == 0
    assert main(["passwd", str(path), "s1/l1", "--password", "two"]) == 0
    assert "added s1/l1" in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["passwd", str(path), "cloud", "--password", "three"]) == 0
    assert "updated cloud" in capsys.readouterr().out
    entries = read_password_file(path)
    assert list(entries) == ["cloud", "s1/l1"] and len(path.read_text().splitlines()) == 2
    assert verify_password("three", entries["cloud"]) and not verify_password("one", entries["cloud"])
    assert verify_password("two", entries["s1/l1"])


def test_cli_passwd_reads_stdin(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    run = subprocess.run([sys.executable, "-m", "fabbus.generate", "passwd", str(path), "s1/l1/det/d1"],
                         input="from stdin\n", capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert verify_password("from stdin", read_password_file(path)["s1/l1/det/d1"])


@pytest.mark.parametrize("args, reason", [
    (["a:b", "--password", "x"], "username 'a:b'"),
    (["", "--password", "x"], "username ''"),
    (["user", "--password", ""], "password: must be non-empty"),
])
def test_cli_passwd_refuses_bad_input(tmp_path: Path, args: list[str], reason: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    assert main(["passwd", str(path), *args]) == 2
    assert reason in capsys.readouterr().err
    assert not path.exists()


def test_cli_passwd_refuses_a_malformed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"cloud:{hash_password('x')}\ngarbage\n", encoding="utf-8")
    before = path.read_text()
    assert main(["passwd", str(path), "cloud", "--password", "y"]) == 2
    assert f"{path}:2:" in capsys.readouterr().err
    assert path.read_text() == before
