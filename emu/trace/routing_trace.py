"""RoutingTrace: which experts each token used, grouped into passes and requests.

Stored as `.npz` (schema in docs/traces.md). Arrays stay int16/float16 so a million-token trace of a
16-layer top-8 model fits in a few hundred MB; in memory expert ids take one byte (uint8) where every id < 256
(`compact_ids`), which halves what a run holds for most models. The optional full router logits are float16 too: routers
compute them in bf16 (every stored value of which float16 holds exactly within float16's range) or fp32
(float16 keeps ~3 significant digits, enough to rank the logits and average their spread), at half
float32's size, which is what they cost most: `n_experts` values per token and layer, not `top_k`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..errors import EmuError

SCHEMA = "moe-emu/trace/1"
PHASE_PREFILL = 0
PHASE_DECODE = 1


@attrs.frozen(eq=False)
class RoutingTrace:
    """Per token and MoE layer the top-k expert ids, with pass and request structure.

    Tokens are ordered pass by pass; `pass_offsets[p]:pass_offsets[p+1]` are the tokens of pass p.
    """

    experts: np.ndarray  # uint8 (every id < 256) or int16 [tokens, layers, top_k]
    pass_offsets: np.ndarray  # int64 [passes + 1]
    pass_phase: np.ndarray  # int8 [passes]: 0 prefill, 1 decode
    token_request: np.ndarray  # int32 [tokens]
    token_position: np.ndarray  # int32 [tokens]: position of the token in its request (context length - 1)
    scores: np.ndarray | None = None  # float16 [tokens, layers, top_k]
    predicted: np.ndarray | None = None  # as `experts` [tokens, layers, top_k]: speculator's guess for that layer
    logits: np.ndarray | None = None  # float16 [tokens, layers, n_experts]: the router's full logits
    n_experts: int = 0
    model: str = ""
    meta: dict[str, Any] = attrs.field(factory=dict)

    # --- shape -------------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def n_passes(self) -> int:
        return int(self.pass_offsets.shape[0] - 1)

    @property
    def n_requests(self) -> int:
        return int(np.unique(self.token_request).size) if self.n_tokens else 0

    def fingerprint(self) -> str:
        """Content hash, so a result names exactly the trace it came from: the same ids held as uint8 or int16
        hash the same (as int16, their width on disk)."""
        h = hashlib.sha256()
        for arr in (self.experts, self.pass_offsets, self.pass_phase, self.token_request, self.token_position,
                    self.scores, self.predicted, self.logits):
            if arr is None:
                continue
            if (arr is self.experts or arr is self.predicted) and arr.dtype == np.uint8:
                # one-byte ids, widened a block of tokens at a time
                step = max(1, (1 << 22) // max(1, arr.shape[1] * arr.shape[2]))
                for lo in range(0, arr.shape[0], step):
                    h.update(arr[lo:lo + step].astype(np.int16).reshape(-1).view(np.uint8))
            else:  # the array's own buffer (contiguous), not a bytes copy of a trace-sized array
                h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        return h.hexdigest()[:16]

    def expert_counts(self) -> np.ndarray:
        """Selections per (layer, expert) over the whole trace: int64 [layers, n_experts]."""
        n_exp = max(self.n_experts, int(self.experts.max()) + 1 if self.n_tokens else 1)
        counts = np.zeros((self.n_layers, n_exp), dtype=np.int64)
        for layer in range(self.n_layers):
            counts[layer] = np.bincount(self.experts[:, layer, :].ravel().astype(np.int64), minlength=n_exp)
        return counts

    def slice_tokens(self, max_tokens: int) -> RoutingTrace:
        """The whole passes that fit in the first `max_tokens` tokens."""
        last = int(np.searchsorted(self.pass_offsets, max_tokens, side="right") - 1)
        last = max(last, 1)
        end = int(self.pass_offsets[last])
        return attrs.evolve(
            self, experts=self.experts[:end], pass_offsets=self.pass_offsets[: last + 1],
            pass_phase=self.pass_phase[:last], token_request=self.token_request[:end],
            token_position=self.token_position[:end],
            scores=None if self.scores is None else self.scores[:end],
            predicted=None if self.predicted is None else self.predicted[:end],
            logits=None if self.logits is None else self.logits[:end])

    # --- validation --------------------------------------------------------------------------------
    def validate(self, *, file: str | None = None) -> RoutingTrace:
        def bad(key: str, msg: str) -> EmuError:
            return EmuError(msg, file=file, key=key)

        if self.experts.ndim != 3:
            raise bad("experts", f"expected a [tokens, layers, top_k] array, got shape {self.experts.shape}")
        n_tok = self.n_tokens
        po = self.pass_offsets
        if po.ndim != 1 or po.size < 1 or po[0] != 0 or po[-1] != n_tok or np.any(np.diff(po) <= 0):
            raise bad("pass_offsets", f"expected strictly increasing offsets from 0 to {n_tok}")
        if self.pass_phase.shape != (po.size - 1,):
            raise bad("pass_phase", f"expected {po.size - 1} entries, got {self.pass_phase.shape}")
        if not np.isin(self.pass_phase, (PHASE_PREFILL, PHASE_DECODE)).all():
            raise bad("pass_phase", "expected 0 (prefill) or 1 (decode)")
        for key in ("token_request", "token_position"):
            if getattr(self, key).shape != (n_tok,):
                raise bad(key, f"expected {n_tok} entries, got {getattr(self, key).shape}")
        if n_tok and (self.experts.min() < 0):
            raise bad("experts", "expert ids must be >= 0")
        if self.n_experts and n_tok and self.experts.max() >= self.n_experts:
            raise bad("experts", f"expert id {int(self.experts.max())} >= n_experts {self.n_experts}")
        for key in ("scores", "predicted"):
            arr = getattr(self, key)
            if arr is not None and arr.shape != self.experts.shape:
                raise bad(key, f"expected shape {self.experts.shape}, got {arr.shape}")
        if self.predicted is not None and n_tok:
            # predicted ids index per-expert tables in the prefetch kernels: out of range would be a wild write
            hi = self.n_experts or int(self.experts.max()) + 1
            if self.predicted.min() < 0 or self.predicted.max() >= hi:
                raise bad("predicted", f"expected predicted expert ids in 0..{hi - 1}, got "
                                       f"{int(self.predicted.min())}..{int(self.predicted.max())}")
        k = self.experts.shape[2]
        for a in range(k):  # distinct ids within each token's top-k at each layer (k is small: pairs)
            for b in range(a + 1, k):
                same = self.experts[:, :, a] == self.experts[:, :, b]
                if same.any():
                    t, layer = (int(i) for i in np.argwhere(same)[0])
                    raise bad("experts", f"token {t} layer {layer} routes expert {int(self.experts[t, layer, a])} "
                                         "twice in its top-k; expected distinct ids")
        if self.scores is not None and not np.isfinite(self.scores).all():
            raise bad("scores", "expected finite gate scores")
        if self.logits is not None:
            self._validate_logits(bad)
        return self

    def _validate_logits(self, bad: Any) -> None:
        assert self.logits is not None
        n_tok, n_layers = self.experts.shape[:2]
        lg = self.logits
        if lg.ndim != 3 or lg.shape[:2] != (n_tok, n_layers):
            raise bad("logits", f"expected a [tokens, layers, n_experts] array with {n_tok} tokens and {n_layers} "
                                f"layers, got shape {lg.shape}")
        if self.n_experts and lg.shape[2] != self.n_experts:
            raise bad("logits", f"expected {self.n_experts} logits per token and layer (n_experts), got {lg.shape[2]}")
        if n_tok and lg.shape[2] <= int(self.experts.max()):
            raise bad("logits", f"expected a logit for every expert id up to {int(self.experts.max())}, got "
                                f"{lg.shape[2]} per token and layer")
        if lg.dtype.kind != "f":
            raise bad("logits", f"expected a float array, got dtype {lg.dtype}")
        finite = np.isfinite(lg)
        if not finite.all():
            t, layer, e = (int(i) for i in np.argwhere(~finite)[0])
            raise bad("logits", f"expected finite router logits, got {float(lg[t, layer, e])} at token {t} layer "
                                f"{layer} expert {e}")

    def check_fits(self, n_layers: int, n_experts: int, top_k: int, *, file: str | None = None) -> None:
        """A trace must match the model it is replayed on."""
        if self.n_layers != n_layers:
            raise EmuError(f"trace has {self.n_layers} MoE layers but the model has {n_layers}",
                           file=file, key="workload.trace")
        if self.top_k != top_k:
            raise EmuError(f"trace has top-{self.top_k} routing but the model has top_k = {top_k}",
                           file=file, key="workload.trace")
        if self.n_experts and self.n_experts != n_experts:
            raise EmuError(f"trace declares {self.n_experts} experts per MoE layer but the model has {n_experts}",
                           file=file, key="workload.trace")
        if self.n_tokens and int(self.experts.max()) >= n_experts:
            raise EmuError(f"trace uses expert id {int(self.experts.max())} but the model has "
                           f"{n_experts} experts per layer", file=file, key="workload.trace")
        if self.logits is not None and self.logits.shape[2] != n_experts:
            raise EmuError(f"trace has {self.logits.shape[2]} router logits per token and layer but the model has "
                           f"{n_experts} experts", file=file, key="workload.trace")
        if self.predicted is not None and self.n_tokens and int(self.predicted.max()) >= n_experts:
            raise EmuError(f"trace predicts expert id {int(self.predicted.max())} but the model has "
                           f"{n_experts} experts per layer", file=file, key="workload.trace")

    # --- io ----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {
            "experts": self.experts.astype(np.int16, copy=False),
            "pass_offsets": self.pass_offsets.astype(np.int64, copy=False),
            "pass_phase": self.pass_phase.astype(np.int8, copy=False),
            "token_request": self.token_request.astype(np.int32, copy=False),
            "token_position": self.token_position.astype(np.int32, copy=False),
            "header": np.array(json.dumps({"schema": SCHEMA, "n_experts": self.n_experts,
                                           "model": self.model, "meta": self.meta})),
        }
        if self.scores is not None:
            arrays["scores"] = self.scores.astype(np.float16, copy=False)
        if self.predicted is not None:
            arrays["predicted"] = self.predicted.astype(np.int16, copy=False)
        if self.logits is not None:
            arrays["logits"] = self.logits.astype(np.float16, copy=False)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> RoutingTrace:
        path = Path(path)
        file = str(path)
        if not path.is_file():
            raise EmuError("trace file not found", file=file)
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as err:  # numpy raises several types for a non-npz file
            raise EmuError(f"not a readable .npz trace ({err.__class__.__name__})", file=file) from None
        if not hasattr(data, "files"):  # a bare .npy array, not an archive
            raise EmuError("not a .npz archive (a single .npy array); expected a moe-emu trace", file=file)
        with data:
            missing = [k for k in ("experts", "pass_offsets", "pass_phase", "token_request",
                                   "token_position", "header") if k not in data.files]
            if missing:
                raise EmuError(f"missing arrays {missing}; see docs/traces.md", file=file)
            header = _header(_member(data, "header", file), file)
            if header.get("schema") != SCHEMA:
                raise EmuError(f"expected schema {SCHEMA!r}, got {header.get('schema')!r}",
                               file=file, key="header.schema")
            n_experts = header.get("n_experts", 0)
            if isinstance(n_experts, bool) or not isinstance(n_experts, int) or not 0 <= n_experts <= _MAX_EXPERTS:
                raise EmuError(f"expected an integer in 0..{_MAX_EXPERTS} (0: unknown), got {n_experts!r}",
                               file=file, key="header.n_experts")
            model = header.get("model", "")
            if not isinstance(model, str):
                raise EmuError(f"expected a string, got {model!r}", file=file, key="header.model")
            meta = header.get("meta", {})
            if not isinstance(meta, dict):
                raise EmuError(f"expected a JSON object, got {type(meta).__name__}", file=file, key="header.meta")

            def arr(key: str, dtype: Any) -> np.ndarray:
                return _cast(_member(data, key, file), np.dtype(dtype), key, file)

            trace = cls(
                experts=compact_ids(arr("experts", np.int16)), pass_offsets=arr("pass_offsets", np.int64),
                pass_phase=arr("pass_phase", np.int8), token_request=arr("token_request", np.int32),
                token_position=arr("token_position", np.int32),
                scores=arr("scores", np.float16) if "scores" in data.files else None,
                predicted=compact_ids(arr("predicted", np.int16)) if "predicted" in data.files else None,
                logits=_logits(_member(data, "logits", file), file) if "logits" in data.files else None,
                n_experts=n_experts, model=model, meta=dict(meta))
        return trace.validate(file=file)


#: expert ids are int16 on disk
_MAX_EXPERTS = int(np.iinfo(np.int16).max) + 1


def compact_ids(ids: np.ndarray) -> np.ndarray:
    """Expert ids as a trace holds them: uint8 when every id is in 0..255 (one byte an id), else int16 (the
    caller has checked they fit). A uint8 array is returned as it is; otherwise the uint8 result is a new
    array, so the caller drops the wider one."""
    if ids.dtype == np.uint8:
        return ids
    if ids.size == 0 or (int(ids.min()) >= 0 and int(ids.max()) < 256):
        return ids.astype(np.uint8)
    return ids.astype(np.int16, copy=False)


def _member(data: Any, key: str, file: str) -> np.ndarray:
    """One array of the archive; a damaged member (bad CRC, truncated, bad .npy header, too big) is an EmuError."""
    try:
        return data[key]
    except (MemoryError, RecursionError) as err:
        raise EmuError(f"cannot load the array ({err.__class__.__name__}); the file is damaged or not a moe-emu "
                       "trace", file=file, key=key) from None
    except Exception as err:  # zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError...
        reason = (str(err).splitlines() or [""])[0][:200]
        raise EmuError(f"cannot read the array ({err.__class__.__name__}: {reason}); the file is damaged or "
                       "not a moe-emu trace", file=file, key=key) from None


def _header(raw: np.ndarray, file: str) -> dict[str, Any]:
    if raw.dtype.kind not in "US" or raw.ndim != 0:
        raise EmuError(f"expected a JSON string, got a {raw.dtype} array of shape {raw.shape}", file=file,
                       key="header")
    try:
        header = json.loads(str(raw))
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        reason = err.msg if isinstance(err, json.JSONDecodeError) else err.__class__.__name__
        raise EmuError(f"not valid JSON ({reason}); expected the trace header object", file=file,
                       key="header") from None
    if not isinstance(header, dict):
        raise EmuError(f"expected a JSON object, got {type(header).__name__}", file=file, key="header")
    return header


def _logits(a: np.ndarray, file: str) -> np.ndarray:
    """The stored logits as float16, refusing values the cast would turn into infinities."""
    if a.dtype.kind not in "fiu":
        raise EmuError(f"expected a numeric array, got dtype {a.dtype}", file=file, key="logits")
    if a.size and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise EmuError("expected finite router logits", file=file, key="logits")
    if a.size and float(np.abs(a).max()) > _F16_MAX:
        raise EmuError(f"router logit {float(np.abs(a).max()):g} does not fit float16: expected |logit| <= "
                       f"{_F16_MAX:g}", file=file, key="logits")
    return a.astype(np.float16, copy=False)


_F16_MAX = float(np.finfo(np.float16).max)


def _cast(a: np.ndarray, dtype: np.dtype, key: str, file: str) -> np.ndarray:
    """`a` as `dtype`, refusing what the cast would silently change: floats into ints, ids out of range."""
    if dtype.kind == "f":
        if a.dtype.kind not in "fiu":
            raise EmuError(f"expected a numeric array, got dtype {a.dtype}", file=file, key=key)
        return a.astype(dtype, copy=False)
    if a.dtype.kind not in "iu":
        raise EmuError(f"expected an integer array, got dtype {a.dtype}", file=file, key=key)
    if a.size and a.dtype != dtype:
        info = np.iinfo(dtype)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            raise EmuError(f"values {lo}..{hi} do not fit {dtype} ({info.min}..{info.max})", file=file, key=key)
    return a.astype(dtype, copy=False)
