"""Upload a trained model bundle to the cloud over the bus and wait for the cloud's verdict.

    uploads = Uploads(client)                               # subscribed once, for every model (+)
    client.subscribe("model_upload_request", uploads.on_model_upload_request)
    client.subscribe("model_upload_result", uploads.on_model_upload_result)
    result = uploads.upload(bundle, manifest, task="t-42", timeout_s=300, check=job.check)

The model id on the topics is the bundle's sha256 (the registry's content-addressed id).
A fabbus Sender publishes the manifest and the chunks on ``model_upload_manifest`` /
``model_upload_chunk`` and answers the cloud's ChunkRequests until a TransferResult
arrives on ``model_upload_result``: ACCEPTED (the registered version) or REJECTED (the
reason). No answer within ``timeout_s`` is an UploadFailed; so is a REJECTED.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_node.tasks import TaskFailed
from fabbus.client import BusClient, ReceivedMessage
from fabbus.messages import ModelManifest, TransferResult
from fabbus.transfer import Sender, bus_publisher

log = logging.getLogger(__name__)


class UploadFailed(TaskFailed):
    """The cloud rejected the model, or did not answer in time."""


class _Upload:
    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.result: TransferResult | None = None
        self.error = ""
        self.done = threading.Event()


class Uploads:
    def __init__(self, client: BusClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._active: dict[str, _Upload] = {}

    # ---- bus handlers (the client's dispatcher thread): route, never block

    def on_model_upload_request(self, msg: ReceivedMessage) -> None:
        with self._lock:
            upload = self._active.get(msg.ids["model"])
        if upload is None:
            log.info("upload request for %s, which is not being uploaded", msg.ids["model"][:16])
            return
        upload.sender.on_request(msg)

    def on_model_upload_result(self, msg: ReceivedMessage) -> None:
        result: TransferResult = msg.body  # type: ignore[assignment]
        with self._lock:
            upload = self._active.get(msg.ids["model"])
        if upload is None or result.model != msg.ids["model"]:
            log.info("upload result for %s ignored (no upload of it in progress): %s %s", msg.ids["model"][:16],
                     result.state, result.reason)
            return
        upload.result = result
        upload.done.set()
        upload.sender.close()

    # ---- the task's thread

    def upload(self, path: Path, manifest: ModelManifest, *, task: str, timeout_s: float,
               check: Callable[[], None] = lambda: None) -> TransferResult:
        """Send the file and wait for ACCEPTED; UploadFailed otherwise (TaskStopped from ``check``)."""
        model = manifest.model
        publish = bus_publisher(self.client, "model_upload_manifest", "model_upload_chunk", model=model,
                                correlation_id=task)
        sender = Sender(path, manifest, publish)
        upload = _Upload(sender)
        with self._lock:
            self._active[model] = upload
        serving = threading.Thread(target=self._send, args=(upload,), name=f"edge-upload-{model[:8]}", daemon=True)
        try:
            serving.start()
            deadline = time.monotonic() + timeout_s
            while not upload.done.wait(0.2) and time.monotonic() < deadline:
                check()
        finally:
            sender.close()
            serving.join()
            with self._lock:
                self._active.pop(model, None)
        if upload.error:
            raise UploadFailed(f"sending model {model[:12]}... to the cloud failed: {upload.error}")
        if upload.result is None:
            raise UploadFailed(f"the cloud did not answer the upload of model {model[:12]}... "
                               f"({manifest.size} bytes) within {timeout_s:g} s")
        if upload.result.state != "ACCEPTED":
            raise UploadFailed(f"the cloud rejected model {model[:12]}...: {upload.result.reason or 'no reason given'}")
        log.info("task %s: model %s accepted by the cloud as version %s (%s)", task, model[:12],
                 upload.result.version, upload.result.reason)
        return upload.result

    def _send(self, upload: _Upload) -> None:
        try:  # boundary: the sending thread reports through the missing result (a timeout)
            stats = upload.sender.send()
            log.info("model %s sent: %s chunk(s), %s bytes", upload.sender.manifest.model[:12], stats.chunks,
                     stats.bytes)
            upload.sender.serve()
        except Exception as exc:
            log.exception("sending model %s failed", upload.sender.manifest.model[:12])
            upload.error = f"{type(exc).__name__}: {exc}"
            upload.done.set()
