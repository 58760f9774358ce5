"""The data model, migrations, config, services and queries on SQLite and PostgreSQL (no broker)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from backend_support import CLASSES_A, FLEET, TRAIN_CONFIG, Stack, make_bundle, metrics
from cloud_app import ingest, queries, services
from cloud_app.config import CloudConfig, DispatchConfig, load_config
from cloud_app.db import Database
from cloud_app.dispatch import follow
from cloud_app.errors import Conflict, Invalid, NotFound
from cloud_app.fleet import sync_fleet
from cloud_app.models import Base, DetectorModel, ModelVersion, Node, Task, User
from cloud_app.registry import ModelStore, register_upload
from cloud_app.users import authenticate, create_api_token, create_user, user_for_token
from fabbus.errors import ConfigError
from fabbus.inbound import ReceivedMessage
from fabbus.messages import Message, ModelManifest, NodeState, TaskStatus, TrainingProgress
from fabbus.transfer import make_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    stack = Stack.create(request.param, tmp_path)
    database = Database(stack.database_url)
    try:
        database.migrate()
        with database.session() as s:
            sync_fleet(s, FLEET)
        yield database
    finally:
        database.close()
        stack.drop()


def test_migrations_match_the_models_and_go_down_and_up_again(db: Database) -> None:
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    db.downgrade("base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.migrate()
    db.migrate()  # idempotent
    assert "model_versions" in inspect(db.engine).get_table_names()


def test_config_file_loads_and_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(ROOT / "config/cloud.yaml")
    assert cfg.database_url == f"sqlite:///{(ROOT / 'var/cloud/cloud.db').resolve()}"
    assert cfg.fleet.brands["brandA"].ok == "good" and cfg.mqtt.username == "cloud"
    monkeypatch.setenv("FAB_CLOUD_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("FAB_CLOUD_REDIS_URL", "redis://127.0.0.1:6379/3")
    cfg = load_config(ROOT / "config/cloud.yaml")
    assert cfg.database_url == "postgresql+psycopg://u@h/db" and cfg.huey.url == "redis://127.0.0.1:6379/3"
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate: {max_accuracy_drop: 2}\nfleet: {brands: {b1: {classes: [a]}}}\nsurprise: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert "gate.max_accuracy_drop" in text and "fleet.brands.b1.classes" in text and "surprise" in text
    assert CloudConfig().model_store == Path("var/cloud/models")


def test_fleet_sync_is_idempotent_and_queries_show_it(db: Database) -> None:
    with db.session() as s:
        sync_fleet(s, FLEET)
    with db.session(readonly=True) as s:
        fleet = queries.fleet(s)
        assert [ln["key"] for ln in fleet[0]["lines"]] == ["s1/l1", "s1/l2"]
        assert [d["key"] for d in fleet[0]["lines"][0]["detectors"]] == ["s1/l1/det/d1", "s1/l1/det/d2"]
        assert fleet[0]["lines"][0]["edge"]["online"] is False
        assert queries.brands(s)[0] == {"name": "brandA", "classes": CLASSES_A, "ok_class": "good"}


def test_train_task_validation_names_the_field(db: Database) -> None:
    ok = dict(line="s1/l1", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG, user="alice")
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"line": "s1/l9"}, NotFound, "line"),
        ({"brand": "nope"}, NotFound, "brand"),
        ({"detectors": ["d1", "d7"]}, NotFound, "detectors.1"),
        ({"detectors": []}, Invalid, "detectors"),
        ({"config": {**TRAIN_CONFIG, "epochs": 0}}, Invalid, "config.epochs"),
        ({"config": {**TRAIN_CONFIG, "classes": ["good", "scratch"]}}, Invalid, "config.classes"),
        ({"config": {**TRAIN_CONFIG, "classes": ["spot", "good", "scratch"]}}, Invalid, "config.classes"),
        ({"base_model": "f" * 64}, NotFound, "base_model"),
    ]
    for change, exc, field in cases:
        with pytest.raises(exc) as err, db.session() as s:
            services.create_train_task(s, **{**ok, **change})
        assert field in err.value.fields, (change, err.value.fields)  # type: ignore[attr-defined]
    with pytest.raises(NotFound, match="unknown line 's1/l9'"), db.session() as s:
        services.create_train_task(s, **{**ok, "line": "s1/l9"})
    with db.session() as s:
        task = services.create_train_task(s, **ok)
        assert task.state == "QUEUED" and task.config["epochs"] == 2 and task.detectors == ["d1"]
    with db.session(readonly=True) as s:
        detail = queries.task_detail(s, task.id)
        assert detail["events"][0]["state"] == "QUEUED" and detail["line"] == "s1/l1"
        assert queries.list_tasks(s, line="s1/l1")[0]["id"] == task.id
        assert queries.list_tasks(s, state="SUCCEEDED") == []
        assert queries.latest_change_id(s) >= 1 and queries.changes_since(s)[0]["ref"] == task.id


def _register(db: Database, store: ModelStore, tmp: Path, tag: float, accuracy: float) -> int:
    bundle = make_bundle(tmp / f"b{tag}.bundle", tag=tag)
    m = make_manifest(bundle, model=f"up{int(tag)}", brand="brandA", chunk_size=4096, metrics=metrics(accuracy),
                      data_snapshot="snap-1")
    dest = store.path_for(m.sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle, dest)
    with db.session() as s:
        line = services.find_line(s, "s1/l1")
        mv, created = register_upload(s, store, line, m, dest)
        assert created
        again, created = register_upload(s, store, line, m, dest)
        assert again.id == mv.id and not created
        return mv.id


def test_deploy_needs_override_for_a_version_the_gate_did_not_approve(db: Database, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    v1 = _register(db, store, tmp_path, 1.0, 0.9)
    with db.session() as s:
        assert s.get(ModelVersion, v1).version == 1  # type: ignore[union-attr]
        s.get(ModelVersion, v1).gate_state = "rejected"  # type: ignore[union-attr]
        s.get(ModelVersion, v1).gate_reasons = ["recall: scratch 0.1 < 0.5"]  # type: ignore[union-attr]
    base = dict(line="s1/l1", brand="brandA", detectors=["d1", "d2"], model_version=v1, user="bob")
    with pytest.raises(Invalid, match="explicit override") as err, db.session() as s:
        services.create_deploy_task(s, **base)
    assert "override" in err.value.fields
    for change, exc, field in [({"model_version": 999}, NotFound, "model_version"),
                               ({"brand": "brandB"}, Invalid, "model_version"),
                               ({"detectors": ["d3"]}, NotFound, "detectors.0")]:
        with pytest.raises(exc) as e2, db.session() as s:
            services.create_deploy_task(s, **{**base, **change, "override": True})
        assert field in e2.value.fields  # type: ignore[attr-defined]
    with db.session() as s:
        task = services.create_deploy_task(s, **base, override=True, canary=True)
        assert {d.override_by for d in task.deployments} == {"bob"} and task.config["canary"] is True
    with db.session(readonly=True) as s:
        detail = queries.task_detail(s, task.id)
        assert [e["state"] for e in detail["events"]] == ["QUEUED", "OVERRIDE"]
        assert [d["detector"] for d in detail["deployments"]] == ["d1", "d2"]
        assert detail["model_version"]["version"] == 1


def test_registry_lineage_and_where_deployed(db: Database, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    v1 = _register(db, store, tmp_path, 1.0, 0.9)
    with db.session() as s:
        task = services.create_train_task(s, line="s1/l1", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG,
                                          user="alice", base_model=v1)
        parent_sha = s.get(ModelVersion, v1).sha256  # type: ignore[union-attr]
        assert task.base_model == parent_sha
        bundle = make_bundle(tmp_path / "child.bundle", tag=2.0)
        m = make_manifest(bundle, model="child", brand="brandA", chunk_size=4096, metrics=metrics(0.95),
                          task=task.id, base_model=parent_sha, data_snapshot="snap-2",
                          training_config=task.config)
        dest = store.path_for(m.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle, dest)
        child, _ = register_upload(s, store, task.line, m, dest)
        node = s.scalar(select(Node).where(Node.key == "s1/l1/det/d1"))
        s.add(DetectorModel(node_id=node.id, brand="brandA", model=parent_sha, version=1,  # type: ignore[union-attr]
                            sha256=parent_sha, model_version_id=v1))
        child_id = child.id
    with db.session(readonly=True) as s:
        rows = queries.registry(s, line="s1/l1", brand="brandA")
        assert [r["version"] for r in rows] == [2, 1]
        detail = queries.model_detail(s, child_id)
        assert detail["lineage"]["task"] == task.id and detail["lineage"]["data_snapshot"] == "snap-2"
        assert detail["lineage"]["parent"]["version"] == 1 and detail["ancestors"][0]["id"] == v1
        assert queries.model_detail(s, v1)["active_on"] == ["s1/l1/det/d1"]
        assert queries.fleet(s)[0]["lines"][0]["detectors"][0]["models"]["brandA"]["version"] == 1
        assert [e["state"] for e in queries.task_detail(s, task.id)["events"]] == ["QUEUED", "MODEL_UPLOADED"]
        with pytest.raises(NotFound):
            queries.model_detail(s, 12345)


def test_cancel(db: Database) -> None:
    with db.session() as s:
        queued = services.create_train_task(s, line="s1/l1", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG,
                                            user="alice")
        running = services.create_train_task(s, line="s1/l2", brand="brandA", detectors=["d1"],
                                             config=TRAIN_CONFIG, user="alice")
        running.state, running.dispatch_attempts = "IN_PROGRESS", 1
    with db.session() as s:
        task, send = services.cancel_task(s, queued.id, user="carol")
        assert (task.state, send) == ("CANCELED", False)  # never sent: nothing to tell the edge
        task, send = services.cancel_task(s, running.id, user="carol", reason="wrong data")
        assert (task.state, send, task.cancel_requested_by) == ("IN_PROGRESS", True, "carol")
    with pytest.raises(Conflict), db.session() as s:
        services.cancel_task(s, queued.id, user="carol")
    with pytest.raises(NotFound), db.session() as s:
        services.cancel_task(s, "train-nope", user="carol")
    with db.session(readonly=True) as s:
        assert s.get(Task, running.id).events[-1].state == "CANCEL_REQUESTED"  # type: ignore[union-attr]


def test_users_and_tokens(db: Database) -> None:
    with db.session() as s:
        user = create_user(s, "alice", "correct horse", "engineer")
        token = create_api_token(s, user, "ci")
        with pytest.raises(Invalid) as err:
            create_user(s, "bob", "short", "king")
        assert set(err.value.fields) == {"password", "role"}
        with pytest.raises(Conflict):
            create_user(s, "alice", "another password", "viewer")
    with db.session() as s:
        assert authenticate(s, "alice", "correct horse").username == "alice"  # type: ignore[union-attr]
        assert authenticate(s, "alice", "wrong") is None and authenticate(s, "nobody", "x") is None
        assert user_for_token(s, token).role == "engineer"  # type: ignore[union-attr]
        assert user_for_token(s, token + "x") is None
        assert token not in {t.token_hash for t in s.get(User, user.id).tokens}  # type: ignore[union-attr]


def test_manifest_for_unknown_brand_is_refused(db: Database, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    bundle = make_bundle(tmp_path / "x.bundle", brand="brandZ")
    m = make_manifest(bundle, model="x", brand="brandZ", chunk_size=4096)
    with pytest.raises(NotFound, match="brandZ"), db.session() as s:
        register_upload(s, store, services.find_line(s, "s1/l1"), m, bundle)
    not_a_bundle = tmp_path / "junk.bundle"
    not_a_bundle.write_bytes(b"junk" * 300)
    m2 = ModelManifest(**{**make_manifest(not_a_bundle, model="j", brand="brandA", chunk_size=4096).model_dump()})
    with pytest.raises(Invalid, match="not a zip"), db.session() as s:
        register_upload(s, store, services.find_line(s, "s1/l1"), m2, not_a_bundle)


def test_follower_redispatches_lost_tasks_times_out_spent_ones_and_interrupts_silent_ones(db: Database) -> None:
    cfg = CloudConfig(database_url=db.url, fleet=FLEET,
                      dispatch=DispatchConfig(ack_timeout_s=1, ack_retries=1, silence_timeout_s=60,
                                              redispatch_after_s=10))
    new = dict(brand="brandA", detectors=["d1"], config=TRAIN_CONFIG, user="alice")
    with db.session() as s:
        lost = services.create_train_task(s, line="s1/l1", **new)            # its enqueue was lost
        spent = services.create_train_task(s, line="s1/l1", **new)           # a worker died after its last attempt
        spent.dispatch_attempts, spent.dispatch_lease = 2, time.time() - 1
        silent = services.create_train_task(s, line="s1/l2", **new)
        silent.state, silent.accepted_at, silent.last_heard_at = "IN_PROGRESS", time.time(), time.time()
        held = services.create_train_task(s, line="s1/l2", **new)            # a worker waits for its ack
        held.dispatch_attempts, held.dispatch_lease = 1, time.time() + 1000
    enqueued: list[str] = []
    done = follow(db, cfg, enqueued.append, at=time.time() + 5)
    assert done == {"redispatched": [], "timed_out": [spent.id], "interrupted": []}
    done = follow(db, cfg, enqueued.append, at=time.time() + 61)
    assert done == {"redispatched": [lost.id], "timed_out": [], "interrupted": [silent.id]} and enqueued == [lost.id]
    assert follow(db, cfg, enqueued.append, at=time.time() + 62)["redispatched"] == []  # not twice in a row
    with db.session(readonly=True) as s:
        assert s.get(Task, held.id).state == "QUEUED"  # type: ignore[union-attr]
        assert "no news from edge s1/l2" in s.get(Task, silent.id).reason  # type: ignore[union-attr]
        assert [e.state for e in s.get(Task, lost.id).events] == ["QUEUED", "REDISPATCH"]  # type: ignore[union-attr]


def _received(topic: str, body: Any, ids: dict[str, str], *, ts: float, msg_id: str,
              retain: bool = False) -> ReceivedMessage:
    message = Message(type=type(body).__name__, id=msg_id, correlation_id=None, ts=ts, sender="s1/l1", body=body)
    return ReceivedMessage(topic, ids, message, f"fab/v1/{topic}", 1, retain)


def test_ingest_is_idempotent_and_orders_by_the_edges_clock(db: Database) -> None:
    with db.session() as s:
        tid = services.create_train_task(s, line="s1/l1", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG,
                                         user="alice").id
    l1 = {"site": "s1", "line": "l1", "task": tid}
    t0 = time.time()

    def status(state: str, ts: float, msg_id: str, retain: bool = False) -> None:
        with db.session() as s:
            body = TaskStatus.model_validate({"task": tid, "kind": "train", "state": state})
            ingest.on_task_status(s, _received("task_status", body, l1, ts=ts, msg_id=msg_id, retain=retain))

    status("ACCEPTED", t0, "a")
    status("ACCEPTED", t0, "a", retain=True)        # a retained replay of the same message
    status("IN_PROGRESS", t0 + 2, "b")
    status("ACCEPTED", t0 + 1, "c")                 # older than what was applied: recorded, not applied
    for i in range(25):                             # more chart points than kept: thinned, ends kept
        p = TrainingProgress(task=tid, epoch=1, epochs=1, batch=i, batches=25, percent=4 * i, accuracy=i / 25)
        with db.session() as s:
            ingest.on_task_progress(s, _received("task_progress", p, l1, ts=t0 + 3 + i, msg_id=f"p{i}"),
                                    max_points=10)
    with db.session() as s:  # a retained replay of old progress is not news
        ingest.on_task_progress(s, _received("task_progress", p, l1, ts=t0 + 3, msg_id="p0", retain=True))
    with db.session(readonly=True) as s:
        detail = queries.task_detail(s, tid)
    assert [e["state"] for e in detail["events"]] == ["QUEUED", "ACCEPTED", "IN_PROGRESS", "ACCEPTED"]
    assert detail["state"] == "IN_PROGRESS" and detail["events"][-1]["details"] == {"applied": False}
    batches = [pt["batch"] for pt in detail["points"]]
    assert len(batches) <= 10 and batches[0] == 0 and batches[-1] == 24 and batches == sorted(batches)
    assert detail["progress"]["batch"] == 24 and detail["percent"] == 96
    # node state: a last will is encoded before the birth of its connection; the newest received wins
    edge_ids = {"site": "s1", "line": "l1"}
    for online, ts, msg_id in ((True, t0 + 1, "birth"), (False, t0, "will")):
        body = NodeState(online=online, role="edge", node="s1/l1", since=ts, reason="" if online else "lost")
        with db.session() as s:
            ingest.on_node_state(s, _received("edge_state", body, edge_ids, ts=ts, msg_id=msg_id))
    with db.session() as s:  # discovery: a detector nobody configured
        body = NodeState(online=True, role="detector", node="s1/l3/det/d9", since=t0)
        ingest.on_node_state(s, _received("detector_state", body, {"site": "s1", "line": "l3", "det": "d9"},
                                          ts=t0, msg_id="d9"))
    with db.session(readonly=True) as s:
        lines = queries.fleet(s)[0]["lines"]
        assert (lines[0]["edge"]["online"], lines[0]["edge"]["reason"]) == (False, "lost")
        assert lines[2]["key"] == "s1/l3" and not lines[2]["configured"] and lines[2]["detectors"][0]["online"]


def test_a_train_task_starts_from_a_base_model_of_any_line_that_fits(db: Database, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    v1 = _register(db, store, tmp_path, 1.0, 0.9)  # line s1/l1, brandA
    with db.session() as s:
        s.get(ModelVersion, v1).training_config = {**TRAIN_CONFIG, "architecture": "small_cnn"}  # type: ignore
        sha = s.get(ModelVersion, v1).sha256  # type: ignore[union-attr]
    ok = dict(line="s1/l2", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG, user="alice")
    with db.session() as s:  # another line's version: the task's config now says where its weights come from
        task = services.create_train_task(s, **ok, base_model=v1)
        assert task.base_model == sha and task.config["pretrained"] == {"source": "base_model", "path": None}
        task = services.create_train_task(s, **{**ok, "config": {**TRAIN_CONFIG, "pretrained": {
            "source": "base_model"}}}, base_model=sha)
        assert task.base_model == sha and task.config["pretrained"]["source"] == "base_model"
    mobilenet = {**TRAIN_CONFIG, "architecture": "mobilenet_v2", "alpha": 0.35, "input_size": 32}
    cases = [
        ({"config": {**TRAIN_CONFIG, "pretrained": {"source": "base_model"}}},
         "pretrained.source 'base_model' needs base_model: the registry version to start from"),
        ({"base_model": v1, "config": {**TRAIN_CONFIG, "pretrained": {"source": "deployed"}}},
         f"the task starts from model version {v1}, but pretrained.source is 'deployed': leave it 'none' or set "
         "'base_model'"),
        ({"base_model": v1, "config": mobilenet},
         f"model version {v1} (v1 of s1/l1) is a small_cnn; its weights cannot start a mobilenet_v2 alpha 0.35"),
    ]
    for change, message in cases:
        with pytest.raises(Invalid) as err, db.session() as s:
            services.create_train_task(s, **{**ok, **change})
        assert err.value.fields == {"base_model": message}  # type: ignore[attr-defined]


def test_the_fleet_view_takes_the_same_few_queries_whatever_the_plant_size(db: Database) -> None:
    from sqlalchemy import event

    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.session(readonly=True) as s:
            fleet = queries.fleet(s)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    detectors = [d for site in fleet for ln in site["lines"] for d in ln["detectors"]]
    assert len(detectors) == 3 and all("models" in d for d in detectors)
    selects = [st for st in statements if st.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 4, selects  # sites, lines, nodes, detector models: not one per line or per node
