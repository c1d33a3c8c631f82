"""PEFT's LoRA layers made cheap to switch: every layer reads its active adapter from one shared
`SharedActive` (a switch is one assignment, where PEFT's set_adapter walks every module), and the
plain-LoRA and mix cases take a short forward path."""
from __future__ import annotations

import torch


class SharedActive:
    """The one piece of state a switch changes, read by every PEFT LoRA layer of the model."""

    __slots__ = ("names", "weights")

    def __init__(self):
        self.names: list[str] = []  # PEFT's active_adapters: [] runs the base model
        self.weights: dict[str, float] | None = None  # a mix's weight per name; None: each adapter as is


_SHARED_CLASSES: dict[type, type] = {}


def share_active(layer, state: SharedActive) -> None:
    """Make a PEFT LoraLayer read `active_adapter` from `state` (a subclass with a property;
    PEFT's own set_adapter still writes its private field, which is then ignored)."""
    cls = type(layer)
    if getattr(cls, "_loradesk_shared", False):
        layer._loradesk_active = state
        return
    sub = _SHARED_CLASSES.get(cls)
    if sub is None:
        attrs = {
            "_loradesk_shared": True,
            "__module__": cls.__module__,
            "active_adapter": property(lambda self: self._loradesk_active.names),
        }
        from peft.tuners.lora.layer import Linear as LoraLinear

        if cls is LoraLinear:
            attrs["forward"] = _fast_forward
        sub = type(cls.__name__, (cls,), attrs)
        _SHARED_CLASSES[cls] = sub
    layer._loradesk_active = state
    layer.__class__ = sub


def _fast_forward(self, x, *args, **kwargs):
    """PEFT's LoRA Linear forward for the one case that serves answers (inference, one plain LoRA
    adapter active, nothing merged): the same arithmetic, base(x) + B(A(x)) * scale, without
    walking its general path (dropout and module calls, per-call checks). That path costs about
    a third of the LoRA time on CPU, where 168 small layers run per token."""
    names = self._loradesk_active.names
    weights = self._loradesk_active.weights
    if weights is not None and not (args or kwargs or self.training or self.merged or self.disable_adapters):
        return _mix_forward(self, x, names, weights)
    if len(names) != 1 or args or kwargs or self.training or self.merged or self.disable_adapters:
        return super(type(self), self).forward(x, *args, **kwargs)
    name = names[0]
    if name not in self.lora_A or name in self.lora_variant:
        return super(type(self), self).forward(x, *args, **kwargs)
    result = self.base_layer(x)
    a = self.lora_A[name].weight
    b = self.lora_B[name]
    lora = torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b.weight, b.bias)
    return (result + lora * self.scaling[name]).to(result.dtype)


def _mix_forward(self, x, names, weights):
    """base(x) + sum over the mix of w * scale * B(A(x)): PEFT's own sum of active adapters, each
    times its weight (PEFT alone would add them at weight 1). The same arithmetic as
    `_fast_forward`, so a mix of one adapter at 1.0 gives that adapter's exact output."""
    result = self.base_layer(x)
    total = None
    for name in names:
        if name not in self.lora_A:
            continue
        a = self.lora_A[name].weight
        b = self.lora_B[name]
        lora = torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b.weight, b.bias)
        lora = lora * (self.scaling[name] * weights[name])
        total = lora if total is None else total + lora
    return result if total is None else (result + total).to(result.dtype)
