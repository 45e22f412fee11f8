"""Inference precision: names, refusals, and the fast paths' agreement with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import entitwist.inference.precision as precision
from entitwist.errors import InputError
from entitwist.inference.precision import (
    PrecisionPlan,
    apply_precision,
    resolve_precision,
    supported_precisions,
)
from entitwist.inference.predictor import Predictor


@pytest.fixture(scope="module")
def tiny_model():
    from entitwist.models.enti_twistnet import EntiTwistNet
    from entitwist.models.registry import get_config

    torch.manual_seed(0)
    return EntiTwistNet(get_config("entitwist_tiny", pretrained=False)).eval()


def picture(size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((size, size + 20, 3)) * 80 + 60).astype(np.uint8)
    img[10:50, 20:70] = (220, 30, 30)
    return img


def test_auto_resolves_by_what_the_machine_has(monkeypatch):
    monkeypatch.setattr(precision, "_quantized_engine", lambda: "x86")
    monkeypatch.setattr(precision, "_cpu_has_int8_dot", lambda: True)
    assert resolve_precision("auto", "cpu") == "int8"
    # without int8 dot-product instructions int8 is not faster: auto keeps the exact path,
    # and int8 is still there by name
    monkeypatch.setattr(precision, "_cpu_has_int8_dot", lambda: False)
    assert resolve_precision("auto", "cpu") == "32"
    assert resolve_precision("int8", "cpu") == "int8"
    monkeypatch.setattr(precision, "_cpu_has_int8_dot", lambda: True)
    monkeypatch.setattr(precision, "_quantized_engine", lambda: None)
    assert resolve_precision("auto", "cpu") == "32"
    assert "int8" not in supported_precisions("cpu")
    assert resolve_precision("FP32", "cpu") == "32"


def test_int8_dot_instructions_are_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    cpuinfo = tmp_path / "cpuinfo"

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert precision._cpu_has_int8_dot() is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert precision._cpu_has_int8_dot() is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n")
    assert precision._cpu_has_int8_dot() is True
    cpuinfo.unlink()
    assert precision._cpu_has_int8_dot() is False


def test_unrunnable_precision_names_the_runnable_ones(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: False)
    monkeypatch.setattr(precision, "_quantized_engine", lambda: "x86")
    with pytest.raises(InputError) as err:
        resolve_precision("bf16", "cpu")
    message = str(err.value)
    assert "\n" not in message and "bf16" in message and "auto, 32, int8" in message
    with pytest.raises(InputError, match="unknown; use one of auto, 32"):
        resolve_precision("fp8", "cpu")
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_exact_path_is_the_callers_model(tiny_model):
    plan = apply_precision(tiny_model, "32", "cpu")
    assert plan.model is tiny_model and plan.name == "32"


def test_int8_quantises_encoder_linears_of_a_copy_only(tiny_model):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    plan = apply_precision(tiny_model, "int8", "cpu")
    assert plan.name == "int8" and plan.model is not tiny_model
    for part in ("visual", "text"):
        quantised = [m for m in getattr(plan.model, part).modules() if isinstance(m, DynamicLinear)]
        assert quantised, part
        plain = [type(m) for m in getattr(tiny_model, part).modules() if type(m) is nn.Linear]
        assert len(plain) == len(quantised)  # every one, and the caller's model is untouched
    assert plan.model.fusions is tiny_model.fusions and plan.model.decoder is tiny_model.decoder


def test_int8_predictions_agree_with_fp32(tiny_model):
    sentences = ["the red square", "the grey ground on the left"]
    exact = Predictor(tiny_model, device="cpu", precision="32")
    fast = Predictor(tiny_model, device="cpu", precision="int8")
    assert exact.precision == "32" and fast.precision == "int8"
    p32 = exact.predict_probability(picture(), sentences, entities=None)
    p8 = fast.predict_probability(picture(), sentences, entities=None)
    assert p32.shape == p8.shape == (2, 96, 116)
    diff = np.abs(p32 - p8).max()
    assert 0 < diff <= 0.05  # quantised (not the fp32 path) and within the promise
    # int8 quantises each layer's input with its batch's range: one sample per forward, so
    # a sentence's answer does not depend on the others in the call
    single = fast.predict_probability(picture(), sentences[1:], entities=None)
    np.testing.assert_array_equal(single[0], p8[1])
    # and the fp32 path is the network's own forward, unchanged
    with torch.no_grad():
        x, _ = exact.prepare(picture())
        tok = tiny_model.tokenizer(sentences)
        logits = tiny_model(x.expand(2, -1, -1, -1), tok["input_ids"], tok["attention_mask"])
    own = torch.softmax(logits, 1)[:, 1:2]
    own = torch.nn.functional.interpolate(own, size=(96, 116), mode="bilinear")[:, 0]
    np.testing.assert_allclose(p32, own.numpy(), atol=1e-6)


def test_model_without_encoders_is_left_alone():
    model = nn.Sequential(nn.Linear(4, 4))
    plan = apply_precision(model, "int8", "cpu")
    assert plan.model is model


def test_bf16_plan_runs_the_forward_in_bfloat16():
    lin = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with PrecisionPlan(lin, "bf16", torch.device("cpu")).context():
        y = lin(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), lin(x), atol=0.05, rtol=0.02)
    with PrecisionPlan(lin, "32", torch.device("cpu")).context():
        assert lin(x).dtype == torch.float32


def test_predictor_refuses_an_unknown_precision(tiny_model):
    with pytest.raises(InputError, match="--precision 'half' is unknown"):
        Predictor(tiny_model, device="cpu", precision="half")
