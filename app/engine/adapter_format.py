"""LoRA adapter folders in the two formats LoRA Desk speaks, read into one engine-neutral form.

- MLX (mlx-lm's trainer): `adapter_config.json` with `lora_parameters` {rank, scale, keys} and
  `adapters.safetensors` with `<module>.lora_a` (in, r) and `<module>.lora_b` (r, out).
- PEFT: `adapter_config.json` with `r`, `lora_alpha`, `target_modules` and
  `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` (r, in) and
  `...lora_B.weight` (out, r); scale = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA).

Both become `LoraWeights`: per module, A (in, r), B (r, out) and a scale, so that
y = W x + scale * (x A) B. Module names are the model's own (`model.layers.3.self_attn.q_proj`),
the same in mlx-lm and transformers for Qwen2, Llama and Gemma2.
Pickle files (`.bin`, `.pt`) are refused, never opened.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.engine.base import AdapterError

METADATA_FILE = "loradesk.json"  # our own facts (base model, fingerprint, training run); optional
MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Architecture facts that must agree between an adapter's base model and the loaded one.
FINGERPRINT_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "vocab_size",
)


@dataclass
class LoraModule:
    a: np.ndarray  # (in, r)
    b: np.ndarray  # (r, out)
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[1]


@dataclass
class LoraWeights:
    modules: dict[str, LoraModule]
    format: str  # the format it was read from
    base_model: str | None = None
    fingerprint: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # the loradesk.json contents, if any
    dropout: float = 0.0

    @property
    def rank(self) -> int:
        return max((m.rank for m in self.modules.values()), default=0)

    @property
    def scale(self) -> float:
        return next(iter(self.modules.values())).scale if self.modules else 0.0

    def nbytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())

    def target_modules(self) -> list[str]:
        return sorted({k.rsplit(".", 1)[-1] for k in self.modules})

    def layer_indices(self) -> list[int]:
        out = set()
        for k in self.modules:
            parts = k.split(".")
            if "layers" in parts:
                out.add(int(parts[parts.index("layers") + 1]))
        return sorted(out)


def fingerprint_of(config: dict) -> dict:
    """The architecture facts of a model's config.json (text_config for multimodal wrappers)."""
    cfg = config.get("text_config", config)
    fp = {k: cfg.get(k) for k in FINGERPRINT_KEYS if cfg.get(k) is not None}
    if "num_key_value_heads" not in fp and "num_attention_heads" in fp:
        fp["num_key_value_heads"] = fp["num_attention_heads"]
    return fp


def detect_format(folder: Path) -> str:
    """'mlx' or 'peft', or an AdapterError saying what is wrong with the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise AdapterError(f"adapter folder {folder} does not exist")
    if not folder.is_dir():
        raise AdapterError(f"{folder} is not a folder; an adapter is a folder with adapter_config.json and safetensors")
    names = {p.name for p in folder.iterdir()}
    if MLX_WEIGHTS in names:
        return "mlx"
    if PEFT_WEIGHTS in names:
        return "peft"
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise AdapterError(
            f"{folder / pickles[0]} is a pickle file; LoRA Desk never unpickles (it can run code). "
            "Convert it to safetensors where you trust it: PeftModel.from_pretrained(base, folder)"
            ".save_pretrained(out, safe_serialization=True), then add that folder."
        )
    if "adapter_config.json" not in names:
        raise AdapterError(f"{folder} has no adapter_config.json; it is not an adapter folder")
    raise AdapterError(f"{folder} has adapter_config.json but no {MLX_WEIGHTS} or {PEFT_WEIGHTS}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is not valid JSON ({e}); the adapter folder is corrupt") from None


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path} is not a readable safetensors file ({e}); the adapter is corrupt") from None
    # bf16 has no numpy dtype: safetensors.numpy refuses it; such files are read via torch or mlx.
    return tensors


def _load_tensors_any(path: Path) -> dict[str, np.ndarray]:
    try:
        return _read_tensors(path)
    except AdapterError as first:
        if "bf16" not in str(first).lower() and "bfloat16" not in str(first).lower():
            raise
    try:  # bf16 weights (mlx-lm and PEFT both write them): upcast to float32 via mlx
        import mlx.core as mx

        return {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(path)).items()}
    except ImportError:
        from safetensors.torch import load_file

        return {k: v.float().numpy() for k, v in load_file(str(path)).items()}


def read_adapter(folder: str | Path) -> LoraWeights:
    """Read and sanity-check an adapter folder of either format (not yet against a model)."""
    folder = Path(folder)
    fmt = detect_format(folder)
    config = _read_json(folder / "adapter_config.json")
    meta = _read_json(folder / METADATA_FILE) if (folder / METADATA_FILE).exists() else {}
    if fmt == "mlx":
        weights = _read_mlx(folder, config)
    else:
        weights = _read_peft(folder, config)
    weights.metadata = meta
    weights.base_model = meta.get("base_model") or weights.base_model
    weights.fingerprint = meta.get("fingerprint", {})
    if not weights.modules:
        raise AdapterError(f"{folder} holds no LoRA weights")
    return weights


def _read_mlx(folder: Path, config: dict) -> LoraWeights:
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise AdapterError(
            f"{folder}: fine_tune_type {kind!r} cannot be hot-swapped; only LoRA adapters can "
            "(fuse it into a model with mlx_lm.fuse instead)"
        )
    params = config.get("lora_parameters")
    if not params or "scale" not in params:
        raise AdapterError(f"{folder}/adapter_config.json has no lora_parameters.scale; not an mlx-lm LoRA config")
    tensors = _load_tensors_any(folder / MLX_WEIGHTS)
    modules, problems = {}, []
    for key in sorted(tensors):
        if key.endswith(".lora_a"):
            name = key[: -len(".lora_a")]
            b = tensors.get(name + ".lora_b")
            a = tensors[key]
            if b is None:
                problems.append(f"{name}: lora_a without lora_b")
                continue
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
                problems.append(f"{name}: lora_a {a.shape} and lora_b {b.shape} do not chain")
                continue
            modules[name] = LoraModule(a.astype(np.float32), b.astype(np.float32), float(params["scale"]))
        elif not key.endswith(".lora_b"):
            problems.append(f"{key}: not a LoRA tensor (only lora_a/lora_b are supported)")
    if problems:
        raise AdapterError(f"{folder / MLX_WEIGHTS}: " + "; ".join(problems))
    return LoraWeights(modules, "mlx", base_model=config.get("model"), dropout=float(params.get("dropout", 0.0)))


def _peft_scale(config: dict, short: str, rank: int) -> float:
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", short):  # PEFT's get_pattern_key: first match wins
            alpha = value
            break
    root = math.sqrt(rank) if config.get("use_rslora") else rank
    return float(alpha) / root


def _read_peft(folder: Path, config: dict) -> LoraWeights:
    if config.get("peft_type", "LORA").upper() != "LORA":
        raise AdapterError(f"{folder}: peft_type {config.get('peft_type')!r} is not LoRA")
    if config.get("use_dora"):
        raise AdapterError(f"{folder}: DoRA adapters cannot be hot-swapped; merge it into the model instead")
    # Options that change the computation in ways LoraModule cannot hold: refuse, never half-apply.
    unsupported = [k for k in ("lora_bias", "fan_in_fan_out", "layer_replication") if config.get(k)]
    if unsupported:
        raise AdapterError(f"{folder}/adapter_config.json uses {', '.join(unsupported)}, which LoRA Desk cannot "
                           "apply; merge the adapter into the model instead")
    tensors = _load_tensors_any(folder / PEFT_WEIGHTS)
    modules, problems = {}, []
    for key in sorted(tensors):
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                problems.append(f"{key}: not a LoRA A/B tensor (modules_to_save, embeddings and biases are not supported)")
            continue
        prefix = key.split(".lora_A.")[0]
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        a = tensors[key]
        if b is None:
            problems.append(f"{prefix}: lora_A without lora_B")
            continue
        name = prefix.removeprefix("base_model.model.")
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            problems.append(f"{name}: lora_A {a.shape} and lora_B {b.shape} do not chain")
            continue
        modules[name] = LoraModule(
            np.ascontiguousarray(a.T.astype(np.float32)),
            np.ascontiguousarray(b.T.astype(np.float32)),
            _peft_scale(config, name, rank),
        )
    if problems:
        raise AdapterError(f"{folder / PEFT_WEIGHTS}: " + "; ".join(problems))
    return LoraWeights(
        modules, "peft", base_model=config.get("base_model_name_or_path"),
        dropout=float(config.get("lora_dropout", 0.0)),
    )


def check_against_model(
    weights: LoraWeights,
    linear_shapes: dict[str, tuple[int, int]],
    fingerprint: dict,
    where: str,
    model_name: str = "the loaded model",
) -> None:
    """Raise one AdapterError listing every mismatch between an adapter and a model.

    `linear_shapes` maps each adaptable module name of the model to its (in, out) features.
    """
    problems = []
    fp = weights.fingerprint
    diff = {k: (fp[k], fingerprint.get(k)) for k in fp if k in fingerprint and fp[k] != fingerprint[k]}
    if diff:
        was = ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
        now = ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
        raise AdapterError(
            f"adapter {where} was trained for {weights.base_model or 'another model'} ({was}); "
            f"{model_name} has {now}. Use an adapter trained for this model, or load its base model."
        )
    for name, mod in sorted(weights.modules.items()):
        shape = linear_shapes.get(name)
        if shape is None:
            problems.append(f"{name}: no such linear layer in the model")
        elif (mod.a.shape[0], mod.b.shape[1]) != shape:
            problems.append(f"{name}: adapter maps {mod.a.shape[0]}->{mod.b.shape[1]}, model layer is {shape[0]}->{shape[1]}")
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise AdapterError(
            f"adapter {where} does not fit {model_name} ({len(problems)} mismatches; was it trained for "
            f"{weights.base_model or 'another model'}?):\n  " + "\n  ".join(shown)
        )


def weights_digest(model_path: Path) -> str:
    """sha256 over each weight file's name, size, first and last MiB: identifies the base weights
    without reading gigabytes (a full hash of a 3B model takes longer than loading it)."""
    h = hashlib.sha256()
    for f in sorted(Path(model_path).glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()


# Conversions of one model published under other names: mlx-community/X-4bit, X-GGUF, X-MLX, ...
_VARIANT_SUFFIX = re.compile(r"[-_.](\d+bit|gguf|mlx|bf16|fp16|f16|f32|awq|gptq|int4|int8|q\d\w*)$")


def base_model_key(name: str | None) -> str | None:
    """A model name reduced to what identifies the base model: the hub repo ids of one model in its
    engines' formats (app.models.SUPPORTED pairs; owner, -4bit/-GGUF/-MLX suffixes, case) agree."""
    if not name or not str(name).strip():
        return None
    from app import models

    s = str(name).strip().rstrip("/")
    for choice in (*models.SUPPORTED, models.MISTRAL_7B):
        repos = {v.lower() for v in vars(choice).values() if isinstance(v, str) and "/" in v}
        if s.lower() in repos:
            s = choice.torch_repo
            break
    s = s.rsplit("/", 1)[-1].lower()
    while _VARIANT_SUFFIX.search(s):
        s = _VARIANT_SUFFIX.sub("", s)
    return s or None


def _model_name(ref: str | None, path: Path | None = None) -> str | None:
    """The hub repo id a model reference stands for, or None for a folder, a file or a name the
    user chose (an imported GGUF) that we cannot tie to a hub model."""
    from app import models

    store = models.paths.models_dir().resolve()
    for candidate in (Path(str(p)) for p in (path, ref) if p):
        try:
            folder = candidate.expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if folder.is_file():  # a model file (GGUF) inside its download folder
            folder = folder.parent
        if folder.parent == store and "--" in folder.name:  # our download: models/<owner>--<name>
            return folder.name.replace("--", "/", 1)
        for part in folder.parts:  # the hub cache: models--<owner>--<name>/snapshots/<sha>
            if part.startswith("models--") and part.count("--") >= 2:
                return part[len("models--"):].replace("--", "/", 1)
    if ref and models._looks_like_repo_id(str(ref)) and not Path(str(ref)).expanduser().exists():
        return str(ref)
    for candidate in (Path(str(p)).expanduser() for p in (path, ref) if p):
        named = config_name(candidate if candidate.is_dir() else candidate.parent)
        if named:
            return named
    return None


def config_name(folder: Path) -> str | None:
    """The model name a local folder's config.json carries (`_name_or_path` when it is a repo id, or
    the GGUF's `general.name` that transformers keeps as `_model_name_or_path` in a folder made from
    a GGUF: 'Qwen2.5 Coder 0.5B Instruct' -> 'Qwen2.5-Coder-0.5B-Instruct'); a path is no name."""
    from app import models

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("_name_or_path", "_model_name_or_path"):
        value = str(cfg.get(key) or "").strip()
        if not value or value.startswith(("/", ".", "~")) or "\\" in value or ":" in value:
            continue
        if models._looks_like_repo_id(value) or " " in value:
            return value.replace(" ", "-")
    return None


def check_base_model(weights: LoraWeights, model, where: str, force: bool = False) -> str | None:
    """Compare the base model an adapter records with `model` (a ModelInfo, or a model reference).

    Same weights (LoRA Desk's weights hash) or the same base name: None. Both sides named and
    different: AdapterError naming both, unless `force` (then a warning). One side unnamed: a
    one-line warning saying what could not be checked. Every engine calls this after the shape check.
    A ModelInfo with `path=None` carries in `ref` a name the engine read from the model itself
    (e.g. a GGUF's general.name); a plain string is a model reference as the user gives one.
    """
    ref, path = (model.ref, model.path) if hasattr(model, "path") else (str(model), None)
    named_by_engine = hasattr(model, "path") and path is None and bool(ref)
    recorded = weights.base_model
    digest = weights.metadata.get("base_weights_sample_sha256")
    if path is not None and Path(path).is_dir():
        if digest and digest == weights_digest(Path(path)):
            return None  # the very weights it was trained on
        if recorded and Path(recorded).expanduser().exists() and Path(recorded).expanduser().resolve() == Path(path).resolve():
            return None
    adapter_name = _model_name(recorded)
    model_name = ref if named_by_engine else _model_name(ref, path)
    a, m = base_model_key(adapter_name), base_model_key(model_name)
    shown = model_name or ref
    if a and m:
        if a == m:
            return None
        if force:
            return f"adapter {where} was made for {adapter_name}, not {shown}; using it anyway (--force)"
        raise AdapterError(
            f"adapter {where} was made for {adapter_name}; the loaded model is {shown}. Load {adapter_name} "
            f"(--model {adapter_name}) or use an adapter made for {shown}; --force uses it anyway."
        )
    if not recorded:
        return f"adapter {where} does not record its base model; cannot check it was made for {shown}"
    if digest and path is not None:
        return (f"adapter {where} was made for {recorded}, whose weights differ from {shown}'s "
                "(unnamed, so it may be a converted copy); check its answers")
    return f"adapter {where} was made for {recorded}; {shown} cannot be identified to compare, so it is used unchecked"


def _atomic_folder(out: Path):
    """A temp folder beside `out`; call the returned commit() to move it into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))

    def commit():
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)

    return tmp, commit


def write_metadata(folder: Path, weights: LoraWeights) -> None:
    meta = dict(weights.metadata)
    if weights.base_model:
        meta["base_model"] = weights.base_model
    if weights.fingerprint:
        meta["fingerprint"] = weights.fingerprint
    (Path(folder) / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def write_mlx(weights: LoraWeights, out: str | Path) -> Path:
    """Write an mlx-lm adapter folder (loadable by `mlx_lm.load(..., adapter_path=out)`).

    mlx-lm has one rank and scale per adapter; modules with another scale get it folded into B,
    and lower-rank modules are zero-padded to the adapter's rank (the product is unchanged).
    mlx-lm adapts the last `num_layers` layers; modules it adapts that the file lacks keep B = 0.
    """
    from safetensors.numpy import save_file

    scale, rank = weights.scale, weights.rank
    tensors = {}
    for name, m in weights.modules.items():
        pad = rank - m.rank
        tensors[f"{name}.lora_a"] = np.pad(m.a, ((0, 0), (0, pad))).astype(np.float32)
        tensors[f"{name}.lora_b"] = np.pad(m.b * (m.scale / scale), ((0, pad), (0, 0))).astype(np.float32)
    layers = weights.layer_indices()
    total = weights.fingerprint.get("num_hidden_layers")
    config = {
        "fine_tune_type": "lora",
        "num_layers": total - layers[0] if total and layers else len(layers),
        "lora_parameters": {
            "rank": weights.rank,
            "scale": scale,
            "dropout": weights.dropout,
            "keys": sorted({k.split("layers.", 1)[-1].split(".", 1)[-1] for k in weights.modules}),
        },
    }
    if weights.base_model:
        config["model"] = weights.base_model
    tmp, commit = _atomic_folder(Path(out))
    save_file(tensors, str(tmp / MLX_WEIGHTS))
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_metadata(tmp, weights)
    commit()
    return Path(out)


def _peft_targets(weights: LoraWeights) -> tuple[list[str], list[int] | None]:
    """PEFT's `target_modules` (+ `layers_to_transform`) selecting exactly the adapter's modules:
    short names when the adapter covers every listed module in each of its layers, else full names."""
    keys = {k.split(".layers.", 1)[-1].split(".", 1)[-1] for k in weights.modules}
    shorts = sorted({k.rsplit(".", 1)[-1] for k in keys})
    layers = weights.layer_indices()
    prefixes = {k.split(".layers.", 1)[0] for k in weights.modules if ".layers." in k}
    rect = {f"{p}.layers.{n}.{k}" for p in prefixes for n in layers for k in keys}
    if len(shorts) != len(keys) or len(prefixes) != 1 or rect != set(weights.modules):
        return sorted(weights.modules), None
    n_layers = weights.fingerprint.get("num_hidden_layers")
    every = n_layers is not None and layers == list(range(n_layers))
    return shorts, None if every else layers


def write_peft(weights: LoraWeights, out: str | Path, base_model_name: str | None = None) -> Path:
    """Write a PEFT LoRA folder that `PeftModel.from_pretrained(base, out)` (and vLLM/LoRAX) load
    unchanged. Modules whose rank or scale differ from the first get rank_pattern/alpha_pattern
    entries by full module name (PEFT matches them as `(.*\\.)?name$`)."""
    from safetensors.numpy import save_file

    first = next(iter(weights.modules.values()))
    r0, s0 = first.rank, first.scale
    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    for name, m in weights.modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(m.a.T, dtype=np.float32)
        tensors[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(m.b.T, dtype=np.float32)
        if m.rank != r0:
            rank_pattern[name] = m.rank
        if m.rank != r0 or not math.isclose(m.scale, s0, rel_tol=1e-6):
            alpha_pattern[name] = m.scale * m.rank  # scale = alpha / r
    targets, layers = _peft_targets(weights)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name or weights.base_model,
        "r": r0,
        "lora_alpha": s0 * r0,
        "lora_dropout": weights.dropout,
        "target_modules": targets,
        "layers_to_transform": layers,
        "layers_pattern": "layers" if layers is not None else None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    tmp, commit = _atomic_folder(Path(out))
    save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_metadata(tmp, weights)
    commit()
    return Path(out)
