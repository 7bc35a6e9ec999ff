"""Vectorizable float32 transcendentals: rewrite ``exp``, ``erf``, ``tanh``, ``sigmoid`` and
``log`` calls in chosen blocks of a PrimFunc into polynomial forms.

LLVM lowers ``tirx.exp`` and friends to scalar libm calls (``expf``, ``erff``), so a vectorized
loop around them still runs one lane at a time. The forms here use only ``+ * /``, ``floor``,
comparisons, selects and int32 bit reinterpretation, which LLVM vectorizes. They follow
TVM's ``topi.fast_exp`` / ``fast_erf`` / ``fast_tanh`` (Cephes' ``expf`` and ``logf``, Eigen's
rational ``erf`` and ``tanh``), with explicit handling of what those leave out: ±inf, NaN,
overflow, and denormal results (exp) or inputs (log). ``exp`` (and so ``sigmoid``) keeps
Cephes' polynomial but rounds with the 1.5 * 2^23 trick and scales by an integer add into
the exponent field: ~25 instructions per vector instead of ~32 (indicative, 1 thread,
256000 floats: 0.104 -> 0.078 ms on 8-lane vectors, 0.054 ms on 16-lane ones). The rational
forms are bound by their one division; ``log`` by its degree-9 polynomial and four special
cases (~42 instructions).

Measured error against float64 references over a dense float32 sweep
(``tests/test_fast_math.py``, which asserts these bounds); "rel" is relative to the exact
value, "abs" is absolute:

============  ==========================================================================
``exp``       rel <= 2e-7 (measured: 9.6e-8) where the exact result is a normal float;
              below, the result is 0 (abs error < 1.2e-38, the smallest normal float)
``sigmoid``   rel <= 2e-7; 0 where the exact result is below the smallest normal float
``tanh``      abs and rel <= 5e-7
``erf``       abs and rel <= 5e-7
``log``       rel <= 2e-7 (log(1) = 0 exactly)
============  ==========================================================================

Every bound is far inside the runner's check (rtol = atol = 1e-4), which still compares a
rewritten kernel against the *unmodified* function's output. Float64 and float16 calls are
left exact: these polynomials are only accurate for float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import tvm
import tvm_ffi
from tvm import s_tir, tirx

F32 = "float32"
I32 = "int32"

#: The calls this module rewrites, by their TVM op name.
FAST_OPS = ("tirx.exp", "tirx.erf", "tirx.tanh", "tirx.sigmoid", "tirx.log")

#: The documented worst error of each fast form (the table above; relative where the exact
#: value is a normal float, else absolute), asserted by the tests' sweep.
MAX_ERROR = {"exp": 2e-7, "sigmoid": 2e-7, "tanh": 5e-7, "erf": 5e-7, "log": 2e-7}

#: A fast form is chosen statically only when its error is this far inside the runner's
#: check (rtol = atol = 1e-4): a hundredfold margin leaves room for the error to grow
#: through the arithmetic around the call (a softmax's division, a GELU's product).
ERROR_BUDGET = 1e-6

_FLT_MIN = 1.17549435e-38  # smallest normal float32
_EXP_HI = 88.7228317  # log(FLT_MAX): above it expf overflows to inf
_EXP_LO = -87.3365479  # log(FLT_MIN): below it expf is denormal
_LOG2E = 1.44269504088896341
_ROUND_MAGIC = 12582912.0  # 1.5 * 2^23: adding it rounds a float below 2^22 to an integer
# ln 2 split in two (Cody-Waite) so that n * ln2 is exact in the high part.
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
# Cephes expf: exp(r) - 1 - r ~ r^2 * P(r) on [-ln2/2, ln2/2].
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2)
_EXP_P += (1.6666665459e-1, 5.0000001201e-1)
# Eigen's float tanh: x * P(x^2) / Q(x^2) on [-9, 9]; tanh(9) rounds to 1 in float32.
_TANH_CLAMP = 9.0
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11)
_TANH_P += (5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04)
_TANH_P += (4.89352455891786e-03,)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03)
_TANH_Q += (4.89352518554385e-03,)
# Eigen's float erf: x * P(x^2) / Q(x^2) on [-4, 4]; erf(4) rounds to 1 in float32.
_ERF_CLAMP = 4.0
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06)
_ERF_P += (-5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03)
_ERF_P += (-1.60960333262415e-02,)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03)
_ERF_Q += (-7.37332916720468e-03, -1.42647390514189e-02)
# Cephes logf: log(1 + m) - m + m^2/2 ~ m^3 * P(m) for m in [sqrt(1/2) - 1, sqrt(2) - 1].
_SQRT_HALF = 0.707106781186547524
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1)
_LOG_P += (1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1)
_LOG_P += (3.3333331174e-1,)
_DENORMAL_SCALE_BITS = 23  # a denormal times 2^23 is normal


def _f(value: float) -> tirx.PrimExpr:
    return tirx.const(value, F32)


def _i(value: int) -> tirx.PrimExpr:
    return tirx.const(value, I32)


def _horner(x: tirx.PrimExpr, coefficients: Iterable[float]) -> tirx.PrimExpr:
    """c0 * x^(n-1) + ... + c(n-1), highest power first."""
    terms = iter(coefficients)
    acc = _f(next(terms))
    for c in terms:
        acc = acc * x + _f(c)
    return acc


def _clamp(x: tirx.PrimExpr, low: float, high: float) -> tirx.PrimExpr:
    return tirx.Max(tirx.Min(x, _f(high)), _f(low))


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2: 25 instructions per
    vector, load and store included (AVX-512 at 8 lanes), against 32 for the Cephes form
    with ``floor``, a conversion and two halves of 2^n. The polynomial in r is Horner's
    all the way (``1 + r + r^2 P(r)`` as ``(P r + 1) r + 1``: one FMA fewer, within the
    bound). Sub-expressions are shared Python objects, not Let bindings: a Let variable would be
    defined twice once the block is inlined into two consumers (ill-formed TIR), and TVM's
    and LLVM's CSE merge the repeated parts anyway."""
    xc = _clamp(x, _EXP_LO, _EXP_HI)
    # Rounding by adding 1.5 * 2^23: the sum's low mantissa bits are n itself (two's
    # complement), so n needs no float-to-int conversion; n as a float is the sum minus it.
    shifted = xc * _f(_LOG2E) + _f(_ROUND_MAGIC)
    # The round trip through int32 bits keeps TVM's simplifier from folding (a + c) - c into
    # a, which would drop the rounding (LLVM keeps both: no fast-math flags).
    n = tirx.reinterpret(F32, tirx.reinterpret(I32, shifted)) - _f(_ROUND_MAGIC)
    r = xc - n * _f(_LN2_HI) - n * _f(_LN2_LO)
    y = _horner(r, (*_EXP_P, 1.0, 1.0))
    # y * 2^n by adding n to y's exponent field. y is in [sqrt(1/2), sqrt(2)], so the sum
    # stays a normal exponent for every n the clamp allows (n = 128 only with y < 1 and
    # n = -126 only with y >= 1, except within 3e-6 of the clamp, where the exact result is
    # below the smallest normal float and the bits read as a denormal of the right size);
    # 2^n alone has no float32 form at n = 128, which cost the former form a second factor.
    exponent = tirx.shift_left(tirx.reinterpret(I32, shifted), _i(23))
    core = tirx.reinterpret(F32, tirx.reinterpret(I32, y) + exponent)
    core = tirx.Select(x > _f(_EXP_HI), _f(float("inf")), core)
    core = tirx.Select(x < _f(_EXP_LO), _f(0.0), core)
    return tirx.Select(tirx.isnan(x), x, core)


def fast_sigmoid(x: tirx.PrimExpr) -> tirx.PrimExpr:
    # exp(-x) -> inf for x -> -inf gives 0, and -> 0 for x -> inf gives 1.
    return _f(1.0) / (_f(1.0) + fast_exp(-x))


def _odd_rational(
    x: tirx.PrimExpr, clamp: float, p: tuple[float, ...], q: tuple[float, ...]
) -> tirx.PrimExpr:
    xc = _clamp(x, -clamp, clamp)
    x2 = xc * xc
    # x * (P / Q), not (x * P) / Q: for tiny x the product would go denormal.
    return tirx.Select(tirx.isnan(x), x, xc * (_horner(x2, p) / _horner(x2, q)))


def fast_tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _odd_rational(x, _TANH_CLAMP, _TANH_P, _TANH_Q)


def fast_erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _odd_rational(x, _ERF_CLAMP, _ERF_P, _ERF_Q)


def fast_log(x: tirx.PrimExpr) -> tirx.PrimExpr:
    denormal = x < _f(_FLT_MIN)
    bits = tirx.reinterpret(I32, tirx.Select(denormal, x * _f(float(2**_DENORMAL_SCALE_BITS)), x))
    # x = m * 2^e with m in [0.5, 1): the exponent field, and the mantissa bits given the
    # exponent of 0.5.
    exponent = tirx.bitwise_and(tirx.shift_right(bits, _i(23)), _i(0xFF)) - _i(126)
    exponent = exponent - tirx.Select(denormal, _i(_DENORMAL_SCALE_BITS), _i(0))
    m = tirx.reinterpret(
        F32, tirx.bitwise_or(tirx.bitwise_and(bits, _i(0x007FFFFF)), _i(0x3F000000))
    )
    # Keep r = m - 1 in [sqrt(1/2) - 1, sqrt(2) - 1], where the polynomial holds.
    low = m < _f(_SQRT_HALF)
    e = tirx.Cast(F32, exponent - tirx.Select(low, _i(1), _i(0)))
    r = tirx.Select(low, m + m, m) - _f(1.0)
    r2 = r * r
    # log(1 + r) + e * ln2, with ln2 split so that the small parts are added first.
    y = _horner(r, _LOG_P) * r * r2 + e * _f(_LN2_LO) - _f(0.5) * r2
    core = r + y + e * _f(_LN2_HI)
    core = tirx.Select(x == _f(float("inf")), x, core)
    core = tirx.Select(x == _f(0.0), _f(float("-inf")), core)
    core = tirx.Select(x < _f(0.0), _f(float("nan")), core)
    return tirx.Select(tirx.isnan(x), x, core)


_REWRITES: dict[str, Callable[[tirx.PrimExpr], tirx.PrimExpr]] = {
    "tirx.exp": fast_exp,
    "tirx.erf": fast_erf,
    "tirx.tanh": fast_tanh,
    "tirx.sigmoid": fast_sigmoid,
    "tirx.log": fast_log,
}


def is_rewritable(node: tvm.ir.expr.Call) -> bool:
    """Whether ``rewrite_blocks`` replaces this call (a float32 call of ``FAST_OPS``)."""
    op = getattr(node.op, "name", "")
    return op in FAST_OPS and len(node.args) == 1 and str(node.ty) == F32


def fast_form_fits(names: Iterable[str]) -> bool:
    """Whether the fast forms of these transcendentals (short names) are all within
    ``ERROR_BUDGET``."""
    return all(MAX_ERROR[name] <= ERROR_BUDGET for name in names)


def _rewrite_call(node: tvm.ir.expr.Call) -> tvm.ir.expr.Call | tirx.PrimExpr:
    return _REWRITES[node.op.name](node.args[0]) if is_rewritable(node) else node


def rewrite_blocks(func: tirx.PrimFunc, blocks: Iterable[str]) -> tirx.PrimFunc:
    """``func`` with every float32 exp/erf/tanh/sigmoid/log in the bodies of the named
    blocks replaced by its fast form; ``func`` itself when there is nothing to rewrite.
    Deterministic: the same (func, blocks) gives a structurally equal result."""
    names = set(blocks)
    if not names:
        return func

    def on_block(block: s_tir.stmt.SBlock, mutator: object) -> object:
        if block.name_hint in names:
            return tvm_ffi.structural_map(block, ((tvm.ir.expr.Call, _rewrite_call),))
        return mutator.default_mutate(block)

    return tvm_ffi.structural_mutate(func, ((s_tir.stmt.SBlock, on_block),))
