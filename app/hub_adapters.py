"""Task adapters on the Hugging Face Hub: search for ones that fit the loaded model, get one into
the store (pushing one of ours is hub_push.py). The CLI (`loradesk adapters search|get|push`) and the app's "Find on
the Hub…" dialog call these functions (the app from worker threads); no Qt here.

Fit is decided before anything large is downloaded: the Hub's `base_model:adapter:<base repo>` tag
finds candidates; each one's adapter_config.json (LoRA, no DoRA, no modules_to_save, its base model)
and its safetensors header (read with HTTP range requests: tensor names and shapes only) are
compared with the base model's config.json. Ranking counts the task record's `[hub] keywords` (and
its dataset ids) in the card's datasets, the tags, the repo name and the card text, then downloads
and likes. A `get` downloads one pinned commit, checks the files' sha256 against the Hub's, reads
the adapter with the engines' own reader (pickles refused), checks shapes and base model, and
registers it with the repo, commit and file hashes in its loradesk.json.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from app import hub, models, paths, store
from app.engine.adapter_check import check_against_model
from app.engine.adapter_format import read_adapter
from app.engine.base_model import base_model_key, check_base_model, repo_id_of
from app.engine.lora import METADATA_FILE, MLX_WEIGHTS, PEFT_WEIGHTS, PICKLE_SUFFIXES, fingerprint_of
from app.errors import AdapterError
from app.hub import Cancelled, HubUnavailable, ProgressFn, check_online, network_error  # noqa: F401 - HubUnavailable: part of this API
from app.models import local_repo_folder
from app.names import check_name
from app.tasks import get_task

ADAPTER_FILES = ("adapter_config.json", PEFT_WEIGHTS, MLX_WEIGHTS)
MAX_CANDIDATES = 40  # adapters examined per search (each costs three small requests)
SEARCH_THREADS = 8
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# -- which base model, and what its layers look like ---------------------------------------------------
def base_repo(model_ref: str | None, base: str | None = None) -> str:
    """The hub repo id of the original weights behind `model_ref` (MLX and GGUF conversions of a
    supported model map to it), or `base` when given. A local folder or GGUF that does not name its
    model needs `base`."""
    if base:
        return base.strip()
    ref = str(model_ref or "")
    for m in (*models.SUPPORTED, models.MISTRAL_7B):
        if ref in (m.torch_repo, m.mlx_repo, m.gguf_repo):
            return m.torch_repo
    name = repo_id_of(ref) if ref else None  # a repo id, or our download folder of one
    if name and not name.lower().endswith("gguf"):
        for m in (*models.SUPPORTED, models.MISTRAL_7B):
            if name in (m.mlx_repo, m.gguf_repo):
                return m.torch_repo
        return name
    raise ValueError(f"cannot tell which Hugging Face model {ref or 'the model'} is (a local folder or GGUF file "
                     "does not name it); pass the original repo with --base, e.g. --base Qwen/Qwen2.5-0.5B-Instruct")


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each adaptable linear layer, from a config.json (the logical shapes: a 4-bit copy
    packs them but adapts the same layers)."""
    from app.engine.adapter_check import linear_shapes_from_config  # the one copy of this arithmetic

    return linear_shapes_from_config(config.get("text_config", config))


def base_config(model_ref: str | None, repo: str) -> dict | None:
    """The base model's config.json: from the model's folder when it is on this machine, else the
    Hub's copy (a few KB); None when neither can be read (a gated repo, say)."""
    for folder in [Path(str(model_ref)).expanduser()] if model_ref else []:
        if folder.is_file():
            folder = folder.parent
        if (folder / "config.json").exists():
            return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for r in (model_ref, repo):
        if r and "/" in str(r) and (local_repo_folder(str(r)) / "config.json").exists():
            return json.loads((local_repo_folder(str(r)) / "config.json").read_text(encoding="utf-8"))
    try:
        return json.loads(Path(_fetch(repo, "config.json")).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - gated or missing: shapes are then checked after download only
        return None


# -- the Hub's cache for searches ------------------------------------------------------------------------
def _cache() -> Path:
    return paths.home() / "hub-cache"  # adapter configs and base configs read during searches


def _fetch(repo: str, filename: str, revision: str | None = None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, revision=revision, cache_dir=str(_cache()))


# -- search -----------------------------------------------------------------------------------------------
@dataclass
class HubAdapter:
    repo: str
    sha: str
    downloads: int
    likes: int
    license: str
    datasets: list[str]
    tags: list[str]
    size: int  # bytes of the weights
    rank: int
    targets: list[str]
    format: str  # "peft" or "mlx"
    adapter_base: str  # the base model its config names ("" if none)
    matches: list[str] = field(default_factory=list)  # task keywords found
    relevance: float = 0.0
    score: float = 0.0


@dataclass
class SearchResult:
    task: str
    base: str
    adapters: list[HubAdapter]  # fitting ones, best first
    skipped: list[tuple[str, str]]  # (repo, why it does not fit)
    shapes_checked: bool  # False when the base model's config could not be read


def _norm(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", text.lower())


def task_keywords(task: str) -> list[str]:
    """The task record's hub keywords and the short names of its datasets (openai/gsm8k -> gsm8k)."""
    t = get_task(task)
    words = [*t.hub_keywords, *(d.id.rsplit("/", 1)[-1].lower() for d in t.datasets)]
    return list(dict.fromkeys(_norm(w) for w in words))


def _hits(keyword: str, text: str) -> bool:
    """`keyword` as a word of `text` (both normalized); 'code_alpaca' also matches 'codealpaca'."""
    for k in {keyword, keyword.replace("_", "")}:
        if re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z])", text):
            return True
    return False


def relevance(task: str, datasets: list[str], tags: list[str], repo: str, card: str = "") -> tuple[float, list[str]]:
    """How strongly a hub adapter says it is for `task`: 3 per keyword in its card's datasets, 2 in
    its tags or name, 1 in the card's text (each keyword counted once, at its strongest)."""
    fields = ((3.0, _norm(" ".join(datasets))), (2.0, _norm(" ".join(tags) + " " + repo)), (1.0, _norm(card)))
    total, found = 0.0, []
    for k in task_keywords(task):
        w = next((w for w, text in fields if _hits(k, text)), 0.0)
        if w:
            total += w
            found.append(k)
    return total, found


def _fit_problems(cfg: dict, header, shapes: dict | None, base: str) -> list[str]:
    """Why an adapter (its adapter_config.json and safetensors header) cannot serve on `base`."""
    problems = []
    if "lora_parameters" in cfg:  # mlx-lm's format
        if cfg.get("fine_tune_type", "lora") != "lora":
            problems.append(f"fine_tune_type {cfg.get('fine_tune_type')}, not LoRA")
        recorded = cfg.get("model")
    else:
        if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
            problems.append(f"{cfg.get('peft_type')}, not LoRA")
        if cfg.get("use_dora"):
            problems.append("DoRA (cannot be hot-swapped)")
        if cfg.get("modules_to_save"):
            problems.append(f"modules_to_save {cfg['modules_to_save']} (full layers, not hot-swappable)")
        recorded = cfg.get("base_model_name_or_path")
    a, b = base_model_key(recorded), base_model_key(base)
    if a and b and a != b and "/" in str(recorded):
        problems.append(f"made for {recorded}")
    if shapes is not None and header is not None:
        bad = []
        for key, t in header.tensors.items():
            name, kind = _lora_tensor(key)
            if name is None:
                bad.append(f"{key}: not a LoRA A/B tensor")
                continue
            if name not in shapes:
                bad.append(f"{name}: no such layer")
            else:
                fin, fout = shapes[name]
                shape = tuple(t.shape)
                want = {"A": lambda s: s[1] == fin, "B": lambda s: s[0] == fout,
                        "a": lambda s: s[0] == fin, "b": lambda s: s[1] == fout}[kind]
                if len(shape) != 2 or not want(shape):
                    bad.append(f"{name}: {key.rsplit('.', 2)[-2]} {list(shape)} vs layer {fin}->{fout}")
        if bad:
            problems.append(f"{len(bad)} tensors do not fit ({bad[0]})")
    return problems


def _lora_tensor(key: str) -> tuple[str | None, str]:
    """('model.layers.0.self_attn.q_proj', 'A'|'B'|'a'|'b') for a PEFT or MLX LoRA tensor name."""
    m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"(.+)\.lora_([ab])", key)
    return (m.group(1), m.group(2)) if m else (None, "")


def search(task: str, model_ref: str | None = None, query: str | None = None, base: str | None = None,
           limit: int = 10, cancel=None) -> SearchResult:
    """Hub LoRA adapters that fit the base model of `model_ref` (or `base`), ranked for `task`."""
    from huggingface_hub import HfApi

    get_task(task)
    what = "adapters search"
    check_online(what)
    repo = base_repo(model_ref, base)
    try:
        # The base repo first, with one plain request: the listing below retries a dead connection
        # for ~20 s (huggingface-hub's backoff), and a base that is not on the Hub has no adapters.
        HfApi().model_info(repo)
    except Exception as e:  # noqa: BLE001 - becomes one line
        raise network_error(f"{what} (base model {repo})", e) from None
    try:
        config = base_config(model_ref, repo)
        shapes = linear_shapes(config) if config else None
        found = list(HfApi().list_models(filter=f"base_model:adapter:{repo}", search=query or None,
                                         sort="downloads", full=True, cardData=True, limit=MAX_CANDIDATES))
    except Exception as e:  # noqa: BLE001 - becomes one line
        raise network_error(what, e) from None
    fits, skipped = [], []
    # A few requests per candidate, each mostly waiting on the network: examined side by side.
    with ThreadPoolExecutor(max_workers=SEARCH_THREADS) as pool:
        jobs = [pool.submit(_examine_safely, info, task, repo, shapes) for info in found]
        for info, job in zip(found, jobs):
            while True:
                if cancel is not None and cancel.is_set():
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise Cancelled("search cancelled")
                try:
                    hit, why = job.result(timeout=0.2)
                    break
                except FutureTimeout:
                    continue
            if hit is None:
                skipped.append((info.id, why))
            else:
                fits.append(hit)
    fits.sort(key=lambda h: (-h.score, h.repo))
    return SearchResult(task, repo, fits[:limit], skipped, shapes is not None)


def _examine_safely(info, task: str, base: str, shapes) -> tuple[HubAdapter | None, str]:
    try:
        return _examine(info, task, base, shapes)
    except Exception as e:  # noqa: BLE001 - one unreadable candidate never ends the search
        err = network_error(info.id, e)
        if isinstance(err, HubUnavailable) and "cannot reach" in str(err):
            raise err from None
        return None, f"unreadable ({err})"


def _examine(info, task: str, base: str, shapes) -> tuple[HubAdapter | None, str]:
    from huggingface_hub import HfApi

    names = {s.rfilename for s in info.siblings or []}
    weights = next((n for n in (PEFT_WEIGHTS, MLX_WEIGHTS) if n in names), None)
    if weights is None:
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        return None, (f"pickle weights only ({pickles[0]}); LoRA Desk loads safetensors only" if pickles
                      else "no safetensors LoRA weights")
    if "adapter_config.json" not in names:
        return None, "no adapter_config.json"
    cfg = json.loads(Path(_fetch(info.id, "adapter_config.json", info.sha)).read_text(encoding="utf-8"))
    header = HfApi().parse_safetensors_file_metadata(info.id, weights, revision=info.sha)
    problems = _fit_problems(cfg, header, shapes, base)
    if problems:
        return None, "; ".join(problems)
    card = info.card_data.to_dict() if info.card_data is not None else {}
    datasets = card.get("datasets") or []
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    tags = list(info.tags or [])
    readme = ""
    if "README.md" in names:
        try:
            readme = Path(_fetch(info.id, "README.md", info.sha)).read_text(encoding="utf-8", errors="replace")[:20000]
        except Exception:  # noqa: BLE001 - the card text only adds to the ranking
            readme = ""
    rel, matches = relevance(task, datasets, tags, info.id, readme)
    downloads, likes = int(info.downloads or 0), int(info.likes or 0)
    size = sum(math.prod(t.shape) * _DTYPE_BYTES.get(t.dtype, 4) for t in header.tensors.values())
    ranks = [min(t.shape) for k, t in header.tensors.items() if len(t.shape) == 2]
    is_mlx = weights == MLX_WEIGHTS
    targets = (cfg.get("lora_parameters", {}).get("keys") if is_mlx else cfg.get("target_modules")) or []
    hit = HubAdapter(
        repo=info.id, sha=info.sha or "", downloads=downloads, likes=likes, license=str(card.get("license") or ""),
        datasets=datasets, tags=tags, size=size, rank=max(ranks, default=0),
        targets=sorted(targets) if isinstance(targets, list) else [str(targets)], format="mlx" if is_mlx else "peft",
        adapter_base=str(cfg.get("model") if is_mlx else cfg.get("base_model_name_or_path") or ""),
        matches=matches, relevance=rel,
        # The task's words first; popularity orders adapters of equal relevance (log: 10x downloads = +1).
        score=rel * 2 + math.log10(downloads + 1) + 0.5 * math.log10(likes + 1),
    )
    return hit, ""


# -- get ---------------------------------------------------------------------------------------------------
@dataclass
class GetResult:
    entry: object  # app.store.StoredAdapter
    repo: str
    revision: str  # the commit downloaded
    files: dict[str, str]  # file -> sha256
    warnings: list[str]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'owner/name@revision' -> ('owner/name', 'revision'); the revision is optional."""
    repo, _, rev = spec.strip().partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"{spec!r} is not a hub repo (owner/name[@revision])")
    return repo, rev or None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_name(repo: str) -> str:
    """A store name from a repo id: its name part, with what file names cannot hold replaced."""
    return re.sub(r'[\x00-\x1f<>:"/\\|?*]', "_", repo.rsplit("/", 1)[-1]).strip(" .") or "hub-adapter"


def get(spec: str, task: str, model_ref: str | None = None, base: str | None = None, name: str | None = None,
        force: bool = False, progress: ProgressFn | None = None, cancel=None) -> GetResult:
    """Download REPO[@REVISION] (one commit, resumable), validate it and register it for `task`."""
    from huggingface_hub import HfApi

    get_task(task)
    repo, revision = parse_spec(spec)
    name = check_name(name or default_name(repo))
    what = f"adapters get {repo}"
    check_online(what)
    base_id = base_repo(model_ref, base)
    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:  # noqa: BLE001
        raise network_error(what + (f"@{revision}" if revision else ""), e) from None
    names = {s.rfilename: s for s in info.siblings or []}
    if not any(n in names for n in (PEFT_WEIGHTS, MLX_WEIGHTS)):
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise AdapterError(f"{repo} holds only pickle weights ({pickles[0]}); LoRA Desk never unpickles (it can "
                               "run code). Ask its author for a safetensors copy, or convert it where you trust it.")
        raise AdapterError(f"{repo} has no LoRA weights in safetensors ({PEFT_WEIGHTS} or {MLX_WEIGHTS}); "
                           "it is not a LoRA adapter LoRA Desk can use")
    sha = info.sha
    # A staging folder per commit: a cancelled get resumes there (complete files are kept).
    stage = paths.adapters_dir() / ".hub" / f"{repo.replace('/', '--')}@{sha}"
    try:
        hub.snapshot(repo, stage, progress=progress, cancel=cancel, revision=sha,
                     allow_patterns=[*ADAPTER_FILES, METADATA_FILE, "README.md"])
    except hub.Cancelled:
        raise hub.Cancelled(f"download of {repo} cancelled; the files already downloaded are kept and the next "
                            "get fetches the rest") from None
    shutil.rmtree(stage / ".cache", ignore_errors=True)  # huggingface-hub's bookkeeping of the local copy
    try:
        files, warnings, entry = _register(stage, names, repo, sha, revision, info, task, name, model_ref, base_id,
                                           force)
    except AdapterError:
        shutil.rmtree(stage, ignore_errors=True)  # refused: nothing of it stays
        raise
    return GetResult(entry, repo, sha, files, warnings)


def _register(stage: Path, names: dict, repo: str, sha: str, revision, info, task: str, name: str, model_ref,
              base_id: str, force: bool):
    """Check a downloaded adapter (hashes, format, shapes, base model) and register it."""
    files = {}
    for f in sorted(p for p in stage.iterdir() if p.is_file()):
        files[f.name] = _sha256(f)
        lfs = getattr(names.get(f.name), "lfs", None)
        want = getattr(lfs, "sha256", None) if lfs is not None else None
        if want and want != files[f.name]:
            f.unlink()
            raise AdapterError(f"{repo}/{f.name} does not match the hub's sha256 (corrupt download); it was deleted: "
                               "run the get again")
    weights = read_adapter(stage)  # format, LoRA only, readable tensors
    warnings = []
    config = base_config(model_ref, base_id)
    where = f"{repo}@{sha[:12]}"
    if config is not None:
        check_against_model(weights, linear_shapes(config), fingerprint_of(config), where, model_name=base_id)
    else:
        warnings.append(f"the config of {base_id} could not be read; the adapter's shapes are checked when it loads")
    card = info.card_data.to_dict() if info.card_data is not None else {}
    meta = dict(weights.metadata)
    meta.update(task=task, base_model=weights.base_model or base_id, hub={
        "repo": repo, "revision": sha, "requested": revision or "main", "files": files,
        "license": card.get("license"), "datasets": card.get("datasets"),
        "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    meta.setdefault("name", name)
    if config is not None and not meta.get("fingerprint"):
        meta["fingerprint"] = fingerprint_of(config)
    (stage / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if weights.base_model:
        note = check_base_model(weights, base_id, where, force=force)  # raises unless --force
        warnings += [note] if note else []
    else:
        warnings.append(f"{repo} does not record its base model; it is tagged for {base_id} and its shapes fit")
    entry = store.add(task, stage, name=name, source=f"hf:{repo}@{sha}", move=True, force=force)
    return files, warnings, entry
