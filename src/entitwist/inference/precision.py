"""Numeric precision of inference: the exact fp32 path or a faster one with the same answers.

``Predictor(..., precision=...)`` and ``entitwist segment --precision`` take one of:

- ``"32"``: fp32 eager, the network exactly as trained;
- ``"int8"`` (CPU): the linear layers of the image and text encoders (Swin, BERT/CLIP; most
  of the network's multiply-adds) run as dynamically quantised int8 layers
  (``torch.ao.quantization.quantize_dynamic``: int8 weights per output channel, activations
  quantised per call from their own range), through the CPU's quantised engine (fbgemm/x86);
  the fusion stages, the spatial attention and the decoder stay fp32;
- ``"bf16"``: bfloat16 autocast; on CUDA when the GPU has bf16, on a CPU only when it has
  native bf16 arithmetic (AVX-512 BF16 / AMX), where it is fast;
- ``"compile"``: ``torch.compile`` (inductor, frozen weights) of the fp32 network; needs a
  C++ compiler on a CPU, and the first forward of each input shape compiles (minutes for
  the Swin-B + BERT model), so it pays off only over many images of one size;
- ``"auto"`` (default): the fastest of these that this machine runs and that keeps the
  foreground probabilities within 0.05 of fp32 (measured with
  ``benchmarks/bench_predict.py``): ``"bf16"`` on a CUDA GPU with bf16, ``"int8"`` on a CPU
  with a quantised engine and int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX),
  otherwise ``"32"``. Without those instructions the int8 layers measured no faster than
  fp32 (0.98-1.12x on a 2-core AVX2 CPU), so ``auto`` keeps the exact path there; ``"int8"``
  can still be asked for by name.

A precision the machine cannot run is refused with one line naming those it can.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from entitwist.errors import InputError

__all__ = [
    "PRECISIONS",
    "PrecisionPlan",
    "apply_precision",
    "resolve_precision",
    "supported_precisions",
]

PRECISIONS = ("auto", "32", "int8", "bf16", "compile")
_ALIASES = {"fp32": "32", "float32": "32", "bfloat16": "bf16", "qint8": "int8"}
# the parts whose nn.Linear layers "int8" quantises; the fusion stages read some of their
# weights directly (e.g. the cube's W0), so they stay fp32 along with the decoder
_INT8_PARTS = ("visual", "text")


def _cpu_has_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _cpu_has_int8_dot() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX int8),
    from the kernel's CPU flags (Linux); False where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        return False
    return False


def _quantized_engine() -> str | None:
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    return None


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def supported_precisions(device: torch.device | str = "cpu") -> list[str]:
    """The precisions this machine runs on ``device``, ``"auto"`` first."""
    dev = torch.device(device)
    names = ["auto", "32"]
    if dev.type == "cpu":
        if _quantized_engine() is not None:
            names.append("int8")
        if _cpu_has_bf16():
            names.append("bf16")
        if _has_cxx():
            names.append("compile")
    elif dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            names.append("bf16")
        names.append("compile")
    return names


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``precision`` as a concrete name (``"auto"`` resolved) that runs on ``device``.

    Raises :class:`InputError` for an unknown name or one this machine cannot run.
    """
    dev = torch.device(device)
    name = _ALIASES.get(str(precision).strip().lower(), str(precision).strip().lower())
    supported = supported_precisions(dev)
    if name not in PRECISIONS:
        raise InputError(f"--precision {precision!r} is unknown; use one of {', '.join(supported)}")
    if name not in supported:
        raise InputError(
            f"--precision {name} does not run on this machine's {dev.type}; "
            f"use one of {', '.join(supported)}"
        )
    if name != "auto":
        return name
    if dev.type == "cuda" and "bf16" in supported:
        return "bf16"
    if dev.type == "cpu" and "int8" in supported and _cpu_has_int8_dot():
        return "int8"
    return "32"


@dataclass
class PrecisionPlan:
    """A network prepared for one precision.

    Attributes:
        model: the network to call (the caller's own module for ``"32"`` and ``"bf16"``, a
            quantised copy for ``"int8"``, a compiled wrapper for ``"compile"``).
        name: the concrete precision (``"auto"`` resolved).
        device: where it runs.
        per_sample: run a batch one sample at a time (set for a dynamically quantised
            network, whose int8 layers quantise with the range of the whole batch, so that
            batching sentences does not change any one's answer).
    """

    model: nn.Module
    name: str
    device: torch.device
    per_sample: bool = False

    def __call__(self, *inputs: Tensor | None) -> Tensor:
        """``model(*inputs)`` in this precision; batch-first tensors, None passed through."""
        with self.context():
            if not self.per_sample:
                return self.model(*inputs)
            n = next(t.shape[0] for t in inputs if t is not None)
            return torch.cat(
                [
                    self.model(*(None if t is None else t[i : i + 1] for t in inputs))
                    for i in range(n)
                ]
            )

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Wrap each forward in this (bf16 autocast for ``"bf16"``, nothing otherwise)."""
        if self.name == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def _quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` with its encoders' nn.Linear layers as dynamic int8 layers.

    The encoders are quantised copies; the rest (fusion stages, decoder) is shared with
    ``model``, which keeps its fp32 weights. A model without encoders is returned as it is.
    """
    parts = [p for p in _INT8_PARTS if isinstance(getattr(model, p, None), nn.Module)]
    if not parts:
        return model
    engine = _quantized_engine()
    if engine is not None and torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    quantized = copy.copy(model)  # a new top-level module sharing the unquantised parts
    quantized._modules = dict(model._modules)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name in parts:
            quantized._modules[name] = torch.ao.quantization.quantize_dynamic(
                model._modules[name], {nn.Linear}, dtype=torch.qint8
            )
    return quantized


def apply_precision(
    model: nn.Module, precision: str = "auto", device: torch.device | str = "cpu"
) -> PrecisionPlan:
    """Prepare ``model`` (already on ``device``, in eval mode) for ``precision``.

    ``"int8"`` quantises a copy (the caller's module keeps its fp32 weights); a model without
    ``visual``/``text`` encoders is left as it is.
    """
    dev = torch.device(device)
    name = resolve_precision(precision, dev)
    if name == "int8":
        quantized = _quantize_int8(model)
        return PrecisionPlan(quantized, name, dev, per_sample=quantized is not model)
    if name == "compile":
        compiled = torch.compile(model, options={"freezing": True})
        return PrecisionPlan(compiled, name, dev)  # type: ignore[arg-type]  # a compiled Module
    return PrecisionPlan(model, name, dev)
