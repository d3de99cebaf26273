"""Making a draft model cheaper. Exactness never depends on the draft (the accept/reject rule corrects any q),
so a draft may be quantised freely: only acceptance and speed change.

On CPU the decode step is bound by reading weights, and the draft's share of a round is K forwards. `int8_draft`
returns an int8 copy of the draft (per-output-channel symmetric int8 weights). Backends:

- "int8pack" (DEFAULT_BACKEND; "auto" is an alias): weight-only int8, every nn.Linear an `Int8Linear` calling the
  aten kernel `torch._weight_int8pack_mm` (what gpt-fast and torchao's weight-only int8 lower to). The copy shares
  the draft's other weights and computes in bf16 on CPU (the kernel's fast path there). No deprecated API, no
  extra dependency; acceptance within a point of the draft's own.
- "torch.ao": torch.ao dynamic quantisation (fbgemm, activations quantised per step too). The cheapest eager step
  on CPU but it loses acceptance, and torch.ao.quantization is deprecated: an explicit opt-in only.
- "torchao" / "torchao_weight_only": torchao's `Int8DynamicActivationInt8WeightConfig` / `Int8WeightOnlyConfig`
  (optional extra `torchao`): slower than the bf16 draft eagerly on CPU; for compiled or GPU use.

Measurements per backend: docs/speed.md.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

BACKENDS = ("auto", "int8pack", "torch.ao", "torchao", "torchao_weight_only")
DEFAULT_BACKEND = "int8pack"  # maintained, and the best acceptance per draft-step cost (docs/speed.md)


class Int8Linear(nn.Module):
    """y = x @ (int8 W * scale)^T + b with per-output-channel symmetric scales (weight-only int8)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype | None = None):
        super().__init__()
        w = linear.weight.detach()
        dtype = dtype or (w.dtype if w.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.float32)
        scale = w.abs().amax(dim=1).float().clamp(min=1e-12) / 127.0  # [out] (the max of bf16 values is exact)
        q = w.to(torch.float32, copy=True).div_(scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # [out, in]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # parameters (not buffers) so that parameter-based accounting (bytes read per step, .to(), .device) sees them
        self.weight = nn.Parameter(q, requires_grad=False)
        self.scales = nn.Parameter(scale.to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != self.scales.dtype:
            x2 = x2.to(self.scales.dtype)
        y = torch._weight_int8pack_mm(x2, self.weight, self.scales)  # [N, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, {self.scales.dtype} scales"


def _replace_linears(module: nn.Module, dtype: torch.dtype | None) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear(child, dtype))
        else:
            _replace_linears(child, dtype)


def float_linear_bytes(model: nn.Module) -> int:
    """Bytes of the plain floating-point nn.Linear weights of `model`: what an int8 copy would shrink."""
    weights = [m.weight for m in model.modules() if type(m) is nn.Linear]
    return sum(w.numel() * w.element_size() for w in weights
               if type(w.detach()) is torch.Tensor and w.is_floating_point())


def offloaded_tensors(model: nn.Module) -> int:
    """How many of `model`'s parameters and buffers hold no data here ("meta": offloaded by accelerate, or not
    loaded): a copy made from them would compute garbage."""
    return sum(t.device.type == "meta" for t in (*model.parameters(), *model.buffers()))


def int8_draft(model, backend: str = DEFAULT_BACKEND):
    """An int8 copy of `model` for drafting; the original is left untouched.

    Args:
        model (`PreTrainedModel`): the draft. A model with offloaded ("meta") weights, or none left to quantise, is
            refused with a ValueError.
        backend (`str`, *optional*, defaults to `"int8pack"`): `"int8pack"` (or `"auto"`): weight-only int8 per
            output channel on aten's `_weight_int8pack_mm`, computing in bf16 on CPU, sharing every weight but the
            Linear ones; `"torch.ao"`: torch.ao's dynamic int8 (deprecated by torch; CPU only; float32 activations);
            `"torchao"` / `"torchao_weight_only"`: torchao's configs (the optional `torchao` extra).

    The output of speculative generation never depends on the draft, so this is exact; it changes only how often
    drafts are accepted and what a draft step costs. `draft_quantization="auto"` (generate()'s default) makes the
    int8pack copy by itself where it pays; making one takes seconds for a 0.5B draft.
    """
    if backend not in BACKENDS:
        raise ValueError(f"int8_draft: backend must be one of {BACKENDS}, not {backend!r}.")
    if offloaded_tensors(model):
        raise ValueError(f"int8_draft: {offloaded_tensors(model)} weights of {type(model).__name__} are offloaded "
                         "(on the 'meta' device, e.g. by accelerate's device_map): an int8 copy needs them in memory. "
                         "Load the draft without offloading, or draft with it as given.")
    if not float_linear_bytes(model):
        raise ValueError(f"int8_draft: {type(model).__name__} has no floating-point nn.Linear weights to quantise "
                         "(already quantised?): draft with it as given.")
    if backend == "auto":
        backend = DEFAULT_BACKEND
    if backend == "torch.ao":
        if model.device.type != "cpu":
            raise ValueError(f"int8_draft(backend='torch.ao') quantises for CPU execution; the model is on {model.device}.")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        draft = copy.deepcopy(model).float()  # dynamic quantisation takes float32 modules
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
            quantize_dynamic(draft, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
        return draft.eval()
    if backend.startswith("torchao"):
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("int8_draft(backend='torchao') needs torchao: pip install torchao") from e
        draft = copy.deepcopy(model)
        config = Int8WeightOnlyConfig() if backend == "torchao_weight_only" else Int8DynamicActivationInt8WeightConfig()
        quantize_(draft, config)
        return draft.eval()
    return _int8pack_copy(model)


def _int8pack_copy(model):
    """`model`'s module tree sharing its parameters' storage and its buffers (no weight copied), every nn.Linear an
    Int8Linear. The copy's parameters are Parameter objects of its own (ties kept), so that `model.float()` or
    `.to()`, which swap a parameter's data in place, never change the copy under it. On CPU it computes in bf16, the
    aten kernel's fast path there (float32 activations are several times slower on AVX2); elsewhere in the model's
    own float dtype."""
    memo = {id(t): t for t in model.buffers()}
    memo.update({id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()})
    draft = copy.deepcopy(model, memo=memo)
    dtype = next(draft.parameters()).dtype
    if model.device.type == "cpu" or dtype not in (torch.bfloat16, torch.float16, torch.float32):
        dtype = torch.bfloat16 if model.device.type == "cpu" else torch.float32
    _replace_linears(draft, dtype)
    _recast_parameters(draft, dtype)
    return draft.eval()


def _recast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Give `model`'s floating-point parameters of another dtype new `dtype` copies (ties kept), leaving the shared
    originals untouched (Module.to would convert them in place)."""
    recast: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype:
                if id(p) not in recast:
                    recast[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
                setattr(module, name, recast[id(p)])
