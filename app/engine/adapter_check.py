"""Does an adapter fit a model: the shapes of a model's adaptable layers, and one error listing
every mismatch between an adapter and them (as mlx-lm's load_adapters reports)."""
from __future__ import annotations

from app.engine.lora import LoraWeights
from app.errors import AdapterError


def linear_shapes_from_config(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of every attention/MLP projection, from a config.json (any of ARCHS)."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * hd
    shapes = {}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj": (h, q), p + "self_attn.k_proj": (h, kv), p + "self_attn.v_proj": (h, kv),
            p + "self_attn.o_proj": (q, h), p + "mlp.gate_proj": (h, i), p + "mlp.up_proj": (h, i),
            p + "mlp.down_proj": (i, h),
        })
    return shapes


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
