"""Winograd F(m x m, 3 x 3): forward and grad_input of 2-D 3x3 stride-1 convolutions.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). Per output tile of m x m
positions and alpha x alpha = (m + 2)^2 input positions:

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

which turns the 9 * m^2 multiplications of a direct 3x3 tile into alpha^2 (2.25x fewer for m = 2,
4x for m = 4, 5.06x for m = 6). Across channels the (.) becomes one GEMM per (e1, e2) point of the
alpha x alpha grid, over (tiles x input channels) against (input channels x output channels):

    "wino_t"    T[e1, r2, p, c]  = sum_r1 B[r1, e1] d_p[r1, r2, c]          input transform, rows
    "wino_v"    V[e1, e2, p, c]  = sum_r2 T[e1, r2, p, c] B[r2, e2]          ... and columns
    "wino_g"    G1[e1, r2, c, k] = sum_r1 G[e1, r1] w[k, c, r1, r2]          filter transform
    "wino_u"    U[e1, e2, c, k]  = sum_r2 G1[e1, r2, c, k] G[e2, r2]
    "wino_gemm" M[e1, e2, p, k]  = sum_c V[e1, e2, p, g(k) Cg + c] U[e1, e2, c, k]
    "wino_o"    O[i1, e2, p, k]  = sum_e1 A[e1, i1] M[e1, e2, p, k]          output transform
    "conv"/"dx" y[n, k, h, w]    = sum_e2 O[h % m, e2, p(n, h // m, w // m), k] A[e2, w % m]

p runs over the tiles (n, th, tw) row-major; d_p is tile p of the padded input, which is padded with
zeros up to whole tiles (positions past the output only feed outputs that are cut off). The
transforms are sums of the matrices' non-zero entries written out per point (a Select over the
point's index, which folds to one sum when the schedule unrolls it), so no multiplication by 0 or 1
is left to the compiler. Matrices and interpolation points are TVM topi's
(tvm.topi.nn.winograd_util: the points of Barabasz et al., "Error analysis and improving the
accuracy of Winograd convolution for deep neural networks", 2018). float16 is transformed and
accumulated in float32; float64 in float64.

grad_input is the same computation on dy padded by 2 - pad_before in front (a crop where
negative) with the flipped, channel-swapped filter (convc.ops.grad_input.flip_swap): for stride 1
and dilation 1 the transposed convolution is a plain 3x3 convolution.
"""

from __future__ import annotations

import functools
import math

from tvm import te, tirx

from ..spec import WINOGRAD_TILES, ConvSpec, winograd_limits
from .common import acc_dtype, data_index, dilate_pad, epilogue, make_func, pad, split_data_index
from .forward import forward_params
from .grad_input import flip_swap, fold, ring_unpadded

TILES = WINOGRAD_TILES


def unsupported(spec: ConvSpec, op: str) -> str | None:
    """Why Winograd cannot compute `op` of `spec` (a sentence naming the parameter), or None."""
    if op not in ("forward", "grad_input"):
        return f"op={op!r}: Winograd computes forward and grad_input only"
    if op == "grad_input" and spec.prologue:
        return (f"derivative_from={spec.derivative_from!r}: Winograd grad_input has no "
                "activation-derivative prologue (algorithm='direct' has)")
    return winograd_limits(spec)


@functools.lru_cache(maxsize=None)
def matrices(m: int, r: int = 3):
    """(A, B, G) of F(m, r) as float64 arrays: A (alpha, m), B (alpha, alpha), G (alpha, r), so that
    y = A^T [(G g) * (B^T d)] in 1-D. TVM topi's construction and interpolation points."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    return _cook_toom_convolution(_interpolation_points(m + r - 1), m, r)


# Tiles (batch x tile rows x tile columns) a layer needs before F(4, 3) pays over F(2, 3), and F(2, 3)
# over the direct schedules: the filter transform is computed per call and costs as much as the
# GEMM saves on about this many tiles (see convc.dispatch.prefers_winograd). 40 until 2026-12-04;
# 32 since the channels-last grad_input filter transform was fixed (schedules/cpu/winograd.py,
# _flipped_filter), on layers with 32-39 tiles (AMD EPYC Zen 4, 2 threads, least of 3 x 5 calls,
# ms, NCHW / NHWC): 256ch 7x7 batch 8 (32 tiles of 4x4) F(2,3) -> F(4,3) forward 2.36 -> 1.44 /
# 2.35 -> 1.30, grad_input 2.32 -> 1.45 / 2.58 -> 1.87; 128ch 14x14 batch 2 (32) level (0.29-0.34
# either way); 512ch 4x4 batch 8 NHWC (32 tiles of 2x2) direct -> F(2,3) forward 2.87 -> 1.94,
# grad_input 4.51 -> 3.00 (ResNet-18's last two stages at 112x112, batch 8); batch-2 512ch and
# 256ch 7x7 NHWC (32 tiles of 2x2) direct -> F(2,3) level within the noise (forward 3.00 ->
# 2.46-2.86 and 0.52 -> 0.47-0.54 ms, grad_input 3.69 -> 3.52-5.01 and 0.65 -> 0.55). No layer of
# the zoo corpus (batch 1) nor of benchmarks/heldout.py has 32-39 tiles, so none changed.
MIN_TILES = 32


def tiles(spec: ConvSpec, op: str, m: int) -> int:
    """Output tiles of m x m positions: batch x ceil(H / m) x ceil(W / m) of op's output."""
    size = spec.out_size if op == "forward" else spec.in_size
    return spec.batch * math.prod(math.ceil(s / m) for s in size)


def transformed_input_bytes(spec: ConvSpec, op: str, m: int) -> int:
    """Bytes of "wino_v": alpha^2 x tiles x input channels of the correlation, 4 or 8 each."""
    channels = spec.in_channels if op == "forward" else spec.out_channels
    return (m + 2) ** 2 * tiles(spec, op, m) * channels * (8 if spec.dtype == "float64" else 4)


def choose_tile(spec: ConvSpec, op: str = "forward") -> int:
    """m: spec.winograd_m when given, else F(4, 3) where the layer has MIN_TILES tiles of 4 x 4,
    else F(2, 3). F(6, 3) only when asked for: less accurate, and slower than F(4, 3) on every
    layer measured (README "Winograd")."""
    if spec.winograd_m:
        return spec.winograd_m
    return 4 if tiles(spec, op, 4) >= MIN_TILES else 2


def _combination(terms, dtype):
    """sum_i coeff_i * value_i over the non-zero coefficients, without multiplying by +-1."""
    total = None
    for coeff, value in terms:
        if coeff == 0:
            continue
        if coeff == 1:
            term, sign = value, 1
        elif coeff == -1:
            term, sign = value, -1
        else:
            term, sign = value * tirx.const(float(coeff), dtype), 1
        if total is None:
            total = term if sign > 0 else tirx.const(0, dtype) - term
        else:
            total = total + term if sign > 0 else total - term
    return total if total is not None else tirx.const(0, dtype)


def _per_point(index, count, expression):
    """Select over `index` in [0, count) of expression(i) for Python ints i (folds when unrolled)."""
    result = expression(count - 1)
    for i in range(count - 2, -1, -1):
        result = tirx.Select(index == i, expression(i), result)
    return result


def filter_transform(weight_at, *, group_channels: int, out_channels: int, m: int, dtype: str):
    """U = G g G^T per (input channel of a group, output channel): "wino_g" and "wino_u", of
    shape (alpha, alpha, group_channels, out_channels) in dtype (the accumulator's).

    weight_at(o, c, r1, r2): the filter element of output channel o, group input channel c, taps
    (r1, r2)."""
    _, _, G = matrices(m)
    alpha = m + 2
    g1 = te.compute((alpha, 3, group_channels, out_channels), lambda e1, r2, c, k: _per_point(
        e1, alpha, lambda i: _combination(
            [(G[i, r1], weight_at(k, c, r1, r2).astype(dtype)) for r1 in range(3)], dtype)),
        name="wino_g")
    return te.compute((alpha, alpha, group_channels, out_channels), lambda e1, e2, c, k: _per_point(
        e2, alpha, lambda j: _combination([(G[j, r2], g1[e1, r2, c, k]) for r2 in range(3)],
                                          dtype)), name="wino_u")


def winograd_correlate(data, u, *, spec: ConvSpec, in_channels: int, out_channels: int,
                       out_size, m: int, name: str):
    """The stages of the module docstring for a 3x3 stride-1 correlation.

    data: activations (spec's layout) already padded, of spatial size >= tiles * m + 2.
    u: the transformed filter (filter_transform, or a prepacked parameter).
    Returns the output stage `name` of shape (N, out_channels, *out_size) in the layout.
    """
    cl, groups = spec.channels_last, spec.groups
    acc = acc_dtype(spec.dtype)
    A, B, _ = matrices(m)
    alpha = m + 2
    cg, kg = in_channels // groups, out_channels // groups
    batch = int(data.shape[0])
    tiles_h, tiles_w = (math.ceil(o / m) for o in out_size)
    tiles = batch * tiles_h * tiles_w

    def tile_origin(p):
        n, rest = p // (tiles_h * tiles_w), p % (tiles_h * tiles_w)
        return n, (rest // tiles_w) * m, (rest % tiles_w) * m

    def d(p, c, r1, r2):
        n, h, w = tile_origin(p)
        return data[data_index(cl, n, c, (h + r1, w + r2))].astype(acc)

    t = te.compute((alpha, alpha, tiles, in_channels), lambda e1, r2, p, c: _per_point(
        e1, alpha, lambda i: _combination([(B[r1, i], d(p, c, r1, r2)) for r1 in range(alpha)],
                                          acc)), name="wino_t")
    v = te.compute((alpha, alpha, tiles, in_channels), lambda e1, e2, p, c: _per_point(
        e2, alpha, lambda j: _combination([(B[r2, j], t[e1, r2, p, c]) for r2 in range(alpha)],
                                          acc)), name="wino_v")
    rc = te.reduce_axis((0, cg), name="rc")

    def gemm(e1, e2, p, k):
        c = rc if groups == 1 else (k // kg) * cg + rc
        return te.sum(v[e1, e2, p, c] * u[e1, e2, rc, k], axis=[rc])

    product = te.compute((alpha, alpha, tiles, out_channels), gemm, name="wino_gemm")
    o = te.compute((m, alpha, tiles, out_channels), lambda i1, e2, p, k: _per_point(
        i1, m, lambda i: _combination([(A[e1, i], product[e1, e2, p, k]) for e1 in range(alpha)],
                                      acc)), name="wino_o")

    def output(*idx):
        n, k, (h, w) = split_data_index(cl, idx)
        p = (n * tiles_h + h // m) * tiles_w + w // m
        return _per_point(w % m, m, lambda j: _combination(
            [(A[e2, j], o[h % m, e2, p, k]) for e2 in range(alpha)], acc))

    return te.compute(data_index(cl, batch, out_channels, out_size), output, name=name)


def _whole_tiles(out_size, m: int):
    """Spatial size of the padded input that whole tiles read: tiles * m + 2 per axis."""
    return [math.ceil(o / m) * m + 2 for o in out_size]


def packed_shape(spec: ConvSpec, op: str, m: int) -> tuple:
    """Shape of the transformed filter of `op`: (alpha, alpha, input channels per group, output
    channels) of the correlation op computes (grad_input: C and K trade places)."""
    groups = spec.groups
    if op == "forward":
        return (m + 2, m + 2, spec.in_channels // groups, spec.out_channels)
    return (m + 2, m + 2, spec.out_channels // groups, spec.in_channels)


def _weight_reader(spec: ConvSpec, op: str, w):
    """weight_at(o, c, r1, r2) of the correlation `op` computes, reading the user's weight w."""
    cl = spec.channels_last
    if op == "forward":
        return lambda k, c, r1, r2: w[(r1, r2, c, k) if cl else (k, c, r1, r2)]
    flipped = flip_swap(w, spec)  # (C, K/g, 3, 3) or (3, 3, K/g, C)
    return lambda c, k, r1, r2: flipped[(r1, r2, k, c) if cl else (c, k, r1, r2)]


def _transformed(spec: ConvSpec, op: str, m: int, w):
    shape = packed_shape(spec, op, m)
    return filter_transform(_weight_reader(spec, op, w), group_channels=shape[2],
                            out_channels=shape[3], m=m, dtype=acc_dtype(spec.dtype))


def _filter(spec: ConvSpec, op: str, m: int, w, packed: bool):
    """-> (the parameter in w's place, U): w and its transform, or U itself as the parameter."""
    if packed:
        u = te.placeholder(packed_shape(spec, op, m), acc_dtype(spec.dtype), name="u")
        return u, u
    return w, _transformed(spec, op, m, w)


def forward(spec: ConvSpec, m: int, packed: bool = False):
    """y = conv(x, W) (+ epilogue) by Winograd F(m x m, 3 x 3); parameters as ops.forward's
    (packed: the transformed filter u of packed_shape in w's place, "forward_packed")."""
    x, w, b, scale, shift, residual = forward_params(spec)
    cl = spec.channels_last
    size = _whole_tiles(spec.out_size, m)
    padded = [i + pb + pa for i, pb, pa in zip(spec.in_size, spec.pad_before, spec.pad_after)]
    if spec.padding_mode == "zeros":
        extra = [s - p for s, p in zip(size, padded)]
        xp = pad(x, cl, spec.pad_before, [a + e for a, e in zip(spec.pad_after, extra)], "zeros",
                 name="pad")
    else:  # the ring as the mode says, then zeros up to whole tiles
        ring = pad(x, cl, spec.pad_before, spec.pad_after, spec.padding_mode, name="pad")
        xp = dilate_pad(ring, cl, size, (1, 1), (0, 0), name="wino_pad")
    if xp is x:  # no padding at all and whole tiles: keep a named stage the schedules expect
        xp = te.compute(x.shape, lambda *i: x[i], name="pad")
    param, u = _filter(spec, "forward", m, w, packed)
    conv = winograd_correlate(xp, u, spec=spec, in_channels=spec.in_channels,
                              out_channels=spec.out_channels, out_size=spec.out_size, m=m,
                              name="conv")
    y = epilogue(conv, spec, b, scale, shift, residual)
    extra_params = [t for t in (b, scale, shift, residual) if t is not None]
    return make_func([x, param, *extra_params, y], spec,
                     "forward_packed" if packed else "forward")


def grad_input(spec: ConvSpec, m: int, packed: bool = False):
    """dx = W^T dy by Winograd: a 3x3 stride-1 correlation of dy, padded by 2 - pad_before (cropped
    where negative) up to whole tiles, with the flipped, channel-swapped filter (packed: its
    transform u in w's place, "grad_input_packed").

    With a ring padding (a padding mode other than zeros) "dx" is the gradient of the padded
    input (the transposed convolution of ring_unpadded, whole tiles over the padded domain) and
    "fold" adds the ring back onto the input, as the direct declaration does
    (convc.ops.grad_input.fold)."""
    cl = spec.channels_last
    inner = ring_unpadded(spec)
    dy = te.placeholder(spec.output_shape, spec.dtype, name="dy")
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    before = [2 - pb for pb in inner.pad_before]
    dy_padded = dilate_pad(dy, cl, _whole_tiles(inner.in_size, m), (1, 1), before,
                           name="dy_dilated")
    if dy_padded is dy:
        dy_padded = te.compute(dy.shape, lambda *i: dy[i], name="dy_dilated")
    param, u = _filter(spec, "grad_input", m, w, packed)
    dx = winograd_correlate(dy_padded, u, spec=inner, in_channels=spec.out_channels,
                            out_channels=spec.in_channels, out_size=inner.in_size, m=m, name="dx")
    out = fold(dx, spec) if spec.ring_padded else epilogue(dx, spec)
    return make_func([dy, param, out], spec, "grad_input_packed" if packed else "grad_input")


def prepack(spec: ConvSpec, op: str, m: int):
    """"<op>_prepack": w -> u, the transformed filter the "<op>_packed" function takes."""
    w = te.placeholder(spec.weight_shape, spec.dtype, name="w")
    return make_func([w, _transformed(spec, op, m, w)], spec, f"{op}_prepack")


# Normwise relative error ||y - y_ref|| / ||y_ref|| against a float64 direct reference that float32
# Winograd stays under, per m, for data uniform in [-1, 1) and up to 512 channels. Measured on
# Zen 5 (forward and grad_input alike, NHWC, 3x3 pad 1): 64ch 56x56 / 128ch 28x28 / 256ch 14x14:
# F(2,3) 2.6e-7 / 3.6e-7 / 5.0e-7, F(4,3) 1.1e-6 / 1.5e-6 / 2.0e-6, F(6,3) 3.3e-6 / 4.4e-6 /
# 6.0e-6; convc's direct float32 schedules 4.3e-7 / 6.0e-7 / 8.3e-7 on the same data. float64:
# 2.1e-15 (F(4,3), direct 8.4e-16); float16 (transforms and GEMM in float32): 2.1e-4, the same as
# direct, the final rounding to float16.
ERROR_BOUND = {2: 2e-6, 4: 5e-6, 6: 2e-5}


__all__ = ["ERROR_BOUND", "TILES", "choose_tile", "forward", "grad_input", "matrices", "unsupported",
           "winograd_correlate"]
