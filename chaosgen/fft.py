"""FFT convolution (`conv ... algorithm=fft`): the plan of a conv layer computed by FFTW, and the
cost model that `algorithm=auto` compares with the direct kernels' (docs/kernels.md, "FFT
convolution").

The scheme is ZNN's (Zlateski, Lee, Seung 2015): per pass, every map is transformed once and
reused across the layer; products of spectra are summed over maps in the frequency domain; one
inverse transform per map out. With transforms of size N >= the (padded) input per dimension:

- forward:  Y[m] = IFFT(sum_c FFT(x[c]) . conj(FFT(w[m][c]))) / N   (a cross-correlation, as the
  direct kernels compute: conjugating the kernel's spectrum flips it; no index wraps round,
  because every output position i + kernel tap k < input size <= N);
- backward data: dx[c] = IFFT(sum_m FFT(dz[m]) . FFT(w[m][c])) / N  (the full convolution: the
  indices that wrap round, p - k < 0, land at N - k >= the output size, where dz is zero);
- weight gradient: g[m][c] = IFFT(FFT(x[c]) . conj(FFT(dz[m]))) / N, its first KH x KW values.

Stride > 1: the full stride-1 output is computed and every STRIDE-th value kept (forward); the
deltas are spread to the stride-1 positions, zero between (backward). Pad: the conv runs on the
zero-bordered copy of the input (conv_pad.j2), like the direct kernels.
"""

from __future__ import annotations

import math

from . import ir

# Cost model constants, in the units of the direct kernels' estimates (codegen's cycles: the
# ratio is what auto compares). Fitted, with codegen.VOLUME_CYCLES_PER_VECTOR (least squares on
# log(fft / direct)), to 26 layers of bench/fft.py, 8 planes and 18 volumes, on the development
# machine (Zen 4, FFTW 3.3.10, gcc 12): within 2x of every measured ratio (docs/kernels.md).
FFT_CYCLES = 0.20  # per real point and log2(points) of one r2c or c2r transform (FFTW, float)
# per complex multiply-add of two interleaved spectra into a third, with 16-float vectors (the
# loop is compiled for the target: narrower vectors take proportionally longer; FFTW's own
# transforms pick their SIMD code at run time, whatever the target)
PRODUCT_CYCLES = 3.3
PRODUCT_WIDTH = 16
COPY_CYCLES = 0.5  # per real value copied into or out of a zero-padded plane


def smooth_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= n: the sizes FFTW transforms fastest (its codelets)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def spatial(shape: ir.Shape) -> tuple[int, ...]:
    """The spatial sizes of a shape, outermost first: (depth,) rows, columns."""
    return shape.dims


def kernel_dims(lay: ir.Conv) -> tuple[int, ...]:
    """The kernel's sizes, outermost first."""
    return lay.kernel


def _row_offset(lead: tuple[int, ...], strides: tuple[int, ...], scale: int, base: int = 0) -> str:
    """A C++ expression of `r`: where row r of a map with leading dimensions `lead` (rows in
    row-major order, the last dimension contiguous) starts in a plane of element `strides`,
    its index in every dimension multiplied by `scale` (the conv's stride), plus `base`."""
    terms, inner = [], math.prod(lead)
    for k, d in enumerate(lead):
        inner //= d
        idx = (
            "r"
            if k == 0 and inner == 1
            else f"r / {inner}"
            if k == 0
            else (f"r % {d}" if inner == 1 else f"r / {inner} % {d}")
        )
        step = strides[k] * scale
        terms.append(f"({idx}) * {step}" if " " in idx else f"{idx} * {step}")
    if base:
        terms.append(str(base))
    return " + ".join(terms) if terms else "0"


def transform_size(lay: ir.Conv) -> tuple[int, ...]:
    """Per dimension, the smooth size (smooth_size) >= the padded input's."""
    return tuple(
        smooth_size(d + 2 * p) for d, p in zip(spatial(lay.in_shape), lay.pad, strict=True)
    )


def scratch(lay: ir.Conv) -> tuple[dict[str, int], int]:
    """The FFT scratch of one worker, in floats from FFT_FROM_D: RE real planes (staging), XF
    the input's spectra (forward -> weight gradient), WF the kernels' (forward -> backward data:
    out maps x in maps of them), AF sums of products, DF the deltas' (backward data -> weight
    gradient). Returns each one's offset and the total."""
    n = transform_size(lay)
    rp = ir.align(math.prod(n))
    sp = ir.align(2 * math.prod(n[:-1]) * (n[-1] // 2 + 1))
    cin, cout = lay.in_shape.maps, lay.out_shape.maps
    layout, off = {}, 0
    for name, floats in (("re", max(cin, cout) * rp), ("xf", cin * sp), ("wf", cout * cin * sp),
                         ("af", max(cin, cout) * sp), ("df", cout * sp)):
        layout[f"{name}_off"] = off
        off += ir.align(floats)
    return layout, off


def plan(lay: ir.Conv, needs_dx: bool) -> dict:
    """Every number conv_fft.j2 prints for `lay`: the transform size, the scratch layout (floats
    after the layer's deltas) and the copy expressions. A padded input goes into the transform
    planes at (pad_h, pad_w) from the corner, zeros around it: no padded copy is needed."""
    i, o, s = lay.in_shape, lay.out_shape, lay.stride
    ins, outs, ks = spatial(i), spatial(o), kernel_dims(lay)
    n = transform_size(lay)
    nr = math.prod(n)  # real values of a transform
    nc = math.prod(n[:-1]) * (n[-1] // 2 + 1)  # complex values of its spectrum (r2c)
    rp, sp = ir.align(nr), ir.align(2 * nc)  # plane and spectrum pitches in floats (64-byte)
    strides = tuple(math.prod(n[k + 1 :]) for k in range(len(n)))
    corner = sum(p * st for p, st in zip(lay.pad, strides, strict=True))
    layout, off = scratch(lay)
    d_data = ir.align(o.size)
    return dict(
        algorithm="fft",
        template="conv_fft.j2",
        fft_rank=len(n),
        fft_n=n,
        fft_nr=nr,
        fft_nc=nc,
        fft_rp=rp,
        fft_sp=sp,
        fft_scale=f"{1.0 / nr:#.9g}f",
        **layout,
        fft_from_d=d_data,
        d_floats=d_data + off,
        xc_floats=0,
        reads_past_x=0,
        # rows (all dimensions but the last) and their length, of: the input, the output, the
        # kernel; where each row goes in (or comes from) a transform plane
        x_rows=math.prod(ins[:-1]),
        x_cols=ins[-1],
        x_plane_row=_row_offset(ins[:-1], strides, 1, corner),
        y_rows=math.prod(outs[:-1]),
        y_cols=outs[-1],
        y_plane_row=_row_offset(outs[:-1], strides, s),
        k_rows=math.prod(ks[:-1]),
        k_cols=ks[-1],
        k_plane_row=_row_offset(ks[:-1], strides, 1),
        # boxes of the pruned transforms (fft.hpp), all dimensions but the last
        x_box=[p + d for p, d in zip(lay.pad[:-1], ins[:-1], strict=True)],
        k_box=list(ks[:-1]),
        d_box=[(d - 1) * s + 1 for d in outs[:-1]],
        stride=s,
        taps=math.prod(ks),
        in_plane=math.prod(ins),
        out_plane=math.prod(outs),
    )


def pruned_fraction(n: tuple[int, ...], box: list[int]) -> float:
    """The share of a whole transform's work that fft.hpp's pruned plan does for a plane zero
    (or unwanted) outside `box` (all dimensions but the last): one pass per dimension, each over
    the lines the box needs, the passes counted as equal; 1 where the plan is not pruned (the
    box keeps more than half the lines)."""
    lines, kept = math.prod(n[:-1]), math.prod(box)
    if 2 * kept > lines:
        return 1.0
    passes = [kept / lines] + [math.prod(box[:d]) / math.prod(n[:d]) for d in range(len(n) - 1)]
    return sum(passes) / len(passes)


def cost(lay: ir.Conv, needs_dx: bool, vector_width: int) -> int:
    """Estimated cycles per image of the three passes by FFT: r2c of the input maps, the kernels
    and the deltas; c2r of the outputs, the input deltas (if needed) and the gradients; three
    (two) sets of cin x cout spectrum products; the copies into and out of padded planes."""
    n = transform_size(lay)
    cin, cout = lay.in_shape.maps, lay.out_shape.maps
    nr = math.prod(n)
    nc = math.prod(n[:-1]) * (n[-1] // 2 + 1)
    # the kernels' r2c and the gradients' c2r are pruned to the kernel's box
    kernel_share = pruned_fraction(n, list(kernel_dims(lay)[:-1]))
    transforms = cin + 2 * cin * cout * kernel_share + 2 * cout + (cin if needs_dx else 0)
    per_transform = FFT_CYCLES * nr * math.log2(max(nr, 2))
    products = (3 if needs_dx else 2) * cin * cout * nc
    per_product = PRODUCT_CYCLES * PRODUCT_WIDTH / vector_width
    return round(transforms * (per_transform + COPY_CYCLES * nr) + products * per_product)
