"""Chapter 4: linear recurrences as scans, and Mamba's selective scan, in the reference and its twins."""

from __future__ import annotations

import functools
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from twins import twins

import refimpl.scan as ref
from refimpl.testing import assert_close

LENGTHS = [1, 2, 7] + [n + e for n in (8, 32, 1024, 4096, 8192) for e in (-1, 0, 1)] + [3 * 4096 + 17]
MILLION = 10**6


def coefficients(rng, shape, complex_=False, dtype=np.float64):
    """a with |a| in [0.9, 1) (a memory of tens of steps, as a trained SSM has) and b ~ N(0, 1)."""
    r = rng.uniform(0.9, 1.0, shape)
    if complex_:
        a = r * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        b = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        cd = np.complex64 if dtype == np.float32 else np.complex128
        return a.astype(cd), b.astype(cd)
    a = r * rng.choice([-1.0, 1.0], shape)
    return a.astype(dtype), rng.standard_normal(shape).astype(dtype)


def loop(a, b, h0):
    """The recurrence in plain Python scalars, independent of refimpl."""
    out = np.empty(np.broadcast_shapes(a.shape, b.shape), dtype=np.result_type(a, b, h0, np.float64))
    for idx in np.ndindex(out.shape[:-1]):
        h = complex(h0[idx]) if np.iscomplexobj(out) else float(h0[idx])
        for t in range(out.shape[-1]):
            h = a[idx + (t,)] * h + b[idx + (t,)]
            out[idx + (t,)] = h
    return out


def poison_pool(nbytes):
    """Fill the CuPy memory pool with NaN so that a kernel that skips an output element is caught."""
    import cupy as cp

    x = cp.full(nbytes // 4 + 1024, np.nan, dtype=cp.float32)
    del x


# ------------------------------------------------------------------------------------ the pair operator

def test_operator_associative_exactly():
    """(x o y) o z == x o (y o z), exactly, in rational arithmetic: the operator is function composition."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y, z = [tuple(Fraction(int(v), int(w)) for v, w in zip(rng.integers(-9, 9, 2), rng.integers(1, 9, 2)))
                   for _ in range(3)]
        assert ref.combine(ref.combine(x, y), z) == ref.combine(x, ref.combine(y, z))


def test_operator_not_commutative_and_identity(rng):
    x = (Fraction(1, 2), Fraction(3))
    y = (Fraction(2), Fraction(-1))
    assert ref.combine(x, y) != ref.combine(y, x)
    e = (1, 0)
    assert ref.combine(e, x) == x and ref.combine(x, e) == x


def test_swapped_operands_give_a_wrong_scan(rng, monkeypatch):
    """Blelloch's tree with the operands of o swapped no longer computes the recurrence."""
    a, b = coefficients(rng, (40,))
    h = ref.linear_scan(a, b)
    good = ref.blelloch_scan(a, b)
    assert_close(good, h, op="blelloch_scan", dtype="float64")
    combine = ref.combine
    monkeypatch.setattr(ref, "combine", lambda first, second: combine(second, first))
    bad = ref.blelloch_scan(a, b)
    assert np.linalg.norm(bad - h) > 0.1 * np.linalg.norm(h)


def test_identity_padding_not_zeros(rng):
    """Padding the tree with zeros leaves the prefixes right but the total wrong: a chunked scan that passes
    the total on as its carry is then wrong. The identity (1, 0) is right everywhere."""
    a, b = coefficients(rng, (5,))
    A_id, B_id, tot_id = ref.blelloch_tree(a, b, pad=(1.0, 0.0))
    A_0, B_0, tot_0 = ref.blelloch_tree(a, b, pad=(0.0, 0.0))
    np.testing.assert_array_equal(B_id, B_0)  # the exclusive prefixes do not see the padding
    assert_close(np.array(tot_id), np.array([np.prod(a), ref.linear_scan(a, b)[-1]]), op="blelloch_scan")
    assert tot_0[0] == 0.0 and abs(tot_0[1] - tot_id[1]) > 1e-3


# ------------------------------------------------------------------------------------ linear_scan

@pytest.mark.parametrize("L", [1, 2, 7, 8, 9, 33])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_reference_scans_match_python_loop(rng, L, complex_):
    a, b = coefficients(rng, (3, L), complex_)
    h0, _ = coefficients(rng, (3,), complex_)
    want = loop(a, b, h0)
    for fn in (ref.linear_scan, ref.blelloch_scan, ref.hillis_steele_scan):
        assert_close(fn(a, b, h0), want, op="linear_scan", dtype="float64")


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_blelloch_matches_sequential(rng, L, complex_):
    a, b = coefficients(rng, (2, L), complex_)
    h0, _ = coefficients(rng, (2,), complex_)
    assert_close(ref.blelloch_scan(a, b, h0), ref.linear_scan(a, b, h0), op="blelloch_scan", dtype="float64")


@pytest.mark.parametrize("impl", twins("scan", ("cpu", "gpu")))
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_linear_scan_twins(impl, rng, L, complex_):
    dtypes = (np.float32,) if impl.name == "gpu" else (np.float32, np.float64)
    for dtype in dtypes:
        a, b = coefficients(rng, (3, L), complex_, dtype)
        h0, _ = coefficients(rng, (3,), complex_, dtype)
        want = ref.linear_scan(a, b, h0)
        if impl.name == "gpu":
            poison_pool(a.nbytes)
        got = impl.to_host(impl.linear_scan(a, b, h0))
        assert got.dtype == (np.complex64 if complex_ and dtype == np.float32 else
                             np.complex128 if complex_ else dtype)
        assert_close(got, want, op="linear_scan")


@functools.lru_cache(maxsize=None)
def _million(complex_):
    rng = np.random.default_rng(10**6 + complex_)
    a, b = coefficients(rng, (MILLION,), complex_)
    h0 = np.array(0.5 + 0.25j if complex_ else 0.5)
    return a, b, h0, ref.linear_scan(a, b, h0)


@pytest.mark.parametrize("impl", twins("scan"))
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_linear_scan_million(impl, complex_):
    a, b, h0, want = _million(complex_)
    if impl.name == "reference":
        assert_close(ref.blelloch_scan(a, b, h0), want, op="blelloch_scan", dtype="float64")
        return
    for dtype in ((np.float32,) if impl.name == "gpu" else (np.float32, np.float64)):
        cd = (np.complex64 if dtype == np.float32 else np.complex128) if complex_ else dtype
        got = impl.to_host(impl.linear_scan(a.astype(cd), b.astype(cd), h0.astype(cd)))
        assert_close(got, want, op="linear_scan")


def test_linear_scan_broadcasting(rng):
    """a and b broadcast against each other; a scalar h0 broadcasts over the batch."""
    a = rng.uniform(0.5, 1, (1, 9))
    b = rng.standard_normal((4, 9))
    h = ref.linear_scan(a, b, 2.0)
    assert h.shape == (4, 9)
    assert_close(h, loop(np.broadcast_to(a, b.shape), b, np.full(4, 2.0)), op="linear_scan", dtype="float64")


def test_cpu_chunked_path_matches(rng, monkeypatch):
    """One sequence split over many chunks (phase 1 aggregates, phase 2 carries, phase 3 rescan)."""
    import refimpl.scan.cpu as cpu

    monkeypatch.setattr(cpu, "MIN_CHUNK", 16)
    a, b = coefficients(rng, (1, 5000))
    assert_close(cpu.linear_scan(a, b, np.array([3.0])), ref.linear_scan(a, b, np.array([3.0])), op="linear_scan")


# ------------------------------------------------------------------------------------ GPU: scale and determinism

@pytest.mark.gpu
def test_gpu_linear_scan_many_windows_and_sequences(rng):
    """Many look-back windows (32 tiles of 8192) and two super-windows (2^23 elements each) in one sequence,
    and many sequences, against float64."""
    import refimpl.scan.cpu as cpu
    import refimpl.scan.gpu as gpu

    for shape in ((1, 9 * 2**20 + 4 * 1000 + 8), (3, 2**20 + 5), (257, 4096 * 3)):
        a, b = coefficients(rng, shape)
        h0 = rng.standard_normal(shape[0])
        want = cpu.linear_scan(a, b, h0)  # float64 Numba twin, checked against the reference above
        poison_pool(a.nbytes)
        got = gpu.linear_scan(a.astype(np.float32), b.astype(np.float32), h0.astype(np.float32))
        assert_close(got, want, op="linear_scan", dtype="float32")


@pytest.mark.gpu
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_gpu_linear_scan_without_h0(rng, complex_):
    """No h0: the kernel gets a null pointer and starts from 0 (poisoned memory would show if it read one)."""
    import refimpl.scan.gpu as gpu

    dt = np.complex64 if complex_ else np.float32
    a, b = coefficients(rng, (5, 3 * 4096 + 7), complex_)
    want = ref.linear_scan(a, b, np.zeros(5))
    poison_pool(a.nbytes)
    assert_close(gpu.linear_scan(a.astype(dt), b.astype(dt)), want, op="linear_scan", dtype="float32")


@pytest.mark.gpu
def test_gpu_linear_scan_super_windows(rng, monkeypatch):
    """32-thread blocks, J = 4: windows of 32 tiles of 512, super-windows of 1024 tiles (2^19 elements), so
    that a few million elements cross several super-windows (the hand-over of states between them) cheaply."""
    import cupy as cp

    import refimpl.scan.cpu as cpu
    import refimpl.scan.gpu as gpu

    monkeypatch.setitem(gpu.LINEAR_CONFIG, "THREADS", 32)
    monkeypatch.setitem(gpu.LINEAR_CONFIG, "J", 4)
    for shape, cplx in (((2, 3 * 2**19 + 4 * 77), False), ((1, 2**20 + 3 * 2**18 + 2), True),
                        ((1, 2**20 + 3 * 2**18 + 1), True)):
        a, b = coefficients(rng, shape, cplx)
        h0 = coefficients(rng, shape[:1], cplx)[1]
        want = cpu.linear_scan(a, b, h0)
        dt = np.complex64 if cplx else np.float32
        got = gpu.linear_scan(a.astype(dt), b.astype(dt), h0.astype(dt))
        assert_close(got, want, op="linear_scan", dtype="float32")
        assert cp.array_equal(gpu.linear_scan(a.astype(dt), b.astype(dt), h0.astype(dt)), got)


@pytest.mark.gpu
@pytest.mark.parametrize("cplx", [False, True])
def test_gpu_linear_scan_nan_inputs_do_not_hang(rng, cplx):
    """The look-back marks an unwritten entry with the NaN bit pattern 0xFFFFFFFF. Inputs holding exactly that
    pattern (check_finite=False) must neither hang the kernel nor corrupt other sequences: NaN spreads from the
    first NaN of a sequence to its end, as in the float64 reference, and nowhere else."""
    import cupy as cp

    import refimpl.scan.gpu as gpu

    S, L = 3, 3 * 2**20 + 12
    a, b = coefficients(rng, (S, L), cplx)
    h0 = coefficients(rng, (S,), cplx)[1]
    dt = np.complex64 if cplx else np.float32
    a, b = a.astype(dt), b.astype(dt)
    bad = np.array([0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]
    fa, fb = a.view(np.float32), b.view(np.float32)  # the float32 words of a and b, (S, L) or (S, 2L)
    w, p = (2 if cplx else 1), 4096 * 300 - 1  # float32 words per element; the last element of a tile (any J)
    fa[0, w * p] = bad   # a of sequence 0 (the real part when complex): the pattern reaches a tile's aggregate
    fb[1, w * 12345] = bad  # b of sequence 1
    # sequence 2 has no NaN
    wide = np.complex128 if cplx else np.float64
    want = ref.linear_scan(a.astype(wide), b.astype(wide), h0, check_finite=False)
    got = gpu.linear_scan(a, b, h0.astype(dt), check_finite=False).get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert not np.isnan(got[2]).any()
    assert_close(got[2], want[2], op="linear_scan", dtype="float32")
    assert_close(got[0, :p], want[0, :p], op="linear_scan", dtype="float32")


@pytest.mark.gpu
def test_gpu_linear_scan_bitwise_deterministic(rng):
    import cupy as cp

    import refimpl.scan.gpu as gpu

    for shape, cplx in (((1, 2**24 + 4 * 333), False), ((64, 2**18), False), ((2, 2**21 + 3), True),
                        ((2, 2**21 + 2), True)):
        a = cp.asarray(coefficients(rng, shape, cplx, np.float32)[0])
        b = cp.asarray(coefficients(rng, shape, cplx, np.float32)[1])
        first = gpu.linear_scan(a, b)
        for _ in range(4):
            assert cp.array_equal(gpu.linear_scan(a, b), first)


@pytest.mark.gpu
def test_gpu_linear_scan_past_2_31_elements(rng):
    """2^31 + 2^20 float32 elements (26 GB for a, b, h): int32 offsets would wrap. Checked by sampling.

    a = 1 and b = 1 on every 256th element make h_t = t // 256 + 1, an integer below 2^24: exact in
    float32 whatever the order of the sums, so the samples are compared for equality. Then random a in
    [0.5, 0.9] (a memory of a few dozen steps), each sample against a float64 loop over its last 400 steps.
    """
    import cupy as cp

    import refimpl.scan.gpu as gpu

    n = 2**31 + 2**20
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 3 * 4 * n + 2**30:
        pytest.skip(f"needs {3 * 4 * n / 2**30:.0f} GiB of free device memory, {free / 2**30:.0f} GiB free")
    a = cp.ones(n, dtype=cp.float32)
    b = cp.zeros(n, dtype=cp.float32)
    b[::256] = 1
    idx = np.concatenate([np.arange(8), rng.integers(0, n, 200), np.arange(2**31 - 8, 2**31 + 8),
                          np.arange(n - 8, n)])
    h = gpu.linear_scan(a, b, check_finite=False)
    np.testing.assert_array_equal(h[cp.asarray(idx)].get(), (idx // 256 + 1).astype(np.float32))
    # the same buffers as two sequences of 2^30 + 2^19, the second one starting from h0 = 5
    h2 = gpu.linear_scan(a.reshape(2, -1), b.reshape(2, -1), cp.asarray([0.0, 5.0], dtype=cp.float32),
                         check_finite=False).reshape(-1)
    half = n // 2
    want = np.where(idx < half, idx // 256 + 1, 5 + (idx - half) // 256 + 1).astype(np.float32)
    np.testing.assert_array_equal(h2[cp.asarray(idx)].get(), want)
    del h, h2
    cp.random.seed(5)
    a[...] = cp.random.uniform(0.5, 0.9, n, dtype=cp.float32)
    b[...] = cp.random.standard_normal(n, dtype=cp.float32)
    h = gpu.linear_scan(a, b, check_finite=False)
    idx = idx[idx >= 400]
    got = h[cp.asarray(idx)].get()
    for i, t in enumerate(idx):
        x = 0.0
        for av, bv in zip(a[t - 400:t + 1].get().astype(np.float64), b[t - 400:t + 1].get().astype(np.float64)):
            x = av * x + bv
        assert abs(got[i] - x) <= 1e-5 * (1 + abs(x)), (t, got[i], x)


# ------------------------------------------------------------------------------------ selective scan

def mamba_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's selective_scan_ref in NumPy, materializing (b, d, L, N) as it does: an independent oracle."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = np.log1p(np.exp(delta))
    b, d, L = u.shape
    dA = np.exp(np.einsum("bdl,dn->bdln", delta, A))
    if B.ndim == 2:
        dBu = np.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.ndim == 3:
        dBu = np.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        dBu = np.einsum("bdl,bdnl,bdl->bdln", delta, np.repeat(B, d // B.shape[1], axis=1), u)
    if C.ndim == 4:
        C = np.repeat(C, d // C.shape[1], axis=1)
    x = np.zeros((b, d, A.shape[1]), dtype=dA.dtype)
    ys = []
    for i in range(L):
        x = dA[:, :, i] * x + dBu[:, :, i]
        y = (np.einsum("bdn,dn->bd", x, C) if C.ndim == 2 else
             np.einsum("bdn,bn->bd", x, C[:, :, i]) if C.ndim == 3 else np.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
        ys.append(2 * y.real if np.iscomplexobj(y) else y)
    y = np.stack(ys, axis=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * z / (1 + np.exp(-z))
    return out, x


VARIANTS = {
    "invariant": dict(B="dn", C="dn"),
    "variable": dict(B="bnl", C="bnl"),
    "grouped": dict(B="bgnl", C="bgnl"),
    "mixed": dict(B="bnl", C="dn"),
    "mixed_grouped": dict(B="dn", C="bgnl"),
    "D_z": dict(B="bnl", C="bnl", D=True, z=True),
    "bias_softplus": dict(B="bnl", C="bnl", bias=True, softplus=True),
    "all": dict(B="bgnl", C="bnl", D=True, z=True, bias=True, softplus=True),
    "complex": dict(B="bnl", C="bnl", complex=True, D=True),
    "complex_invariant": dict(B="dn", C="dn", complex=True, z=True),
    "complex_real_BC": dict(B="bgnl", C="dn", complex=True, real_bc=True, softplus=True),
}


def selective_inputs(rng, variant, b=2, d=8, L=37, N=5, G=2, dtype=np.float64):
    v = VARIANTS[variant]
    cplx = v.get("complex", False)
    A = -rng.uniform(0.5, 2.0, (d, N))
    if cplx:
        A = A + 1j * rng.uniform(0, np.pi, (d, N))

    def bc(kind):
        shape = {"dn": (d, N), "bnl": (b, N, L), "bgnl": (b, G, N, L)}[kind]
        M = rng.standard_normal(shape)
        if cplx and not v.get("real_bc"):
            M = M + 1j * rng.standard_normal(shape)
        return M

    args = dict(u=rng.standard_normal((b, d, L)), delta=rng.uniform(-3, 0.5, (b, d, L)), A=A, B=bc(v["B"]),
                C=bc(v["C"]))
    if not v.get("softplus"):
        args["delta"] = rng.uniform(0.01, 0.5, (b, d, L))
    kw = dict(D=rng.standard_normal(d) if v.get("D") else None,
              z=rng.standard_normal((b, d, L)) if v.get("z") else None,
              delta_bias=rng.uniform(-1, 1, d) if v.get("bias") else None, delta_softplus=v.get("softplus", False))
    for k in ("u", "delta"):
        args[k] = args[k].astype(dtype)
    return args, kw


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_selective_reference_matches_mamba_ref(rng, variant):
    args, kw = selective_inputs(rng, variant)
    out, last = ref.selective_scan(**args, **kw, return_last_state=True)
    want, want_last = mamba_ref(**args, **kw)
    assert_close(out, want, op="selective_scan", dtype="float64")
    assert_close(last, want_last, op="selective_scan", dtype="float64")
    assert out.dtype == np.float64 and last.dtype == (np.complex128 if VARIANTS[variant].get("complex") else np.float64)


@pytest.mark.parametrize("impl", twins("scan", ("cpu", "gpu")))
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kernel", ["quad", "states", "warp"])
def test_selective_twins(impl, rng, variant, kernel, monkeypatch):
    """Every variant against the reference; on the GPU all three kernels (4 lanes x 4 states, 8 lanes x 2 states,
    warp per channel; d = 8 in 2 groups gives the quad kernel blocks of 16 threads, less than a warp)."""
    if impl.name != "gpu" and kernel != "states":
        pytest.skip("one CPU twin")
    if impl.name == "gpu":
        monkeypatch.setattr(impl.module, "SELECTIVE_KERNEL", kernel)
    cplx = VARIANTS[variant].get("complex", False)
    dtypes = (np.float32,) if impl.name == "gpu" else (np.float32, np.float64)
    for dtype in dtypes:
        # L = 600 crosses the GPU's chunks of 256 steps; L = 37 is one partial chunk
        for L in (37, 600):
            args, kw = selective_inputs(rng, variant, L=L, dtype=dtype)
            want, want_last = ref.selective_scan(**args, **kw, return_last_state=True)
            if impl.name == "gpu" and cplx:
                with pytest.raises(TypeError, match="A"):
                    impl.selective_scan(**args, **kw)
                return
            if impl.name == "gpu":
                poison_pool(args["u"].nbytes * 4)
            out, last = impl.selective_scan(**args, **kw, return_last_state=True)
            out, last = impl.to_host(out), impl.to_host(last)
            assert out.dtype == dtype
            assert_close(out, want, op="selective_scan", dtype=np.dtype(dtype).name)
            assert_close(last, want_last, op="selective_scan", dtype=np.dtype(dtype).name)
            assert impl.to_host(impl.selective_scan(**args, **kw)).shape == out.shape


@pytest.mark.gpu
def test_gpu_selective_scan_unaligned_and_deterministic(rng):
    """L not a multiple of 4 (scalar loads), N not a power of two or above 16, dim not a multiple of 8;
    repeated runs bitwise equal."""
    import cupy as cp

    import refimpl.scan.gpu as gpu

    for shape in (dict(b=3, d=6, L=523, N=7, G=3), dict(b=2, d=64, L=1001, N=16, G=2),
                  dict(b=2, d=64, L=1000, N=16, G=1),
                  dict(b=1, d=32, L=300, N=40, G=1)):
        args, kw = selective_inputs(rng, "all", **shape, dtype=np.float32)
        want = ref.selective_scan(**args, **kw)
        first = gpu.selective_scan(**args, **kw)
        assert_close(first, want, op="selective_scan", dtype="float32")
        for _ in range(3):
            assert cp.array_equal(gpu.selective_scan(**args, **kw), first)


@pytest.mark.gpu
def test_gpu_selective_scan_cupy_inputs_cached_plan(rng):
    """CuPy float32 inputs go to the kernel as they are, through a launch worked out once per set of shapes:
    the same shapes again with 16-byte-misaligned views (the other kernel, same plan), and check_finite still
    raises on a cached plan."""
    import cupy as cp

    import refimpl.scan.gpu as gpu

    args, kw = selective_inputs(rng, "all", b=2, d=16, L=256, N=16, G=2, dtype=np.float32)
    want = ref.selective_scan(**args, **kw)
    dev = {k: cp.asarray(np.asarray(v, dtype=np.float32)) for k, v in args.items()}
    kwd = {k: (cp.asarray(np.asarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v)
           for k, v in kw.items()}
    for _ in range(2):
        poison_pool(args["u"].nbytes * 4)
        assert_close(gpu.selective_scan(**dev, **kwd), want, op="selective_scan", dtype="float32")

    def shifted(x):  # C-contiguous, 4 bytes past a 16-byte boundary
        flat = cp.empty(x.size + 1, dtype=cp.float32)
        flat[1:] = x.ravel()
        return flat[1:].reshape(x.shape)

    mis = {**dev, "u": shifted(dev["u"]), "delta": shifted(dev["delta"])}
    assert mis["u"].flags.c_contiguous and mis["u"].data.ptr % 16
    assert_close(gpu.selective_scan(**mis, **{**kwd, "z": shifted(kwd["z"])}), want, op="selective_scan",
                 dtype="float32")
    bad = dev["u"].copy()
    bad[0, 0, 0] = cp.nan
    with pytest.raises(ValueError, match="u: contains NaN or inf"):
        gpu.selective_scan(**{**dev, "u": bad}, **kwd)


@pytest.mark.gpu
@pytest.mark.parametrize("qws", [0, 1])
@pytest.mark.parametrize("variant", ["all", "D_z", "mixed", "mixed_grouped", "invariant"])
def test_gpu_selective_scan_full_blocks(rng, variant, qws, monkeypatch):
    """Blocks of 64 channels (256 threads: the quad kernel's B/C tile copies at fixed places, the benchmark's
    layout; qws: the warp-specialised kernel) with the last state: a sequence ending inside a block of 16 steps
    (L = 1000), one shorter than the copies in flight (L = 40), several B/C tiles (L = 4096 - 4), scalar loads
    in 2 groups (L = 1001); B or C alone variable."""
    import cupy as cp

    import refimpl.scan.gpu as gpu

    monkeypatch.setitem(gpu.QUAD_CONFIG, "QWS", qws)
    for L in (1000, 40, 4092, 1001):
        args, kw = selective_inputs(rng, variant, b=2, d=128, L=L, N=16, G=2 if L % 4 else 1, dtype=np.float32)
        want, want_last = ref.selective_scan(**args, **kw, return_last_state=True)
        dev = {k: cp.asarray(np.asarray(v, dtype=np.float32)) for k, v in args.items()}
        kwd = {k: (cp.asarray(np.asarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v)
               for k, v in kw.items()}
        poison_pool(args["u"].nbytes * 4)
        out, last = gpu.selective_scan(**dev, **kwd, return_last_state=True)
        assert_close(out, want, op="selective_scan", dtype="float32")
        assert_close(last, want_last, op="selective_scan", dtype="float32")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["all", "mixed_grouped"])
def test_gpu_selective_qws_is_bitwise_the_quad_kernel(rng, variant, monkeypatch):
    """Chapter 4: the warp-specialised kernel (QWS 1) gives bitwise the result of the single-trade one (QWS 0):
    the same states, sums and order, only the work split between warps differs. Both also match the reference."""
    import cupy as cp

    import refimpl.scan.gpu as gpu

    for L in (1000, 4092):
        args, kw = selective_inputs(rng, variant, b=2, d=128, L=L, N=16, G=1, dtype=np.float32)
        want = ref.selective_scan(**args, **kw)
        got = {}
        for qws in (0, 1):
            monkeypatch.setitem(gpu.QUAD_CONFIG, "QWS", qws)
            poison_pool(args["u"].nbytes * 4)
            gpu._SEL_PLANS.clear()
            got[qws] = gpu.selective_scan(**args, **kw)
            (plan,) = gpu._SEL_PLANS.values()  # the kernel that ran is the one asked for
            assert plan.names[L % 4 == 0].startswith(("selective_quad_", "selective_qws_")[qws]), plan.names
            assert_close(got[qws], want, op="selective_scan", dtype="float32", name=f"QWS {qws} L {L}")
        assert cp.array_equal(got[0], got[1]), f"L {L}: QWS 1 differs from QWS 0"


def test_selective_is_linear_scan_per_state(rng):
    """The selective scan is N linear scans per channel, a_t = exp(Δ_t A), b_t = Δ_t B_t u_t, read out by C."""
    args, kw = selective_inputs(rng, "variable", b=1, d=3, L=50, N=4)
    u, delta, A, B, C = (args[k] for k in ("u", "delta", "A", "B", "C"))
    out = ref.selective_scan(**args)
    y = np.zeros_like(u)
    for d in range(3):
        for n in range(4):
            h = ref.linear_scan(np.exp(delta[0, d] * A[d, n]), delta[0, d] * B[0, n] * u[0, d])
            y[0, d] += C[0, n] * h
    assert_close(out, y, op="selective_scan", dtype="float64")


def test_delta_is_the_focus_dial(rng):
    """Large Δ at step s resets the state: outputs after s do not depend on inputs before s. Δ -> 0 makes a
    step the identity: the state passes through unchanged and the input is ignored."""
    args, _ = selective_inputs(rng, "variable", b=1, d=2, L=30, N=3)
    args["delta"][..., 10] = 60.0  # exp(-0.5 * 60) < 1e-13
    out = ref.selective_scan(**args)
    args2 = dict(args, u=args["u"].copy())
    args2["u"][..., :10] = rng.standard_normal((1, 2, 10))
    out2 = ref.selective_scan(**args2)
    assert np.abs(out2[..., 10:] - out[..., 10:]).max() < 1e-10 * np.abs(out).max()
    assert np.abs(out2[..., :10] - out[..., :10]).max() > 1e-3
    # Δ = 0 at step s: h_s = h_{s-1}, so with C constant y_s = y_{s-1}
    args3, _ = selective_inputs(rng, "invariant", b=1, d=2, L=30, N=3)
    args3["delta"][..., 20] = 0.0
    args3["u"][..., 20] = 1e3
    _, h19 = ref.selective_scan(**{k: (v[..., :20] if k in ("u", "delta") else v) for k, v in args3.items()},
                                return_last_state=True)
    _, h20 = ref.selective_scan(**{k: (v[..., :21] if k in ("u", "delta") else v) for k, v in args3.items()},
                                return_last_state=True)
    np.testing.assert_array_equal(h20, h19)


def test_euler_B_differs_from_zoh_by_half_delta_A():
    """Mamba's B̄ = Δ·B (Euler) against ZOH's (e^{ΔA} - 1)/A·B: the relative gap is ΔA/2 + O(Δ²)."""
    import refimpl.discretize as disc

    A = np.array([-1.0, -4.0, -0.25])
    for dt in (1e-1, 1e-2, 1e-3):
        _, Bzoh = disc.zoh_diag(A, np.ones(3), dt)
        gap = (dt - Bzoh) / Bzoh
        np.testing.assert_allclose(gap, -dt * A / 2, rtol=2 * dt * np.abs(A).max())


def test_selective_reference_memory_is_O_bdn(rng):
    """The reference never materializes (b, d, L, N): its peak allocation is far below that array's size."""
    b, d, L, N = 1, 16, 1000, 64
    args, kw = selective_inputs(rng, "variable", b=b, d=d, L=L, N=N)
    tracemalloc.start()
    ref.selective_scan(**args, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < b * d * L * N * 8 / 8, peak


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("impl", twins("scan"))
def test_linear_scan_bad_input(impl, rng):
    a, b = coefficients(rng, (3, 5))
    keep = a.copy(), b.copy()
    with pytest.raises(ValueError, match=r"a \(3, 5\), b \(3, 6\)"):
        impl.linear_scan(a, rng.standard_normal((3, 6)))
    with pytest.raises(ValueError, match="h0"):
        impl.linear_scan(a, b, np.zeros(4))
    with pytest.raises(ValueError, match="h0"):
        impl.linear_scan(a, b, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="L >= 1"):
        impl.linear_scan(np.ones((3, 0)), np.ones((3, 0)))
    with pytest.raises(ValueError, match="a"):
        impl.linear_scan(np.float64(0.5), 1.0)
    bad = b.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="b: contains NaN"):
        impl.linear_scan(a, bad)
    np.testing.assert_array_equal(a, keep[0])
    np.testing.assert_array_equal(b, keep[1])


@pytest.mark.parametrize("impl", twins("scan"))
def test_selective_scan_bad_input(impl, rng):
    args, kw = selective_inputs(rng, "all", b=2, d=8, L=9, N=3, G=2)
    keep = {k: v.copy() for k, v in args.items()}

    def call(**over):
        return impl.selective_scan(**{**args, **kw, **over})

    with pytest.raises(ValueError, match="delta"):
        call(delta=args["delta"][..., :-1])
    with pytest.raises(ValueError, match="A"):
        call(A=args["A"][:-1])
    with pytest.raises(ValueError, match=r"B: expected shape \(batch, N, L\)"):
        call(B=rng.standard_normal((2, 4, 9)))
    with pytest.raises(ValueError, match="G = 3 must divide dim = 8"):
        call(B=rng.standard_normal((2, 3, 3, 9)))
    with pytest.raises(ValueError, match="C"):
        call(C=rng.standard_normal((8, 4)))
    with pytest.raises(ValueError, match="D"):
        call(D=np.ones(7))
    with pytest.raises(ValueError, match="z"):
        call(z=np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match="delta_bias"):
        call(delta_bias=np.ones((8, 1)))
    with pytest.raises(ValueError, match="u"):
        call(u=args["u"][0], delta=args["delta"][0])
    with pytest.raises(TypeError, match="B"):
        call(B=args["B"] + 1j)
    bad = args["u"].copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="u: contains NaN or inf"):
        call(u=bad)
    for k, v in args.items():
        np.testing.assert_array_equal(v, keep[k])
