"""Triton backend: an engine served by a central Triton Inference Server, `triton://host:8001/MODEL`.

The server runs the repository `edgead build-engine --triton-repo` writes: an ensemble MODEL that feeds
the teacher's features to the student on the server (they never cross the network), so a request is
one preprocessed batch and its answer the scores and maps. The ensemble's config carries edgead's
manifest (parameter `edgead_manifest`): the preprocessing, the input shape, the served engine's
fingerprint, precision and max batch, checked here as a local engine's manifest is, so a calibration
binds to the served model exactly as it binds to the engine folder it came from.

A server that is down or slow makes `infer` raise within `timeout` (the run loop then gives those
parts the safe action, never a pass). After a failure, calls fail at once for a backoff window
(0.1 s doubling to 5 s) instead of each waiting out a timeout; the next try after it opens a fresh
connection (and registers the shared memory again: a restarted server has forgotten it); a success
resets the backoff.

URL options: `?timeout=SECONDS` (per request, default 1.0) and `?shm=system` (the batch and the
answers pass through system shared memory instead of the socket: only for a server on the same host).
Edge path: tritonclient is imported when a detector is opened, with an install hint.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edgead.backends.batches import checked_batch, infer_in_chunks
from edgead.backends.manifest import check_manifest, entry_fingerprint, manifest_digest
from edgead.errors import EdgeADError
from edgead.schema import Place

SCHEME = "triton"
DEFAULT_PORT = 8001
PARAMETER = "edgead_manifest"          # the ensemble config's parameter that carries the served document
SERVED_FORMAT = 1
DEFAULT_TIMEOUT_S = 1.0
BACKOFF_S = (0.1, 5.0)                 # first and longest fail-fast window after a failure
INSTALL = "pip install 'edgead[triton]' (the tritonclient[grpc] package)"
REEXPORT = ("export the repository again with `edgead build-engine --engine engines/NAME --triton-repo DIR` "
            "and reload it on the server; never edit a model repository by hand")
URL_FORM = "triton://HOST[:PORT]/MODEL[?timeout=SECONDS&shm=system]"


def is_triton_url(engine: Any) -> bool:
    """A `triton://` detector URL (a str: a Path would have collapsed the `//`)."""
    return isinstance(engine, str) and engine.strip().lower().startswith(SCHEME + "://")


@dataclass(frozen=True)
class TritonURL:
    host: str
    port: int
    model: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    shm: bool = False

    @property
    def address(self) -> str:
        """host:port as gRPC wants it ([v6]:port for an IPv6 address)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{SCHEME}://{self.address}/{self.model}"


def parse_url(url: str) -> TritonURL:
    """`triton://host:port/model?timeout=1.0&shm=system` -> TritonURL; a clear error naming what is wrong."""
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise EdgeADError(f"bad Triton URL {text!r}: {exc}", f"write it as {URL_FORM}") from None
    model = parts.path.strip("/")
    if parts.scheme.lower() != SCHEME or not parts.hostname or not model or "/" in model:
        raise EdgeADError(f"bad Triton URL {text!r}", f"write it as {URL_FORM}, e.g. triton://127.0.0.1:8001/washer")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"timeout", "shm"})
    if unknown:
        raise EdgeADError(f"Triton URL {text!r}: unknown option {unknown[0]!r}", "the options are timeout and shm")
    timeout_s = DEFAULT_TIMEOUT_S
    if "timeout" in query:
        try:
            timeout_s = float(query["timeout"][-1])
        except ValueError:
            timeout_s = -1.0
        if not 0 < timeout_s < 3600:
            raise EdgeADError(f"Triton URL {text!r}: timeout must be seconds > 0", "e.g. ?timeout=0.5")
    shm = query.get("shm", ["none"])[-1].lower()
    if shm not in ("none", "system"):
        raise EdgeADError(f"Triton URL {text!r}: shm={shm!r}", "shm=system (server on this host) or shm=none")
    return TritonURL(parts.hostname, port or DEFAULT_PORT, model, timeout_s, shm == "system")


# ---------------------------------------------------------------- the served document


def served_document(manifest: Dict[str, Any], entry: Dict[str, Any], model: str) -> Dict[str, Any]:
    """What the ensemble's `edgead_manifest` parameter carries: the engine folder's whole manifest
    (checked on the client as a local one is) and which of its engines the server runs."""
    served = {k: entry[k] for k in ("backend", "precision", "fingerprint", "max_batch")}
    return {"format": SERVED_FORMAT, "model": model, "served": served, "manifest": manifest}


def read_served(text: str, where: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(manifest, served engine entry) from the parameter's text; an edited or damaged one is refused."""
    try:
        doc = json.loads(text)
        manifest, served = doc["manifest"], doc["served"]
        fmt = doc["format"]
    except (ValueError, KeyError, TypeError):
        raise EdgeADError(f"{where}: its '{PARAMETER}' parameter is not edgead's served manifest", REEXPORT) from None
    if fmt != SERVED_FORMAT:
        raise EdgeADError(f"{where}: served manifest format {fmt!r}, this edgead reads {SERVED_FORMAT}", REEXPORT)
    try:
        check_manifest(manifest, Place(where))
    except EdgeADError as exc:
        raise EdgeADError(f"{where}: its edgead manifest is damaged: {exc.message}", REEXPORT) from None
    entries = [e for e in manifest["engines"] if isinstance(served, dict)
               and (e["backend"], e["precision"]) == (served.get("backend"), served.get("precision"))]
    if (manifest["digest"] != manifest_digest(manifest) or len(entries) != 1
            or entries[0]["fingerprint"] != served.get("fingerprint")
            or entries[0]["fingerprint"] != entry_fingerprint(manifest, entries[0])
            or entries[0]["max_batch"] != served.get("max_batch")):
        raise EdgeADError(f"{where}: its edgead manifest was edited or is damaged", REEXPORT)
    return manifest, entries[0]


# ---------------------------------------------------------------- the client


def _import_client() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise EdgeADError("the Triton client is not installed (needed for a triton:// detector)", INSTALL) from exc
    return grpcclient


# A channel of its own (no subchannel shared with an earlier channel that is waiting out gRPC's own
# reconnect backoff, which grows to 120 s), whose own reconnect backoff is ours; messages of any size.
CHANNEL_ARGS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", int(BACKOFF_S[1] * 1000))]


def _new_client(grpcclient: Any, address: str) -> Any:
    return grpcclient.InferenceServerClient(address, channel_args=CHANNEL_ARGS)


def _short(exc: BaseException) -> str:
    """One line of what went wrong (gRPC's messages run over several)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]


class _Backoff:
    """After a failure, the window in which calls fail at once (0.1 s doubling to 5 s); a success resets it."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.until = 0.0
        self.failed_at = 0.0
        self.reason = ""

    def failed(self, reason: str) -> None:
        self.delay_s = BACKOFF_S[0] if self.delay_s == 0 else min(BACKOFF_S[1], self.delay_s * 2)
        self.failed_at = time.monotonic()
        self.until = self.failed_at + self.delay_s
        self.reason = reason

    def ok(self) -> None:
        self.delay_s = 0.0
        self.until = 0.0

    @property
    def waiting_s(self) -> float:
        return max(0.0, self.until - time.monotonic())


class _SharedMemory:
    """System shared memory regions for the batch and the two answers, sized for max_batch."""

    def __init__(self, max_batch: int, input_shape: Tuple[int, ...], map_shape: Tuple[int, ...]) -> None:
        import tritonclient.utils.shared_memory as shm

        self.shm = shm
        tag = f"edgead_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.per_item = {"image": int(np.prod(input_shape)) * 4, "map": int(np.prod(map_shape)) * 4, "score": 4}
        self.regions: Dict[str, Any] = {}
        try:
            for name, size in self.per_item.items():
                self.regions[name] = (f"{tag}_{name}", f"/{tag}_{name}", size * max_batch,
                                      shm.create_shared_memory_region(f"{tag}_{name}", f"/{tag}_{name}",
                                                                      size * max_batch))
        except Exception as exc:
            self.destroy()
            raise EdgeADError(f"could not create system shared memory for Triton: {_short(exc)}",
                              "check /dev/shm (size, permissions), or drop ?shm=system from the URL") from exc

    def register(self, client: Any, timeout_s: float) -> None:
        """(Re)register every region with the server: a restarted server has forgotten them."""
        for region, key, size, _ in self.regions.values():
            try:
                client.unregister_system_shared_memory(region, client_timeout=timeout_s)
            except Exception:  # noqa: BLE001 - not registered yet: nothing to drop
                pass
            client.register_system_shared_memory(region, key, size, client_timeout=timeout_s)

    def unregister(self, client: Any, timeout_s: float) -> None:
        for region, _, _, _ in self.regions.values():
            try:
                client.unregister_system_shared_memory(region, client_timeout=timeout_s)
            except Exception:  # noqa: BLE001 - a server that is gone has forgotten them already
                pass

    def destroy(self) -> None:
        for _, _, _, handle in self.regions.values():
            try:
                self.shm.destroy_shared_memory_region(handle)
            except Exception:  # noqa: BLE001 - closing: nothing left to do about it
                pass
        self.regions = {}

    def region(self, name: str) -> str:
        return str(self.regions[name][0])

    def read(self, name: str, shape: List[int]) -> np.ndarray:
        return np.array(self.shm.get_contents_as_numpy(self.regions[name][3], np.float32, shape))


class TritonDetector:
    """Detector protocol over a model served by Triton (see the module docstring)."""

    backend = "triton"

    def __init__(self, url: str, timeout_s: Optional[float] = None, shm: Optional[bool] = None,
                 connect_timeout_s: float = 5.0) -> None:
        self.url = parse_url(url)
        self.timeout_s = float(timeout_s if timeout_s is not None else self.url.timeout_s)
        self._grpc = _import_client()
        self._lock = threading.Lock()
        self._backoff = _Backoff()
        self._client: Any = None
        self._shm: Optional[_SharedMemory] = None
        self._registered = False
        try:
            self._connect(max(connect_timeout_s, self.timeout_s))
            self.manifest, entry = self._served(connect_timeout_s)
            self.precision = str(entry["precision"])
            self.fingerprint = str(entry["fingerprint"])
            self.max_batch = int(entry["max_batch"])
            self.served_backend = str(entry["backend"])
            self.input_shape = tuple(int(d) for d in self.manifest["input"]["shape"][1:])
            self._map_shape = tuple(int(d) for d in self.manifest["outputs"]["map"][1:])
            if self.url.shm if shm is None else shm:
                self._shm = _SharedMemory(self.max_batch, self.input_shape, self._map_shape)
                self._register(connect_timeout_s)
        except EdgeADError:
            self.close()
            raise
        self._registered = True

    def _register(self, timeout_s: float) -> None:
        assert self._shm is not None
        try:
            self._shm.register(self._client, timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise EdgeADError(f"the Triton server at {self.url.address} refused the shared memory: {_short(exc)}",
                              "shm=system needs the server on this host, sharing its /dev/shm; "
                              "or drop ?shm=system from the URL") from None

    def _connect(self, timeout_s: float) -> None:
        """A connection to a live server whose model is ready, or the error saying which is not."""
        where = self.url.address
        try:
            self._client = _new_client(self._grpc, where)
        except Exception as exc:  # noqa: BLE001 - an address gRPC cannot use
            raise EdgeADError(f"cannot connect to the Triton server at {where}: {_short(exc)}",
                              f"check the host and port of the detector URL ({URL_FORM})") from None
        try:
            live = self._client.is_server_live(client_timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - gRPC and tritonclient raise several types for one cause
            raise EdgeADError(f"the Triton server at {where} does not answer: {_short(exc)}",
                              "start it (tritonserver --model-repository DIR), or check the host and port of "
                              "the detector URL (gRPC, 8001 by default)") from None
        ready = live and self._ready(timeout_s)
        if not ready:
            raise EdgeADError(f"model {self.url.model!r} is not {'ready' if live else 'served: the server is not live'} "
                              f"on the Triton server at {where}",
                              "check the server's log; the model is the ensemble folder of the repository written "
                              "by `edgead build-engine --triton-repo` (its folder name is the model name)")

    def _ready(self, timeout_s: float) -> bool:
        try:
            return bool(self._client.is_model_ready(self.url.model, client_timeout=timeout_s))
        except Exception:  # noqa: BLE001 - an unknown model is "not ready"
            return False

    def _served(self, timeout_s: float) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The served manifest from the ensemble's config, checked against the config itself."""
        where = f"Triton model {self.url}"
        try:
            config = self._client.get_model_config(self.url.model, as_json=True, client_timeout=timeout_s)["config"]
        except Exception as exc:  # noqa: BLE001
            raise EdgeADError(f"{where}: its config could not be read: {_short(exc)}", "check the server's log") from None
        text = config.get("parameters", {}).get(PARAMETER, {}).get("string_value")
        if not text:
            raise EdgeADError(f"{where} carries no '{PARAMETER}' parameter: not a repository edgead wrote",
                              "serve the repository written by `edgead build-engine --triton-repo`, and give the "
                              "ensemble's name (not the teacher's or the student's) in the URL")
        manifest, entry = read_served(text, where)
        image = [i for i in config.get("input", []) if i.get("name") == "image"]
        dims = [int(d) for d in image[0].get("dims", [])] if image else []
        if int(config.get("max_batch_size", 0)) != int(entry["max_batch"]) or dims != manifest["input"]["shape"][1:]:
            raise EdgeADError(f"{where}: its config (max_batch_size, input dims) does not match its edgead manifest",
                              REEXPORT)
        return manifest, entry

    # ------------------------------------------------------------ inference

    def infer(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Scores and maps from the server, in chunks of its max batch; a failure raises (see the module)."""
        return infer_in_chunks(self._run, checked_batch(batch, self.input_shape), self.max_batch)

    def _run(self, chunk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._client is None:
                raise EdgeADError(f"the Triton detector for {self.url} is closed", "open it again")
            waiting = self._backoff.waiting_s
            if waiting > 0:
                ago = time.monotonic() - self._backoff.failed_at
                raise EdgeADError(f"Triton server {self.url} failed {ago:.1f} s ago ({self._backoff.reason}); "
                                  f"next try in {waiting:.1f} s", "check the server and the network to it")
            try:
                if not self._registered:
                    self._reconnect()
                score, amap = self._request(chunk)
            except Exception as exc:  # noqa: BLE001 - any failure: this batch is not inspected
                self._backoff.failed(_short(exc))
                self._registered = False
                raise EdgeADError(f"Triton server {self.url}: {_short(exc)}",
                                  "check the server and the network to it; parts meanwhile get the safe action") from None
            self._backoff.ok()
            return score, amap

    def _reconnect(self) -> None:
        """After a failure: a fresh channel (gRPC's own reconnect can wait much longer), shm registered again."""
        old, self._client = self._client, _new_client(self._grpc, self.url.address)
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the old channel is dropped either way
            pass
        if self._shm is not None:
            self._shm.register(self._client, self.timeout_s)
        self._registered = True

    def _request(self, chunk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        g, n = self._grpc, len(chunk)
        image = g.InferInput("image", list(chunk.shape), "FP32")
        outputs = [g.InferRequestedOutput("map"), g.InferRequestedOutput("score")]
        if self._shm is None:
            image.set_data_from_numpy(chunk)
        else:
            self._shm.shm.set_shared_memory_region(self._shm.regions["image"][3], [chunk])
            image.set_shared_memory(self._shm.region("image"), chunk.nbytes)
            for out in outputs:
                out.set_shared_memory(self._shm.region(out.name()), n * self._shm.per_item[out.name()])
        result = self._client.infer(self.url.model, [image], outputs=outputs, client_timeout=self.timeout_s)
        if self._shm is None:
            amap, score = result.as_numpy("map"), result.as_numpy("score")
        else:
            amap = self._shm.read("map", [int(d) for d in result.get_output("map").shape])
            score = self._shm.read("score", [int(d) for d in result.get_output("score").shape])
        if amap is None or score is None or amap.shape != (n, *self._map_shape) or score.size != n:
            raise EdgeADError(f"answers of shape {None if amap is None else amap.shape} and "
                              f"{None if score is None else score.shape} for a batch of {n}", REEXPORT)
        return score.reshape(n).astype(np.float32), amap.astype(np.float32)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            if self._shm is not None:
                if self._backoff.delay_s == 0:          # a server known to be down is not waited for
                    self._shm.unregister(client, min(self.timeout_s, 0.5))
                self._shm.destroy()
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing: nothing left to do about it
                pass

    def __enter__(self) -> TritonDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
