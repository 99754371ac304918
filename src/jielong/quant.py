"""Weight-only quantized linear layers: int8 per output channel, int4 in groups.

Only the weights shrink; activations stay in the model's dtype. Decoding one token reads
every weight once, so on a CPU it is bound by memory bandwidth: fewer bytes per weight is
the speed-up (llama.cpp's q8_0 and q4 formats work the same way).

- int8: symmetric, one scale per output row: q = round(w / s), s = max|w_row| / 127,
  q in [-127, 127]; w ≈ q·s. torchao's Int8WeightOnlyConfig (per-row) is this scheme.
- int4: asymmetric, in groups of `group_size` inputs along each row (torchao's
  Int4WeightOnlyConfig, "tinygemm" parameters): s = (max - min) / 15, zero = min + 8·s,
  q = round((w - zero) / s + 8) in [0, 15]; w ≈ (q - 8)·s + zero. The zero is a float, not
  an integer, which is what torch's int4 kernels take.

Kernels (torch's own, no extra library; signatures as of torch 2.13):
- int8 on CPU: `torch.ops.aten._weight_int8pack_mm(x, q (out, in) int8, scales (out,))`.
- int4 on CPU: `aten._convert_weight_to_int4pack_for_cpu(q (out, in) int32, 2)` packs once at
  load, `aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)` per call,
  scales_and_zeros (in/group, out, 2) = (s, zero) pairs.
The quantized tensors are Parameters that never train (not buffers): `torch.compile`'s
freezing folds parameters into the compiled graph as constants (int8 decoding compiled:
108 → 187 tok/s on the 124m preset). Both kernels take bfloat16 activations on their fast
path: fp32 inputs run 4-8× slower than fp32 `F.linear` (measured on the 2-core AVX-512
box), so fp32 activations are rounded to bf16 for the kernel and its output cast back (the
kernels accumulate in fp32). Elsewhere (CUDA, MPS, or a shape the kernel refuses: in
features not a multiple of 16, int4 out features not a multiple of 16), and where the input
needs a gradient (the kernels have none), the weight is dequantized on the fly and
`F.linear` runs; torch's CUDA int4 kernel (tinygemm, another packing) is not wired in: no
GPU was at hand to test it.

On disk (`jielong quantize`): `….qweight` int8 (out, in), or for int4 uint8 (out, in/2)
with two values a byte, the even column in the high nibble (the layout torch's CUDA int4
packer reads); `….scales` (out,) or `….scales_and_zeros` (in/group, out, 2), bfloat16, as
the kernels take them. config.json gets `quantization_config` {"quant_method": "jielong",
"weights": "int8"|"int4", "group_size": …, "lm_head": …}: transformers refuses the folder
(an unknown quant_method) instead of misreading int8 tensors as weights.

    from jielong.quant import quantize
    quantize(model, "int4", group_size=128)     # every decoder-block nn.Linear, in place

Run as:
    jielong quantize runs/demo/model --to int8 --out runs/demo/model-int8
"""

from __future__ import annotations

import copy
import mmap
import os

import torch
import torch.nn.functional as F
from torch import nn

from jielong.errors import UserError

METHODS = ("int8", "int4")
# PackedLinear pays from about this many weights a layer: 2 threads, one row, a packed
# 128×128 took 15 µs where F.linear took 3; 512×512 even; 2048×768 1.9× faster (bench/RESULTS.md)
PACK_MIN_WEIGHTS = 1 << 18
GROUPS = (32, 64, 128, 256)  # the group sizes torch's int4 kernels accept
QUANT_METHOD = "jielong"


def _int4_kernel(x: torch.Tensor, packed: torch.Tensor, group: int, sz: torch.Tensor):
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)


def frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class QuantLinear(nn.Module):
    """y = x Wᵀ + b with W stored as int8 (per-row scales) or int4 (grouped scales and zeros).

    `qweight` is the portable layout (see the module docstring); for int4 on a CPU it holds
    the kernel's packed layout instead (`packed` True), which depends on the CPU's
    instruction set, and `state_dict` writes the portable one back out."""

    own_dtype = ("qweight", "scales", "scales_and_zeros")  # what load_model leaves as stored

    def __init__(self, in_features: int, out_features: int, method: str, group_size: int | None,
                 bias: bool, device=None, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = method, group_size
        # Parameters that never train, not buffers: torch.compile's freezing (the compiled
        # decode step) folds a model's parameters into the graph as constants and leaves
        # buffers as inputs — int8 decoding compiled ran at 187 tok/s with parameters and 108
        # with buffers (the 124m preset, 2 threads; bench/RESULTS.md, issue 23)
        if method == "int8":
            self.qweight = frozen(torch.empty(out_features, in_features, dtype=torch.int8,
                                              device=device))
            self.scales = frozen(torch.empty(out_features, dtype=torch.bfloat16, device=device))
        else:
            self.qweight = frozen(torch.empty(out_features, in_features // 2, dtype=torch.uint8,
                                              device=device))
            self.scales_and_zeros = frozen(torch.empty(
                in_features // group_size, out_features, 2, dtype=torch.bfloat16, device=device))
        self.register_parameter("bias", nn.Parameter(
            torch.empty(out_features, device=device, dtype=dtype), requires_grad=False)
            if bias else None)
        self.packed = False

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear, method: str, group_size: int | None) -> QuantLinear:
        w = lin.weight.detach().float()
        n, k = w.shape
        q = cls(k, n, method, group_size, lin.bias is not None, w.device, lin.weight.dtype)
        if method == "int8":
            # scales rounded to bf16 first, so the kernel's scale is exactly the one q was made with
            s = (w.abs().amax(1) / 127).clamp(min=1e-12).bfloat16()
            q.qweight.copy_((w / s.float()[:, None]).round().clamp(-127, 127))
            q.scales.copy_(s)
        else:
            g = w.reshape(n, k // group_size, group_size)
            lo, hi = g.amin(-1), g.amax(-1)
            s = ((hi - lo) / 15).clamp(min=1e-6).bfloat16()
            zero = (lo + 8 * s.float()).bfloat16()
            v = ((g - zero.float()[..., None]) / s.float()[..., None] + 8).round().clamp(0, 15)
            v = v.reshape(n, k).to(torch.uint8)
            q.qweight.copy_(v[:, ::2] << 4 | v[:, 1::2])
            q.scales_and_zeros.copy_(torch.stack([s, zero], -1).transpose(0, 1))
        if lin.bias is not None:
            q.bias.copy_(lin.bias.detach())
        return q.pack()

    def kernel_ok(self, device: torch.device) -> bool:
        """Whether torch has a fused kernel for this layer on `device` (else: dequantize)."""
        return device.type == "cpu" and self.in_features % 16 == 0 and \
            (self.method == "int8" or self.out_features % 16 == 0)

    @torch.no_grad()
    def pack(self) -> QuantLinear:
        """Put an int4 weight into the CPU kernel's layout (once, at load)."""
        if self.method == "int4" and not self.packed and self.kernel_ok(self.qweight.device):
            self.qweight = frozen(torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                self.int4_values().to(torch.int32), 2))
            self.packed = True
        return self

    def int4_values(self) -> torch.Tensor:
        """The int4 weight as (out, in) values 0..15."""
        if self.packed:
            # The packed layout depends on the CPU, so read it back through the kernel itself:
            # an identity input with scale 1 and zero 8 yields each q exactly (small integers
            # are exact in bf16).
            k, n = self.in_features, self.out_features
            eye = torch.eye(k, dtype=torch.bfloat16, device=self.qweight.device)
            sz = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand(k // self.group_size, n, 2)
            return _int4_kernel(eye, self.qweight, self.group_size, sz.contiguous()).T.round() \
                .to(torch.uint8)
        b = self.qweight
        return torch.stack([b >> 4, b & 15], -1).reshape(self.out_features, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight this layer applies, in `dtype`."""
        if self.method == "int8":
            return (self.qweight.float() * self.scales.float()[:, None]).to(dtype)
        s, zero = self.scales_and_zeros.float().transpose(0, 1).unbind(-1)  # (out, groups)
        q = self.int4_values().float().reshape(self.out_features, -1, self.group_size)
        w = (q - 8) * s[..., None] + zero[..., None]
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the kernels have no backward: an input that needs a gradient (a LoRA training on
        # top, QLoRA-style) goes through the dequantized weight
        grad = torch.is_grad_enabled() and x.requires_grad
        if self.kernel_ok(x.device) and self.qweight.device == x.device and not grad:
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            if self.method == "int8":
                y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
            else:
                y = _int4_kernel(flat, self.pack().qweight, self.group_size, self.scales_and_zeros)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else
                        self.bias.to(x.dtype))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed:  # the portable layout on disk, whatever this CPU packs
            v = self.int4_values()
            destination[prefix + "qweight"] = v[:, ::2] << 4 | v[:, 1::2]

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.method == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"{self.method}{g}, bias={self.bias is not None}"


class PackedLinear(nn.Module):
    """A float linear layer for decoding on a CPU: its weight reordered once, at load, into
    the blocked layout oneDNN's matmul reads (`torch.ops.mkldnn._reorder_linear_weight`, what
    inductor does to a frozen graph's weights), then `mkldnn._linear_pointwise` per call.
    `F.linear` hands the plain (out, in) matrix to MKL, which re-reads it in its own order
    every call: for one row (a decoded token) the packed matmul took 271 µs where F.linear took
    500 (a 2048×768 fp32 weight, 2 threads; 134 vs 210 µs in bf16; 567 vs 966 µs for 32 rows:
    bench/RESULTS.md, issue 23). The same sums in another order: outputs within float
    rounding of F.linear's.

    Only the packed copy is kept (no extra memory); `dequantize` reads the plain matrix back
    and `state_dict` writes it as `weight`, so a packed model saves as before. The packed
    matmul has no backward: an input that needs a gradient goes through the plain matrix."""

    def __init__(self, lin: nn.Linear, rows: int | None = None):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        # rows: the inputs' rows oneDNN picks a layout for (None: any). 1 suits decoding one
        # sequence (224 vs 275 µs for that weight) but costs batches (690 vs 589 µs at 32 rows)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), rows)
        self.bias = lin.bias

    @staticmethod
    def usable(lin: nn.Module) -> bool:
        w = getattr(lin, "weight", None)
        return type(lin) is nn.Linear and w is not None and w.device.type == "cpu" and \
            w.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The plain (out, in) weight (a new tensor, in `dtype` if given)."""
        w = self.packed.to_dense()
        return w if dtype is None else w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or x.dtype != self.packed.dtype \
                or x.device.type != "cpu" or x.numel() == 0:
            return F.linear(x.to(self.packed.dtype), self.dequantize(), self.bias)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, bias,
                                                  "none", [], "")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.dequantize()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, packed for oneDNN ({self.packed.dtype})"


# ----------------------------------------------------------------------------- the model

def check_method(method: str | None, where: str = "--quantize") -> str | None:
    """`method` as one of METHODS (None, "none" or "off": no quantization), else a UserError."""
    if method is None or str(method).lower() in ("none", "off", ""):
        return None
    if method not in METHODS:
        raise UserError(f"{where} {method}: not a quantization; choose int8 (per-channel) or "
                        "int4 (grouped), or leave it out for the model's own weights")
    return method


def _group_for(k: int, group_size: int) -> int | None:
    """The largest kernel group size ≤ `group_size` that divides `k` (None: none does)."""
    fits = [g for g in GROUPS if g <= group_size and k % g == 0]
    return max(fits) if fits else None


def _targets(model: nn.Module, lm_head: bool) -> list[str]:
    paths = [f"model.layers.{p}" for p, m in model.model.layers.named_modules()
             if type(m) is nn.Linear]
    return paths + (["lm_head"] if lm_head else [])


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize(model: nn.Module, method: str, group_size: int = 128, lm_head: bool = False):
    """Replace every nn.Linear of the decoder blocks (and lm_head with `lm_head`) by a
    `QuantLinear`, in place; record it in model.config.quantization_config; return the model.

    int4 layers whose input size `group_size` does not divide take the largest of 32, 64,
    128, 256 that does (below `group_size`); a layer none divides stays in float."""
    method = check_method(method, "quantize")
    if method is None:
        return model
    if method == "int4" and group_size not in GROUPS:
        raise UserError(f"int4 group size {group_size}: choose one of "
                        f"{', '.join(map(str, GROUPS))} (128 is usual)")
    if getattr(model.config, "quantization_config", None):
        have = model.config.quantization_config.get("weights")
        if have == method:
            return model
        raise UserError(f"the model is already quantized to {have}; load its float weights "
                        f"to quantize to {method}")
    if getattr(model, "lora_adapters", None):
        raise UserError("quantize the base model before loading LoRA adapters on it")
    for path in _targets(model, lm_head):
        lin = model.get_submodule(path)
        g = _group_for(lin.in_features, group_size) if method == "int4" else None
        if method == "int4" and g is None:
            continue
        _replace(model, path, QuantLinear.from_linear(lin, method, g))
    model.config.quantization_config = {"quant_method": QUANT_METHOD, "weights": method,
                                        "group_size": group_size if method == "int4" else None,
                                        "lm_head": lm_head}
    return model


def pack_linears(model: nn.Module, rows: int | None = None,
                 min_weights: int | None = None) -> int:
    """Replace the float nn.Linear layers of a CPU model that only decodes by `PackedLinear`,
    in place (decoder blocks, and lm_head unless it shares the embedding's matrix); the number
    replaced. Layers of fewer than `min_weights` (default PACK_MIN_WEIGHTS) weights stay
    plain (oneDNN's fixed cost per call outweighs the gain there: the demo model keeps every
    layer). For inference only: training needs the plain weights as Parameters, so
    `open_model(pack=…)` is what the decoding commands ask for: rows=1 for generate, chat and
    agent (one sequence at a time), None for serve (batches); `JIELONG_NO_PACK=1` leaves
    every layer plain."""
    if os.environ.get("JIELONG_NO_PACK"):
        return 0
    least = PACK_MIN_WEIGHTS if min_weights is None else min_weights
    paths = _targets(model, False)
    head, embed = getattr(model, "lm_head", None), model.model.embed_tokens
    if head is not None and getattr(head, "weight", None) is not embed.weight:
        paths.append("lm_head")
    n = 0
    for path in paths:
        lin = model.get_submodule(path)
        if PackedLinear.usable(lin) and lin.weight.numel() >= least:
            _replace(model, path, PackedLinear(lin, rows))
            n += 1
    return n


HUGE_PAGE = 2 << 20  # x86-64's and arm64's transparent huge page
HUGE_MIN_BYTES = 1 << 20


def huge_pages(model: nn.Module) -> int:
    """Move a CPU model's large plain tensors (each of at least HUGE_MIN_BYTES: the linear
    layers' weights, float or quantized, and the embedding) into one anonymous mapping that
    Linux backs with 2 MB pages (transparent huge pages, asked for with
    `madvise(MADV_HUGEPAGE)`), in place; the bytes moved. Decoding one token streams every
    weight once, and with 4 KB pages that stream also walks a page table entry every 4 KB:
    the 124m preset's compiled fp32 decode took 64-89 tok/s (median 72) with its weights
    where torch put them and 75-119 (median 81) in huge pages, faster in 8 of 10 alternating
    pairs of processes; bf16 compiled gained about 7%, int8 none (bench/RESULTS.md, issue 23).

    Each tensor gets a storage of its own inside the mapping (`torch.frombuffer` at its
    offset), so saving, `state_dict` and tied weights behave as before; values are copied
    bit for bit. oneDNN's packed weights (PackedLinear) live in oneDNN's memory and stay
    there. Where the kernel does not offer the advice (not Linux) or
    `JIELONG_NO_HUGE_PAGES=1`, nothing moves. Calling it again moves only new tensors."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or os.environ.get("JIELONG_NO_HUGE_PAGES"):
        return 0
    todo = {id(t): t for t in (*model.parameters(), *model.buffers())  # a shared one once
            if t.device.type == "cpu" and t.layout == torch.strided and t.is_contiguous()
            and t.numel() * t.element_size() >= HUGE_MIN_BYTES
            and not getattr(t, "in_huge_pages", False)}
    if not todo:
        return 0
    spans = [-(-t.numel() * t.element_size() // 64) * 64 for t in todo.values()]
    size = sum(spans) + HUGE_PAGE  # room to start the first tensor on a 2 MB boundary
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    area.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: the faults then take 2 MB pages
    offset = -torch.frombuffer(area, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE
    for t, span in zip(todo.values(), spans, strict=True):
        n = t.numel() * t.element_size()
        # normal tensors even when called under inference mode (a decoder may be built there):
        # an inference tensor as a weight would refuse to train afterwards
        with torch.inference_mode(False), torch.no_grad():
            home = torch.frombuffer(area, dtype=torch.uint8, count=n, offset=offset)
            home = home.view(t.dtype).view(t.shape)
            home.copy_(t)
        t.data = home  # the same Parameter object: ties and optimizers still see it
        t.in_huge_pages = True
        offset += span
    return sum(spans)


def prepare(model: nn.Module, qc: dict, where: str = "config.json") -> None:
    """Give a freshly built (meta-device) model the empty quantized layers that
    `quantization_config` `qc` describes, for a quantized checkpoint to load into."""
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise UserError(f"{where}: quantization_config {qc!r} is not one jielong wrote; jielong "
                        "loads its own int8/int4 folders (`jielong quantize`) and float weights")
    method = check_method(qc.get("weights"), f"{where}: quantization_config weights")
    group = qc.get("group_size") or 128
    for path in _targets(model, bool(qc.get("lm_head"))):
        lin = model.get_submodule(path)
        g = _group_for(lin.in_features, group) if method == "int4" else None
        if method == "int4" and g is None:
            continue
        _replace(model, path, QuantLinear(lin.in_features, lin.out_features, method, g,
                                          lin.bias is not None, device="meta"))


def pack(model: nn.Module) -> None:
    """Put every int4 layer of a just-loaded model into its kernel's layout."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.pack()


def dequantized(model: nn.Module) -> nn.Module:
    """A copy of `model` with every QuantLinear back to an nn.Linear holding its dequantized
    weight (what the quantized model computes, up to the kernels' bf16 activations)."""
    out = copy.deepcopy(model)
    for path, m in list(out.named_modules()):
        if isinstance(m, QuantLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                            device=m.qweight.device)
            lin.weight.data = m.dequantize()
            if m.bias is not None:
                lin.bias.data = m.bias.detach().float().clone()
            _replace(out, path, lin)
    out.config.quantization_config = None
    return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's tensors take in memory (parameters and buffers, a shared one once)."""
    seen = {}
    packed = [m.packed for m in model.modules() if isinstance(m, PackedLinear)]
    for t in list(model.parameters()) + list(model.buffers()) + packed:
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
