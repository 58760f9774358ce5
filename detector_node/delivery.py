"""The bus side of model delivery: manifests and chunks in, DeliveryStatus and chunk requests out.

For every configured brand a :class:`fabbus.assembler.Receiver` assembles the file
into ``params/<brand>/models/`` (temp file, re-requests of missing or corrupt chunks
on ``delivery_request``, whole-file sha256, atomic rename). A complete file goes
to the hot swapper (:class:`detector_node.hot_swap.ModelSlots`), which loads it
beside the running model. Every step is reported, retained, on the brand's
``delivery_status``: DOWNLOADING (percent, rate-limited by the receiver),
VERIFYING, LOADING, ACTIVE, FAILED with a reason, ROLLED_BACK. For ROLLED_BACK,
``model`` is the model that was dropped and ``previous`` the one active again.

Refused (FAILED with the reason, and an ErrorReport on ``detector_error``): a
manifest for a brand this station is not configured for, a manifest whose brand
differs from its topic's, a format other than ``bundle``, a manifest the receiver
refuses (size, chunking), a transfer that fails, a file that does not load. A
corrupt chunk is reported on ``detector_error`` and asked for again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fabbus.assembler import Receiver, TransferStatus
from fabbus.client import BusClient, ReceivedMessage
from fabbus.messages import ChunkRequest, DeliveryState, DeliveryStatus, ModelManifest, RollbackCommand

from detector_node.hot_swap import ModelSlots, SwapEvent
from detector_node.model_store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

ErrorReporter = Callable[..., None]  # (code, message, *, topic=None, **detail)


class DeliveryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quiet_s: float = Field(default=3.0, gt=0, description="no chunk for this long: ask again for what is missing")
    max_retries: int = Field(default=5, ge=1, description="requests in a row without an answer before FAILED")
    progress_interval_s: float = Field(default=0.5, gt=0, description="at most one DOWNLOADING status per interval")
    max_model_bytes: int = Field(default=512 * 1024**2, ge=1024, description="larger manifests are refused")


class DeliveryService:
    """Subscribes to the delivery topics of every brand (``+``) and drives each brand's receiver."""

    def __init__(self, client: BusClient, store: ModelStore, slots: ModelSlots, config: DeliveryConfig,
                 report_error: ErrorReporter) -> None:
        self.client, self.store, self.slots, self.config = client, store, slots, config
        self._report_error = report_error
        self._cids: dict[tuple[str, str], str | None] = {}  # (brand, model) -> correlation id (the task)
        self._held: dict[str, Path] = {}  # brand -> destination held in the store while a transfer runs
        self._receivers = {brand: self._receiver(brand) for brand in store.brands}
        self._closing = False
        self.refused = 0

    def _receiver(self, brand: str) -> Receiver:
        def destination(m: ModelManifest) -> Path:
            self._held[brand] = self.store.hold(brand, self.store.model_path(brand, m.sha256, m.version))
            return self._held[brand]

        def request(req: ChunkRequest) -> None:
            self.client.publish("delivery_request", req, brand=brand, correlation_id=self._cids.get((brand, req.model)))

        return Receiver(destination, request=request, on_status=lambda s: self._on_transfer(brand, s),
                        quiet_s=self.config.quiet_s, max_retries=self.config.max_retries,
                        progress_interval=self.config.progress_interval_s, max_size=self.config.max_model_bytes)

    def subscribe(self) -> DeliveryService:
        self.client.subscribe("delivery_manifest", self.on_delivery_manifest)
        self.client.subscribe("delivery_chunk", self.on_delivery_chunk)
        self.client.subscribe("model_rollback", self.on_model_rollback)
        return self

    def close(self) -> None:
        self._closing = True
        for receiver in self._receivers.values():
            receiver.close()

    # ---- bus handlers (the client's dispatcher thread) ----------------------------------------------

    def on_delivery_manifest(self, msg: ReceivedMessage) -> None:
        m: ModelManifest = msg.body  # type: ignore[assignment]
        brand, cid = msg.ids["brand"], msg.message.correlation_id
        if brand not in self._receivers:
            self._refuse(brand, m, cid, f"unknown brand {brand!r}: this station inspects {self.store.brands}",
                         "unknown_brand", msg.topic)
        elif m.brand != brand:
            self._refuse(brand, m, cid, f"manifest brand {m.brand!r} does not match its topic's brand {brand!r}",
                         "manifest_mismatch", msg.topic)
        elif m.format != "bundle":
            self._refuse(brand, m, cid, f"format {m.format!r} not supported: a detector loads model bundles",
                         "bad_format", msg.topic)
        else:
            self._cids[(brand, m.model)] = cid
            self._receivers[brand].on_manifest(msg)

    def on_delivery_chunk(self, msg: ReceivedMessage) -> None:
        receiver = self._receivers.get(msg.ids["brand"])
        if receiver is None:
            log.debug("chunk for unconfigured brand %s dropped", msg.ids["brand"])
            return
        rejected = receiver.stats["rejected"]
        receiver.on_chunk(msg)
        if receiver.stats["rejected"] != rejected:
            self._report_error("bad_chunk", receiver.rejections[-1], topic=msg.topic, brand=msg.ids["brand"])

    def on_model_rollback(self, msg: ReceivedMessage) -> None:
        cmd: RollbackCommand = msg.body  # type: ignore[assignment]
        brand, cid = msg.ids["brand"], msg.message.correlation_id
        if brand not in self._receivers or cmd.brand != brand:
            reason = (f"unknown brand {brand!r}" if brand not in self._receivers
                      else f"command brand {cmd.brand!r} does not match its topic's brand {brand!r}")
            self._report_error("rollback_refused", f"rollback refused: {reason}", topic=msg.topic, brand=brand)
            return
        self.slots.rollback(brand, cmd.reason, cid)

    # ---- receiver and hot-swap events -----------------------------------------------------------------

    def _on_transfer(self, brand: str, s: TransferStatus) -> None:
        m = s.manifest
        if m is None or self._closing:
            return
        cid = self._cids.get((brand, m.model)) if s.state in ("DOWNLOADING", "VERIFYING") \
            else self._cids.pop((brand, m.model), None)
        if s.state in ("DOWNLOADING", "VERIFYING"):
            self._publish(brand, m.model, m.version, m.sha256, DeliveryState(s.state), cid, percent=s.percent)
        elif s.state == "COMPLETE" and s.path is not None:
            self._held.pop(brand, None)  # the hold passes to the swapper: it activates or discards the file
            entry = ModelEntry(s.path.name, m.model, m.version, m.sha256)
            self.slots.deploy(brand, s.path, entry, cid)
        else:
            held = self._held.pop(brand, None)
            if held is not None:
                self.store.discard(brand, held)
            reason = s.reason if s.state == "FAILED" else f"canceled: {s.reason}"
            self._publish(brand, m.model, m.version, m.sha256, DeliveryState.FAILED, cid, reason=reason,
                          percent=s.percent)
            self._report_error("delivery_failed", f"{brand}: delivery of {m.model} failed: {reason}", brand=brand,
                               model=m.model)

    def on_swap_event(self, e: SwapEvent) -> None:
        """Hot-swap events (the loader thread, or the inspection thread for a probation rollback)."""
        if self._closing:
            return
        if e.entry is None:  # a refused rollback command: the brand's model and delivery status stay as they are
            self._report_error("rollback_refused", f"{e.brand}: {e.reason}", brand=e.brand)
            return
        percent = 0.0 if e.state == DeliveryState.LOADING else 100.0
        self._publish(e.brand, e.entry.model, e.entry.version, e.entry.sha256, e.state, e.correlation_id,
                      reason=e.reason, percent=percent, previous=e.previous.model if e.previous else None)
        if e.state in (DeliveryState.FAILED, DeliveryState.ROLLED_BACK):
            code = "model_rolled_back" if e.state == DeliveryState.ROLLED_BACK else "model_refused"
            self._report_error(code, f"{e.brand}: {e.entry.model} {e.state.value}: {e.reason}", brand=e.brand,
                               model=e.entry.model)

    # ---- publishing -----------------------------------------------------------------------------------

    def _refuse(self, brand: str, m: ModelManifest, cid: str | None, reason: str, code: str, topic: str) -> None:
        self.refused += 1
        log.warning("delivery of %s refused: %s", m.model, reason)
        self._publish(brand, m.model, m.version, m.sha256, DeliveryState.FAILED, cid, reason=reason)
        self._report_error(code, reason, topic=topic, brand=brand, model=m.model)

    def _publish(self, brand: str, model: str, version: int | None, sha256: str | None, state: DeliveryState,
                 cid: str | None, *, percent: float = 0.0, reason: str = "", previous: str | None = None) -> None:
        status = DeliveryStatus(model=model, brand=brand, version=version, state=state, percent=percent,
                                reason=reason[:500], sha256=sha256, previous=previous)
        log.info("delivery %s %s: %s %s%% %s", brand, model, state.value, percent, reason)
        self.client.publish("delivery_status", status, brand=brand, correlation_id=cid)
