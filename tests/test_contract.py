"""The topic contract: topics.yaml loads, invalid contracts are refused with key paths,
topics format and match, and the generated documents never drift from it."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabbus import acl, topics
from fabbus.errors import ContractError
from fabbus.generate import DOCS_DIR, check_docs, main, render_docs
from fabbus.messages import MESSAGE_TYPES

GOOD = yaml.safe_load(topics.DEFAULT_PATH.read_text(encoding="utf-8"))


def _load_error(tmp_path: Path, data: Any = None, text: str | None = None) -> str:
    path = tmp_path / "topics.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(ContractError) as exc:
        topics.load(path)
    return str(exc.value)


def _mutated(edit) -> dict[str, Any]:  # noqa: ANN001
    data = copy.deepcopy(GOOD)
    edit(data)
    return data


# ---- the checked-in contract ---------------------------------------------------------------------

def test_checked_in_contract_loads() -> None:
    c = topics.load()
    assert c.prefix == GOOD["prefix"]
    assert list(c.topics) == list(GOOD["topics"])
    assert set(c.roles) == set(GOOD["roles"])
    for t in c.topics.values():
        assert set(t.payload) <= set(MESSAGE_TYPES)
        assert t.pattern.startswith(c.prefix + "/")


def test_every_message_type_travels_on_some_topic() -> None:
    used = {m for t in topics.load().topics.values() for m in t.payload}
    assert used == set(MESSAGE_TYPES)


# ---- drift of the generated documents ------------------------------------------------------------

def test_generated_docs_are_current() -> None:
    expected = render_docs(topics.load())
    for rel, text in expected.items():
        path = DOCS_DIR / rel
        assert path.is_file(), f"{path} missing: run `fab-contract generate`"
        assert path.read_text(encoding="utf-8") == text, f"{path} drifted: run `fab-contract generate`"
    assert check_docs(DOCS_DIR, topics.load()) == []


def test_generation_is_deterministic() -> None:
    assert render_docs(topics.load()) == render_docs(topics.load())


def test_generated_docs_cover_every_type_and_topic() -> None:
    files = render_docs(topics.load())
    assert {f"schemas/{m}.json" for m in MESSAGE_TYPES} | {"schemas/Envelope.json"} == {
        rel for rel in files if rel.startswith("schemas/")}
    asyncapi = yaml.safe_load(files["asyncapi.yaml"])
    assert asyncapi["asyncapi"].startswith("3.")
    c = topics.load()
    for t in c.topics.values():
        channel = asyncapi["channels"][t.name]
        assert channel["address"] == t.pattern
        assert set(channel.get("parameters", {})) == set(t.placeholders)
        for role in t.publishers:
            op = asyncapi["operations"][f"{role}_send_{t.name}"]
            assert op["bindings"]["mqtt"]["qos"] == t.qos and op["bindings"]["mqtt"]["retain"] == t.retain
        for role in t.subscribers:
            assert asyncapi["operations"][f"{role}_receive_{t.name}"]["action"] == "receive"
        assert f"`{t.pattern}`" in files["topics.md"]


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    target = tmp_path / "docs"
    assert main(["generate", "--docs", str(target)]) == 0
    assert main(["check", "--docs", str(target)]) == 0
    return target


@pytest.mark.parametrize("damage", ["edit", "delete", "stale"])
def test_check_fails_when_a_doc_drifts(docs_copy: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    if damage == "edit":
        victim = docs_copy / "topics.md"
        victim.write_text(victim.read_text(encoding="utf-8") + "\nhand edit\n", encoding="utf-8")
    elif damage == "delete":
        victim = docs_copy / "schemas" / "TaskStatus.json"
        victim.unlink()
    else:
        victim = docs_copy / "schemas" / "OldMessage.json"
        victim.write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["check", "--docs", str(docs_copy)]) == 1
    assert str(victim) in capsys.readouterr().out
    assert main(["generate", "--docs", str(docs_copy)]) == 0
    assert main(["check", "--docs", str(docs_copy)]) == 0
    assert not (docs_copy / "schemas" / "OldMessage.json").exists()


def test_check_follows_the_contract(docs_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    changed = _mutated(lambda d: d["topics"]["edge_state"].update(qos=0))
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
    capsys.readouterr()
    assert main(["check", "--docs", str(docs_copy), "--topics", str(path)]) == 1
    out = capsys.readouterr().out
    assert "asyncapi.yaml" in out and "topics.md" in out


# ---- invalid contracts ---------------------------------------------------------------------------

def _add_topic(d: dict[str, Any], name: str, pattern: str) -> None:
    d["topics"][name] = {**copy.deepcopy(d["topics"]["edge_state"]), "pattern": pattern}


INVALID = {
    "unknown key": (lambda d: d["topics"]["edge_state"].update(colour="red"),
                    ["topics.edge_state.colour", "Extra inputs"]),
    "unknown top-level key": (lambda d: d.update(extra=1), ["extra: Extra inputs"]),
    "wildcard +": (lambda d: d["topics"]["edge_state"].update(pattern="fab/v1/{site}/+/edge/state"),
                   ["topics.edge_state.pattern", "wildcard"]),
    "wildcard #": (lambda d: d["topics"]["edge_state"].update(pattern="fab/v1/{site}/{line}/edge/#"),
                   ["topics.edge_state.pattern", "wildcard"]),
    "empty level": (lambda d: d["topics"]["edge_state"].update(pattern="fab/v1/{site}//edge/state"),
                    ["topics.edge_state.pattern", "empty level"]),
    "trailing slash": (lambda d: d["topics"]["edge_state"].update(pattern="fab/v1/{site}/{line}/edge/"),
                       ["topics.edge_state.pattern", "empty level"]),
    "unknown placeholder": (lambda d: d["topics"]["edge_state"].update(pattern="fab/v1/{plant}/{line}/edge/state"),
                            ["topics.edge_state.pattern", "unknown placeholder {plant}"]),
    "partial placeholder": (lambda d: d["topics"]["edge_state"].update(pattern="fab/v1/{site}/l{line}/edge/state"),
                            ["topics.edge_state.pattern", "literal"]),
    "unknown payload type": (lambda d: d["topics"]["edge_state"].update(payload=["NodeStatus"]),
                             ["topics.edge_state.payload", "unknown payload type 'NodeStatus'"]),
    "unknown role": (lambda d: d["topics"]["edge_state"].update(publishers=["robot"]),
                     ["topics.edge_state.publishers", "unknown role 'robot'"]),
    "scoped role outside its scope": (lambda d: d["topics"]["edge_state"].update(publishers=["detector"]),
                                      ["topics.edge_state.publishers", "role 'detector' is scoped"]),
    "subscriber outside its scope": (lambda d: d["topics"]["cloud_state"].update(subscribers=["edge"]),
                                     ["topics.cloud_state.subscribers", "role 'edge' is scoped"]),
    "overlapping patterns": (lambda d: _add_topic(d, "edge_other", "fab/v1/{site}/{line}/edge/{task}"),
                             ["topics.edge_other.pattern", "overlaps topics.edge_state"]),
    "identical patterns": (lambda d: _add_topic(d, "edge_twin", "fab/v1/{site}/{line}/edge/state"),
                           ["topics.edge_twin.pattern", "overlaps topics.edge_state"]),
    "qos 3": (lambda d: d["topics"]["edge_state"].update(qos=3), ["topics.edge_state.qos", "less than or equal to 2"]),
    "missing field": (lambda d: d["topics"]["edge_state"].pop("retain"), ["topics.edge_state.retain", "required"]),
    "no publishers": (lambda d: d["topics"]["edge_state"].update(publishers=[]),
                      ["topics.edge_state.publishers", "at least 1"]),
    "outside the prefix": (lambda d: d["topics"]["edge_state"].update(pattern="other/{site}/{line}/edge/state"),
                           ["topics.edge_state.pattern", "prefix"]),
    "scope outside the prefix": (lambda d: d["roles"]["edge"].update(scope="x/{site}/{line}"),
                                 ["roles.edge.scope", "prefix"]),
    "placeholder twice": (lambda d: d["topics"]["edge_state"].update(pattern="fab/v1/{site}/{line}/edge/{site}"),
                          ["topics.edge_state.pattern", "used twice"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_contract_names_the_key_path(tmp_path: Path, case: str) -> None:
    edit, expected = INVALID[case]
    message = _load_error(tmp_path, _mutated(edit))
    assert str(tmp_path / "topics.yaml") in message
    for part in expected:
        assert part in message, message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["topics"]["edge_state"]["payload"] = ["Nope"]
        d["topics"]["task_status"]["pattern"] = "fab/v1/{site}/{line}/edge/task/+/status"
        d["topics"]["detector_error"]["publishers"] = ["ghost"]

    message = _load_error(tmp_path, _mutated(edit))
    for where in ("topics.edge_state.payload", "topics.task_status.pattern", "topics.detector_error.publishers"):
        assert where in message


@pytest.mark.parametrize("text, expected", [
    ("topics: [unclosed\n", "not valid YAML"),
    ("version: 1\nversion: 2\n", "duplicate key 'version'"),
    ("", "<root>: Input should be a valid dictionary"),
    ("- a\n- b\n", "<root>: Input should be a valid dictionary"),
])
def test_malformed_yaml(tmp_path: Path, text: str, expected: str) -> None:
    message = _load_error(tmp_path, text=text)
    assert expected in message
    if "YAML" in expected:
        assert "line 1" in message


def test_duplicate_topic_names_are_refused(tmp_path: Path) -> None:
    text = topics.DEFAULT_PATH.read_text(encoding="utf-8")
    start = text.index("  edge_state:")
    block = text[start:text.index("  detector_state:")]
    message = _load_error(tmp_path, text=text + block)  # topics is the last mapping of the file
    assert "duplicate key 'edge_state'" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read"):
        topics.load(tmp_path / "nope.yaml")


# ---- building and matching topics ----------------------------------------------------------------

@pytest.fixture(scope="module")
def c() -> topics.Contract:
    return topics.load()


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "a+b", "a#", "white space", "-lead", "x" * 65, 5, None])
def test_format_rejects_bad_ids(c: topics.Contract, bad: Any) -> None:
    with pytest.raises(ContractError, match="line"):
        c.topic("edge_state").format(site="s1", line=bad)
    with pytest.raises(ContractError):
        c.topic("edge_state").filter(line=bad)


def test_format_requires_exactly_the_placeholders(c: topics.Contract) -> None:
    t = c.topic("task_status")
    assert t.format(site="s1", line="l1", task="t-1") == "fab/v1/s1/l1/edge/task/t-1/status"
    with pytest.raises(ContractError, match=r"missing ids \['task'\]"):
        t.format(site="s1", line="l1")
    with pytest.raises(ContractError, match=r"unknown ids \['det'\]"):
        t.format(site="s1", line="l1", task="t", det="d1")
    with pytest.raises(ContractError, match="unknown topic name"):
        c.topic("no_such_topic")


def test_filter_wildcards(c: topics.Contract) -> None:
    t = c.topic("delivery_status")
    assert t.filter() == "fab/v1/+/+/det/+/model/+/status"
    assert t.filter(site="s1", line="l1") == "fab/v1/s1/l1/det/+/model/+/status"
    assert t.filter(site="s1", line="l1", det="d1", brand="b") == t.format(site="s1", line="l1", det="d1", brand="b")
    with pytest.raises(ContractError, match=r"unknown ids \['task'\]"):
        t.filter(task="t1")


def test_match_round_trips_every_topic(c: topics.Contract) -> None:
    for t in c.topics.values():
        ids = {p: f"{p}-1.x_Y" for p in t.placeholders}
        concrete = t.format(**ids)
        assert c.match(concrete) == (t, ids)
        assert acl.topic_matches(t.filter(), concrete)
        assert acl.topic_matches(t.filter(**dict(list(ids.items())[:1])), concrete)
        others = [o.name for o in c.topics.values() if o is not t and o.match(concrete) is not None]
        assert others == [], f"{concrete} also matches {others}"


@pytest.mark.parametrize("topic", [
    "fab/v1/s1/l1/edge/state/extra", "fab/v1/s1/l1/edge", "fab/v2/s1/l1/edge/state", "fab/v1/s 1/l1/edge/state",
    "fab/v1/+/l1/edge/state", "fab/v1/s1/l1/edge/stat", "", "fab/v1//l1/edge/state",
])
def test_match_rejects_foreign_topics(c: topics.Contract, topic: str) -> None:
    assert c.match(topic) is None


# ---- the CLI ------------------------------------------------------------------------------------

def test_cli_validate_lists_key_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _mutated(lambda d: (d["topics"]["edge_state"].update(qos=3),
                              d["topics"]["edge_command"].update(payload=["Bogus"])))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "topics.edge_state.qos" in err
    path.write_text(yaml.safe_dump(_mutated(lambda d: d["topics"]["edge_command"].update(payload=["Bogus"]))))
    assert main(["validate", str(path)]) == 2
    assert "topics.edge_command.payload: unknown payload type 'Bogus'" in capsys.readouterr().err


def test_cli_validate_accepts_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(topics.DEFAULT_PATH)]) == 0
    assert "OK" in capsys.readouterr().out


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    shutil.copy(topics.DEFAULT_PATH, bad)
    bad.write_text(bad.read_text(encoding="utf-8").replace("qos: 0", "qos: 3", 1), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "fabbus.generate", "validate", str(bad)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert "topics.task_progress.qos" in run.stderr
    run = subprocess.run([sys.executable, "-m", "fabbus.generate", "check"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_cli_acl_writes_the_generated_acl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "broker" / "acl"
    assert main(["acl", "--cloud-user", "cloud", "--cloud-user", "worker", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == acl.generate(["cloud", "worker"])
    capsys.readouterr()
    assert main(["acl", "--cloud-user", "cloud"]) == 0
    assert capsys.readouterr().out == acl.generate(["cloud"])


def test_cli_acl_needs_a_cloud_user(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["acl"])
    assert exc.value.code == 2
    assert "--cloud-user" in capsys.readouterr().err
