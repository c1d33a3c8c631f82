"""A merged copy of the adapted weights for the llama.cpp engine: decode with no LoRA in the graph.

A resident LoRA costs every decode step four extra graph nodes per adapted matrix (x·A, ·B, scale,
add): 672 nodes beside the base's ~750 for a rank-16 adapter on the seven projections of a 24-layer
model, each a thread barrier. When one adapter (or mix) stays active, the engine builds, in the
background, W' = W + sum_i s_i (alpha_i / r_i) B_i A_i for only the matrices the adapters touch:

- W is read from the model's GGUF file (the bytes llama.cpp loaded), dequantized with the `gguf`
  package; the delta comes from the engine's own GGUF LoRA files, so it is what llama.cpp adds;
- W' is requantized to Q8_0 (F32/F16 bases keep their type: exact). Requantizing to the base's
  4/5-bit type would round most of a LoRA delta away: it is smaller than half of that grid's step;
- the copy lives in one numpy arena wrapped as a ggml CPU buffer; applying it rewrites each
  weight tensor's type, strides, data, buffer and extra fields (ggml.h's `struct ggml_tensor`),
  restoring puts the saved fields back. Both are field writes: no weights move.

llama.cpp has no public API to reach a model's tensors; `llama_internal_get_tensor_map` (exported
for its quantize tool and tests) does. Its result and the struct layout are checked against
ggml's own accessors before anything is written; when they disagree (another llama.cpp build),
merging is off and says why, and the engine keeps decoding with the resident LoRA.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import llama_cpp


class MergeUnavailable(RuntimeError):
    """This llama.cpp build's tensors cannot be reached or checked; merging stays off."""


class _GgmlTensor(ctypes.Structure):
    # ggml.h: GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64 bytes, GGML_MAX_SRC 10, GGML_MAX_NAME 64.
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


_TENSOR_MAP = "_Z29llama_internal_get_tensor_mapB5cxx11PK11llama_model"  # C++: returns a vector&
_PAIR = 40  # std::pair<std::string, ggml_tensor *> in libstdc++: a 32-byte string, then the pointer
GGML_BACKEND_BUFFER_USAGE_WEIGHTS = 1
F32, F16, Q8_0 = 0, 1, 8  # ggml_type values (also gguf.GGMLQuantizationType's)


@functools.cache
def _libs():
    """(libllama, libggml-base, libggml-cpu) from llama-cpp-python's folder: the loaded copies."""
    folder = Path(llama_cpp.__file__).parent / "lib"

    def lib(stem):
        found = sorted(folder.glob(f"lib{stem}.so*")) or sorted(folder.glob(f"lib{stem}.dylib")) \
            or sorted(folder.glob(f"{stem}.dll"))
        if not found:
            raise MergeUnavailable(f"llama-cpp-python has no {stem} library in {folder}")
        return ctypes.CDLL(str(found[0]))

    llama, base, cpu = lib("llama"), lib("ggml-base"), lib("ggml-cpu")
    try:
        tmap = getattr(llama, _TENSOR_MAP)
    except AttributeError:
        raise MergeUnavailable("this llama.cpp build does not export llama_internal_get_tensor_map") from None
    tmap.restype, tmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    for name, res, args in (("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
                            ("ggml_get_data", ctypes.c_void_p, [ctypes.c_void_p]),
                            ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
                            ("ggml_backend_buffer_set_usage", None, [ctypes.c_void_p, ctypes.c_int]),
                            ("ggml_backend_buffer_free", None, [ctypes.c_void_p])):
        getattr(base, name).restype, getattr(base, name).argtypes = res, args
    cpu.ggml_backend_cpu_buffer_from_ptr.restype = ctypes.c_void_p
    cpu.ggml_backend_cpu_buffer_from_ptr.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return llama, base, cpu


def tensor_table(model) -> dict[str, int]:
    """{tensor name: address of its ggml_tensor} for a loaded llama_model, every entry checked
    against ggml's accessors (name, data pointer, byte size)."""
    llama, base, _ = _libs()
    begin, end, _cap = (ctypes.c_void_p * 3).from_address(getattr(llama, _TENSOR_MAP)(address(model)))
    if not begin or (end - begin) % _PAIR:
        raise MergeUnavailable("llama.cpp's tensor map has an unexpected layout")
    table = {}
    for at in range(begin, end, _PAIR):
        addr = ctypes.c_void_p.from_address(at + 32).value
        t = _GgmlTensor.from_address(addr)
        name = base.ggml_get_name(addr)
        nbytes = t.nb[3] * t.ne[3]
        if (t.name != name or t.data != base.ggml_get_data(addr) or nbytes != base.ggml_nbytes(addr)
                or not 0 <= t.type < 64):
            raise MergeUnavailable("this llama.cpp build's ggml_tensor layout is not the one LoRA Desk knows")
        table[name.decode()] = addr
    if not table:
        raise MergeUnavailable("llama.cpp returned no tensors for the model")
    return table


def address(ptr) -> int:
    return ctypes.cast(ptr, ctypes.c_void_p).value


def _lora_deltas(loras: list[tuple[Path, float]]) -> dict[str, list[tuple[np.ndarray, np.ndarray, float]]]:
    """{base tensor name: [(B (out, r), A (r, in), scale), ...]} from GGUF LoRA files, with llama.cpp's
    scale: adapter scale * alpha / r."""
    import gguf

    out: dict[str, list] = {}
    for path, weight in loras:
        reader = gguf.GGUFReader(str(path))
        alpha_field = reader.fields.get("adapter.lora.alpha")
        alpha = float(alpha_field.parts[alpha_field.data[0]][0]) if alpha_field else 0.0
        tensors = {t.name: t for t in reader.tensors}
        for name, t in tensors.items():
            if not name.endswith(".lora_a"):
                continue
            base = name.removesuffix(".lora_a")
            a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)  # (r, in)
            bt = tensors[base + ".lora_b"]
            b = np.asarray(gguf.quants.dequantize(bt.data, bt.tensor_type), dtype=np.float32)  # (out, r)
            rank = a.shape[0]
            out.setdefault(base, []).append((b, a, weight * (alpha / rank if alpha else 1.0)))
    return out


Q4_0, Q4_1, Q5_0, Q5_1 = 2, 3, 6, 7
BLOCK32 = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)  # the 32-wide types the gguf package also writes


def _merged_type(base_type: int, n_per_row: int, keep: bool = False) -> int:
    """Q8_0, or with `keep` the base's own type where the gguf package can write it (fewer bytes
    per step, but a delta under half the grid's step rounds away)."""
    if base_type in (F32, F16):
        return base_type
    if keep and base_type in BLOCK32 and n_per_row % 32 == 0:
        return base_type
    return Q8_0 if n_per_row % 32 == 0 else F16


def build(model_path: Path, loras: list[tuple[Path, float]], cancel: threading.Event | None = None,
          keep_type: bool = False) -> dict[str, tuple[int, tuple[int, ...], np.ndarray]]:
    """The merged matrices: {name: (ggml type, ne (in, out), bytes as uint8)}. Pure numpy on the
    GGUF files (no llama.cpp state): it runs in a background thread beside decoding. `keep_type`:
    requantize to the base's type where possible (LORADESK_MERGE_TYPE=base), else Q8_0."""
    import gguf

    deltas = _lora_deltas(loras)
    reader = gguf.GGUFReader(str(model_path))
    tensors = {t.name: t for t in reader.tensors}
    out = {}
    for name, parts in sorted(deltas.items()):
        if cancel is not None and cancel.is_set():
            return {}
        t = tensors.get(name)
        if t is None:
            raise MergeUnavailable(f"the model has no tensor {name} that the adapter changes")
        w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)  # (out, in)
        for b, a, scale in parts:
            w += scale * (b @ a)
        kind = _merged_type(int(t.tensor_type), w.shape[1], keep_type)
        if kind == F32:
            data = w.view(np.uint8)
        elif kind == F16:
            data = w.astype(np.float16).view(np.uint8)
        else:
            data = gguf.quants.quantize(w, gguf.GGMLQuantizationType(kind))
        out[name] = (kind, (w.shape[1], w.shape[0]), np.ascontiguousarray(data).reshape(-1))
    return out


_SWAPPED = ("type", "buffer", "nb", "data", "extra")


@dataclass
class MergedCopy:
    """Merged matrices in one arena, ready to swap into the model's tensors."""
    key: tuple  # the adapter set ((name, scale), ...) it merges
    arena: np.ndarray
    buffer: int  # ggml_backend_buffer_t wrapping the arena
    swaps: list = field(default_factory=list)  # (tensor address, merged fields)
    applied: bool = False
    saved: list = field(default_factory=list)  # the tensors' own fields, read when applied
    seconds: float = 0.0  # how long the build took

    @property
    def nbytes(self) -> int:
        return int(self.arena.nbytes)

    def apply(self) -> None:
        if not self.applied:
            self.saved = [_fields(_GgmlTensor.from_address(addr)) for addr, _ in self.swaps]
            for addr, merged in self.swaps:
                _write(addr, merged)
            self.applied = True

    def restore(self) -> None:
        if self.applied:
            for (addr, _), orig in zip(self.swaps, self.saved):
                _write(addr, orig)
            self.applied = False

    def free(self) -> None:
        self.restore()
        if self.buffer:
            _libs()[1].ggml_backend_buffer_free(self.buffer)
            self.buffer = 0
        self.swaps.clear()


def _fields(t: _GgmlTensor) -> tuple:
    return (t.type, t.buffer, tuple(t.nb), t.data, t.extra)


def _write(addr: int, fields: tuple) -> None:
    t = _GgmlTensor.from_address(addr)
    t.type, t.buffer, t.nb[:], t.data, t.extra = fields[0], fields[1], fields[2], fields[3], fields[4]


def _row_bytes(kind: int, n: int) -> tuple[int, int]:
    """(bytes of `n` values of a row, bytes of one block) for a ggml type."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    return n // block * size, size


def assemble(key: tuple, table: dict[str, int], merged: dict) -> MergedCopy:
    """Put the built matrices in one 64-byte-aligned arena wrapped as a ggml CPU buffer, with each
    tensor's original and merged fields (written only by apply/restore)."""
    _, base, cpu = _libs()
    offsets, total = {}, 0
    for name, (_kind, _ne, data) in merged.items():
        offsets[name] = total
        total += (data.nbytes + 63) // 64 * 64
    raw = np.empty(total + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    arena = raw[start:start + total]
    buffer = cpu.ggml_backend_cpu_buffer_from_ptr(arena.ctypes.data, max(total, 1))
    if not buffer:
        raise MergeUnavailable("ggml could not wrap the merged weights as a buffer")
    base.ggml_backend_buffer_set_usage(buffer, GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
    copy = MergedCopy(key=key, arena=raw, buffer=buffer)
    for name, (kind, ne, data) in merged.items():
        addr = table.get(name)
        if addr is None:
            copy.free()
            raise MergeUnavailable(f"the loaded model has no tensor {name}")
        t = _GgmlTensor.from_address(addr)
        if (t.ne[0], t.ne[1], t.ne[2], t.ne[3]) != (*ne, 1, 1):
            copy.free()
            raise MergeUnavailable(f"{name}: the GGUF file's shape {ne} is not the loaded tensor's")
        off = offsets[name]
        arena[off:off + data.nbytes] = data
        row, block_bytes = _row_bytes(kind, ne[0])
        nb = (block_bytes, row, row * ne[1], row * ne[1])
        copy.swaps.append((addr, (kind, buffer, nb, arena.ctypes.data + off, None)))
    return copy
