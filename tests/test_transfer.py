"""Chunked transfer (fabbus.chunks, fabbus.transfer, fabbus.assembler) over real brokers.

No mocks: an edge BusClient ("s1/l1") sends, detector BusClients ("s1/l1/det/d1",
"s1/l1/det/d2") receive on the delivery_* topics, through the embedded broker
and Mosquitto. Faults (a corrupt or lost chunk) are made by the publish callable
the Sender is given, as a bad link would make them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabbus.acks import Delivery, Pending
from fabbus.chunks import TransferError, check_manifest, iter_chunks, plan
from fabbus.client import BusClient, MqttConfig
from fabbus.messages import ChunkRequest, ModelChunk, ModelManifest
from fabbus.transfer import Receiver, Sender, TransferStatus, bus_publisher, make_manifest
from helpers import CLOUD, DET_L1_D1, DET_L1_D2, EDGE_L1, wait_for

L1 = {"site": "s1", "line": "l1"}
BRAND = "b1"
KB = 1024


@pytest.fixture(autouse=True)
def no_handler_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test in which a bus handler or a transfer callback raised."""
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def client(broker: Any, role: str, ids: dict[str, str], username: str) -> BusClient:
    cfg = MqttConfig(host=broker.host, port=broker.port, password=broker.users[username], reconnect_min_delay=0.1,
                     reconnect_max_delay=1.0, username=CLOUD if role == "cloud" else None)
    return BusClient(cfg, role, ids)


def edge(broker: Any) -> BusClient:
    return client(broker, "edge", L1, EDGE_L1).connect()


class Station:
    """A detector's delivery receiver for one brand, files under ``root/<det>/<brand>/``."""

    def __init__(self, broker: Any, det: str, root: Path, **kw: Any) -> None:
        username = {"d1": DET_L1_D1, "d2": DET_L1_D2}[det]
        self.client = client(broker, "detector", {**L1, "det": det}, username)
        self.statuses: list[TransferStatus] = []
        self.requests: list[ChunkRequest] = []
        self.dir = root / det / BRAND
        self.receiver = Receiver(lambda m: self.dir / f"{m.model}.zip", request=self._request,
                                 on_status=self.statuses.append, **{"quiet_s": 0.3, **kw})
        self.client.subscribe("delivery_manifest", self.receiver.on_manifest, brand=BRAND)
        self.client.subscribe("delivery_chunk", self.receiver.on_chunk, brand=BRAND)
        self.client.connect()

    def _request(self, req: ChunkRequest) -> None:
        self.requests.append(req)
        self.client.publish("delivery_request", req, brand=BRAND)

    def close(self) -> None:
        self.receiver.close()
        self.client.close()

    def __enter__(self) -> Station:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Delivering:
    """An edge-side Sender to one detector, sending and answering requests on its own thread."""

    def __init__(self, e: BusClient, det: str, src: Path, manifest: ModelManifest,
                 spoil: Callable[[ModelChunk], ModelChunk | None] | None = None, **kw: Any) -> None:
        publish = bus_publisher(e, "delivery_manifest", "delivery_chunk", det=det, brand=BRAND)

        def faulty(body: Any) -> Delivery:
            if spoil is not None and isinstance(body, ModelChunk):
                body = spoil(body)
                if body is None:                      # lost on the way: acknowledged, never delivered
                    done = Pending()
                    done.complete(None)
                    return Delivery("lost", 1, done)
            return publish(body)

        self.sender = Sender(src, manifest, faulty, **kw)
        e.subscribe("delivery_request", self.sender.on_request, det=det, brand=BRAND).wait(5)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name=f"sender-{det}")

    def _run(self) -> None:
        try:
            self.sender.send()
            self.sender.serve(timeout=60)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Delivering:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sender.close()
        self.thread.join(10)
        assert not self.errors, self.errors


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(hashlib.shake_256(seed.to_bytes(4, "big")).digest(size))
    return path


def once(pred: Callable[[ModelChunk], bool], change: Callable[[ModelChunk], ModelChunk | None]) -> Callable:
    """A spoiler that changes the first chunk matching ``pred`` and lets everything else through."""
    done: set[int] = set()

    def spoil(c: ModelChunk) -> ModelChunk | None:
        if pred(c) and c.index not in done:
            done.add(c.index)
            return change(c)
        return c
    return spoil


def flipped(c: ModelChunk) -> ModelChunk:
    data = bytearray(c.data)
    data[100] ^= 0xFF
    return c.model_copy(update={"data": bytes(data)})          # the announced sha256 stays the original's


def states(st: Station) -> list[str]:
    return [s.state for s in st.statuses]


def assert_delivered(st: Station, src: Path, status: TransferStatus) -> None:
    assert status.state == "COMPLETE", status
    assert status.path == st.dir / f"{status.model}.zip"
    assert hashlib.sha256(status.path.read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sorted(os.listdir(st.dir)) == [status.path.name]            # the temp file is gone


# ---- delivery through the broker --------------------------------------------------------------

def test_delivery_of_3mb_end_to_end(broker: Any, tmp_path: Path) -> None:
    src = random_file(tmp_path / "m1.zip", 3 * 1000 * 1000 + 17)
    manifest = make_manifest(src, model="m1", brand=BRAND, chunk_size=64 * KB, version=3)
    with edge(broker) as e, Station(broker, "d1", tmp_path, progress_interval=0.05) as st:
        start = time.monotonic()
        with Delivering(e, "d1", src, manifest) as d:
            status = st.receiver.wait(30)
        elapsed = time.monotonic() - start
        assert_delivered(st, src, status)
        assert status.manifest == manifest and status.received == manifest.chunk_count == 46
        assert d.sender.stats.chunks == 46 and d.sender.stats.bytes == manifest.size
    seen = states(st)
    assert seen[0] == "DOWNLOADING" and seen[-2:] == ["VERIFYING", "COMPLETE"]
    percents = [s.percent for s in st.statuses if s.state == "DOWNLOADING"]
    assert percents == sorted(percents) and len(percents) <= 2 + elapsed / 0.05   # rate-limited progress


def test_corrupted_chunk_is_detected_and_requested_again(broker: Any, tmp_path: Path) -> None:
    src = random_file(tmp_path / "m2.zip", 700 * KB, seed=2)
    manifest = make_manifest(src, model="m2", brand=BRAND, chunk_size=64 * KB)
    with edge(broker) as e, Station(broker, "d1", tmp_path) as st:
        with Delivering(e, "d1", src, manifest, spoil=once(lambda c: c.index == 5, flipped)) as d:
            status = st.receiver.wait(30)
        assert_delivered(st, src, status)
        assert any("chunk 5 is corrupt" in r for r in st.receiver.rejections)
        assert st.requests and 5 in (st.requests[0].chunks or [])   # more only if the stream stalled
        assert d.sender.stats.resent >= 1


def test_lost_chunks_are_requested_again(broker: Any, tmp_path: Path) -> None:
    src = random_file(tmp_path / "m3.zip", 500 * KB, seed=3)
    manifest = make_manifest(src, model="m3", brand=BRAND, chunk_size=32 * KB)
    lost = {0, 7, 15}                                               # first, middle and last chunk
    with edge(broker) as e, Station(broker, "d1", tmp_path) as st:
        with Delivering(e, "d1", src, manifest, spoil=once(lambda c: c.index in lost, lambda c: None)):
            status = st.receiver.wait(30)
        assert_delivered(st, src, status)
        assert set(lost) <= set(st.requests[0].chunks or [])


def test_two_detectors_in_parallel(broker: Any, tmp_path: Path) -> None:
    src = random_file(tmp_path / "m4.zip", 2 * 1000 * 1000, seed=4)
    manifest = make_manifest(src, model="m4", brand=BRAND, chunk_size=128 * KB)
    with edge(broker) as e, Station(broker, "d1", tmp_path) as s1, Station(broker, "d2", tmp_path) as s2:
        with Delivering(e, "d1", src, manifest), Delivering(e, "d2", src, manifest):
            results = [s1.receiver.wait(30), s2.receiver.wait(30)]
        assert_delivered(s1, src, results[0])
        assert_delivered(s2, src, results[1])


def test_upload_and_fetch_use_the_same_protocol(broker: Any, tmp_path: Path) -> None:
    """Edge -> cloud upload, then the edge fetches it back: only the topics differ."""
    src = random_file(tmp_path / "up.zip", 300 * KB, seed=5)
    manifest = make_manifest(src, model="m5", brand=BRAND, chunk_size=16 * KB)
    with edge(broker) as e, client(broker, "cloud", {"node": "app1"}, CLOUD) as cloud:
        ids = {**L1, "model": "m5"}
        cloud_rx = Receiver(tmp_path / "registry" / "m5.zip", quiet_s=0.3,
                            request=lambda req: cloud.publish("model_upload_request", req, **ids))
        with cloud_rx:
            cloud.subscribe("model_upload_manifest", cloud_rx.on_manifest, **ids).wait(5)
            cloud.subscribe("model_upload_chunk", cloud_rx.on_chunk, **ids).wait(5)
            with Sender(src, manifest, bus_publisher(e, "model_upload_manifest", "model_upload_chunk", model="m5")) \
                    as up:
                e.subscribe("model_upload_request", up.on_request, model="m5").wait(5)
                up.send()
                assert cloud_rx.wait(30).state == "COMPLETE"
        # the fetch: the cloud serves the registered file; the edge asks for all of it (chunks=None)
        fetched = tmp_path / "edge-cache" / "m5.zip"
        with Sender(fetched.parent.parent / "registry" / "m5.zip", manifest,
                    bus_publisher(cloud, "model_fetch_manifest", "model_fetch_chunk", **ids)) as serving, \
                Receiver(fetched, quiet_s=0.3, request=lambda req: e.publish("model_fetch_request", req,
                                                                              model="m5")) as edge_rx:
            cloud.subscribe("model_fetch_request", serving.on_request, **ids).wait(5)
            e.subscribe("model_fetch_manifest", edge_rx.on_manifest, model="m5").wait(5)
            e.subscribe("model_fetch_chunk", edge_rx.on_chunk, model="m5").wait(5)
            server = threading.Thread(target=serving.serve, args=(30,))
            server.start()
            try:
                e.publish("model_fetch_request", ChunkRequest(model="m5", reason="deploy t9"), model="m5").wait(5)
                assert edge_rx.wait(30).state == "COMPLETE"
            finally:
                serving.close()
                server.join(10)
        assert fetched.read_bytes() == src.read_bytes()


# ---- refusals ---------------------------------------------------------------------------------

def _manifest(**kw: Any) -> ModelManifest:
    fields: dict[str, Any] = {"model": "bad", "brand": BRAND, "size": 100_000, "sha256": "0" * 64,
                              "chunk_size": 32 * KB, "chunk_count": 4}
    return ModelManifest(**{**fields, **kw})


@pytest.mark.parametrize(("manifest", "reason"), [
    (_manifest(chunk_count=3), "chunk_count 3 does not match size 100000 and chunk_size 32768 (expected 4)"),
    (_manifest(chunk_count=40), "chunk_count 40 does not match"),
    (_manifest(size=10**9, chunk_count=30518), "exceeds the limit of 50000000 bytes"),
    (_manifest(chunk_size=4 * 1024 * 1024, chunk_count=1), "chunk_size 4194304 outside"),
])
def test_bad_manifests_are_refused_with_a_reason(broker: Any, tmp_path: Path, manifest: ModelManifest,
                                                  reason: str) -> None:
    with edge(broker) as e, Station(broker, "d1", tmp_path, max_size=50_000_000) as st:
        e.publish("delivery_manifest", manifest, det="d1", brand=BRAND).wait(5)
        status = st.receiver.wait(10)
        assert status.state == "FAILED" and reason in status.reason and status.reason.startswith("manifest refused")
        assert not st.dir.exists() or not os.listdir(st.dir)


def test_manifest_with_a_bad_hash_never_reaches_the_receiver(broker: Any, tmp_path: Path) -> None:
    bad = ModelManifest.model_construct(**{**_manifest().model_dump(), "sha256": "XYZ"})
    with pytest.raises(TransferError, match="sha256 'XYZ' is not 64 lowercase hex digits"):
        check_manifest(bad)
    with edge(broker) as e, Station(broker, "d1", tmp_path) as st:
        e.publish("delivery_manifest", bad, det="d1", brand=BRAND).wait(5)
        wait_for(lambda: st.client.stats["invalid"] == 1, what="the detector's client to drop the manifest")
        assert st.receiver.status is None


def test_bad_chunks_are_refused_and_the_transfer_still_completes(broker: Any, tmp_path: Path) -> None:
    src = random_file(tmp_path / "m6.zip", 100 * KB + 5, seed=6)
    manifest = make_manifest(src, model="m6", brand=BRAND, chunk_size=32 * KB)
    chunks = list(iter_chunks(src, manifest.chunk_size, "m6"))

    def chunk(index: int, data: bytes, model: str = "m6") -> ModelChunk:
        return ModelChunk(model=model, index=index, sha256=hashlib.sha256(data).hexdigest(), data=data)

    bad = [chunk(4, b"x" * 2000), chunk(9, b"x"), chunk(1, b"x" * (33 * KB)), chunk(1, b"x" * 1000),
           chunk(3, b"x" * 6)]
    with edge(broker) as e, Station(broker, "d1", tmp_path) as st:
        send = bus_publisher(e, "delivery_manifest", "delivery_chunk", det="d1", brand=BRAND)
        send(manifest).wait(5)
        for c in [*bad, chunk(0, chunks[0].data, model="other"), chunks[0], chunks[0], *chunks[1:]]:
            send(c).wait(5)
        status = st.receiver.wait(10)
        assert_delivered(st, src, status)
        reasons = list(st.receiver.rejections)
        assert reasons == ["m6: chunk index 4 out of range [0, 4)", "m6: chunk index 9 out of range [0, 4)",
                           "m6: chunk 1 has 33792 bytes, more than chunk_size 32768",
                           "m6: chunk 1 has 1000 bytes, expected 32768", "m6: chunk 3 has 6 bytes, expected 4101"]
        assert st.receiver.stats["ignored"] == 1 and st.receiver.stats["duplicates"] == 1


def test_a_new_manifest_cancels_the_transfer_in_progress(broker: Any, tmp_path: Path) -> None:
    old = random_file(tmp_path / "old.zip", 200 * KB, seed=7)
    new = random_file(tmp_path / "new.zip", 150 * KB, seed=8)
    with edge(broker) as e, Station(broker, "d1", tmp_path, quiet_s=5) as st:
        send = bus_publisher(e, "delivery_manifest", "delivery_chunk", det="d1", brand=BRAND)
        old_m = make_manifest(old, model="old", brand=BRAND, chunk_size=64 * KB)
        send(old_m).wait(5)
        send(next(iter_chunks(old, 64 * KB, "old"))).wait(5)
        wait_for(lambda: st.receiver.stats["chunks"] == 1)
        assert len(list(st.dir.glob(".old.zip.*.part"))) == 1
        with Delivering(e, "d1", new, make_manifest(new, model="new", brand=BRAND, chunk_size=64 * KB)):
            status = st.receiver.wait(30, model="new")
        assert_delivered(st, new, status)
        canceled = [s for s in st.statuses if s.model == "old" and s.state == "CANCELED"]
        assert len(canceled) == 1 and "superseded by a manifest for model new" in canceled[0].reason


def test_a_sender_that_never_answers_fails_the_transfer(broker: Any, tmp_path: Path) -> None:
    src = random_file(tmp_path / "m7.zip", 100 * KB, seed=9)
    manifest = make_manifest(src, model="m7", brand=BRAND, chunk_size=32 * KB)
    with edge(broker) as e, Station(broker, "d1", tmp_path, quiet_s=0.2, max_retries=2) as st:
        send = bus_publisher(e, "delivery_manifest", "delivery_chunk", det="d1", brand=BRAND)
        send(manifest).wait(5)
        send(next(iter_chunks(src, 32 * KB, "m7"))).wait(5)
        status = st.receiver.wait(10)
        assert status.state == "FAILED" and "3 of 4 chunks still missing after 2 requests" in status.reason
        assert [r.chunks for r in st.requests] == [[1, 2, 3], [1, 2, 3]]
        assert not os.listdir(st.dir)


def test_a_file_that_does_not_match_its_manifest_is_fetched_again_then_refused(broker: Any, tmp_path: Path) -> None:
    src = random_file(tmp_path / "m8.zip", 100 * KB, seed=10)
    manifest = make_manifest(src, model="m8", brand=BRAND, chunk_size=32 * KB)
    lying = manifest.model_copy(update={"sha256": "ab" * 32})     # every chunk is fine, the whole is not
    with edge(broker) as e, Station(broker, "d1", tmp_path, max_retries=1) as st:
        with Delivering(e, "d1", src, lying) as d:
            status = st.receiver.wait(30)
        assert status.state == "FAILED" and "does not match the manifest's abababababab" in status.reason
        assert st.requests[0].chunks is None                           # asked for the whole file again
        assert d.sender.stats.manifests == 2 and not os.listdir(st.dir)


# ---- pure functions ---------------------------------------------------------------------------

def test_plan_and_chunks_cover_the_file(tmp_path: Path) -> None:
    src = random_file(tmp_path / "f", 10 * KB + 1)
    p = plan(src, 2 * KB)
    assert (p.size, p.chunk_count) == (10 * KB + 1, 6)
    chunks = list(iter_chunks(src, 2 * KB, "f"))
    assert b"".join(c.data for c in chunks) == src.read_bytes() and [len(c.data) for c in chunks][-1] == 1
    assert all(c.sha256 == hashlib.sha256(c.data).hexdigest() for c in chunks)
    with pytest.raises(TransferError, match="chunk index 6 out of range"):
        list(iter_chunks(src, 2 * KB, "f", [6]))
    with pytest.raises(TransferError, match="chunk_size 100 outside"):
        plan(src, 100)
    with pytest.raises(TransferError, match="does not match"):
        check_manifest(ModelManifest(model="f", brand=BRAND, **{**p.manifest_fields(), "chunk_count": 5}))
