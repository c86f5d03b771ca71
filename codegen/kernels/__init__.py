"""CPU kernels Paddle lacks, compiled on first use and cached.

`load()` returns the loaded `Kernels` or None when they cannot be built here
(no compiler, no AVX2, a build error); callers then take the plain path. The
build (about 20 s) happens once per source/compiler/CPU combination: the
shared library is kept under $CODEGEN_HOME/kernels (default
~/.cache/codegen/kernels) keyed by a hash of everything that went into it,
and later processes only load it (well under a second).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import threading
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_SOURCES = ("ops.cc", "gemm.h", "matvec.h", "simd.h", "amx.h", "amx_matvec.h")
_CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]
_LD_FLAGS = ["-fopenmp"]

_lock = threading.Lock()
_loaded: "Kernels | None" = None
_failed = False


def build_dir() -> Path:
    home = Path(os.environ.get("CODEGEN_HOME", Path.home() / ".cache" / "codegen"))
    return home / "kernels"


def _cpu_flags() -> str:
    # -march=native bakes in this CPU's instruction set: a copied cache dir on
    # another CPU must rebuild, not crash with an illegal instruction
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_key() -> str:
    import paddle
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((_HERE / name).read_bytes())
    for part in (paddle.__version__, " ".join(_CXX_FLAGS + _LD_FLAGS), _cpu_flags(), platform.machine()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


class Kernels:
    """The compiled operators as Python callables (eager mode, CPU tensors)."""

    def __init__(self, library: Path):
        from paddle import _C_ops
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # paddle's builder module warns about ccache on import
            from paddle.utils.cpp_extension import load_op_meta_info_and_register_op

        load_op_meta_info_and_register_op(str(library))
        self._run = _C_ops._run_custom_op
        self.library = library
        # the same handle the loader opened: its C entry points share the operators' state
        self._c = ctypes.CDLL(str(library))

    def prefill_kernels(self) -> dict:
        """The GEMM each weight format's prefill uses here, chosen at run time: 'int8-amx' /
        'bf16-amx' (Intel AMX tiles, where the CPU has them and the OS allows them), else
        'int8-vnni' / 'bf16' (AVX512-VNNI / -BF16), else 'fp32' (the blocked fp32 kernel)."""
        bits = self._c.codegen_prefill_kernels(-1)
        int8 = "int8-amx" if bits & 4 else "int8-vnni" if bits & 1 else "fp32"
        bf16 = "bf16-amx" if bits & 8 else "bf16" if bits & 2 else "fp32"
        return {"int8": int8, "bf16": bf16, "fp16": bf16, "fp32": "fp32"}

    def use_reduced_precision_prefill(self, enabled: bool, amx: bool = True, amx_int8: bool = True) -> None:
        """Turn the int8 and bf16 prefill GEMMs off (every format then takes the fp32 one) or back
        on where the CPU has them; with `amx` False, on without AMX (the AVX-512 kernels); with
        `amx_int8` False, without AMX for int8 only (the bf16 GEMMs, prompt attention's among them,
        keep their tiles). Process-wide; meant for comparisons."""
        self._c.codegen_prefill_kernels(0 if not enabled else 2 if not amx else 1 if amx_int8 else 3)

    def amx_matvec_min_rows(self) -> int:
        """The fewest activation rows (of up to 16: decoding, verifying drafts) for which int8
        weights meet them in AMX tiles; 0 where the CPU or OS lacks AMX, or it is turned off."""
        return self._c.codegen_amx_matvec(-1, 0)

    def use_amx_matvec(self, enabled: bool, min_rows: int | None = None) -> None:
        """Turn the AMX int8 matvec off (the vector kernel then takes every row count) or back on
        where usable, from `min_rows` rows (default: where it measured faster). Both give the
        same bits. Process-wide; meant for comparisons."""
        self._c.codegen_amx_matvec(1 if enabled else 0, min_rows or 0)

    def weight_only_linear(self, x, weight, scale=None, bias=None, reduced_precision: bool = False):
        """x [..., in] fp32 @ weight [out, in]^T (* scale per row) + bias -> [..., out] fp32.

        With `reduced_precision`, more than 16 rows of x take the GEMM a prompt takes in the
        decoder layer (x as u8 for int8 weights, as bf16 for bf16/fp16 ones, where the CPU can);
        otherwise x stays fp32: the weights alone are reduced."""
        return self._run("codegen_weight_only_linear", x, weight, scale, bias, reduced_precision)[0]

    def dequantize(self, weight, scale=None):
        """weight [out, in] of any stored format (* scale per row) as fp32 [out, in]."""
        return self._run("codegen_dequantize", weight, scale)[0]

    def pack_weight(self, weight_in_out, dtype):
        """A Linear weight [in, out] fp32 as `dtype` [out, in] and per-row scales [out]
        (int8: symmetric absmax / 127; ones otherwise)."""
        packed, scale = self._run("codegen_pack_weight", weight_in_out, dtype)
        return packed, scale

    def read_bandwidth(self, buffer):
        """Sum of a float32 buffer read by all threads (time it for the memory bandwidth)."""
        return self._run("codegen_read_bandwidth", buffer)[0]

    @staticmethod
    def block_weights(ln, qkv, out, fc_in, fc_out) -> tuple:
        """A CodeGen block's tensors in the order `decoder_layer` takes them: a LayerNorm and four
        `WeightOnlyLinear`s (qkv and out without bias). Build it once per block: decoding calls
        the operator for every block and token, and looking the tensors up each time shows."""
        return (ln.weight, ln.bias, qkv.weight, qkv.weight_scale, out.weight, out.weight_scale,
                fc_in.weight, fc_in.weight_scale, fc_in.bias, fc_out.weight, fc_out.weight_scale, fc_out.bias)

    def decoder_layer(self, x, block_weights: tuple, key_cache, value_cache, attention_mask, sin, cos, *,
                      past: int, num_heads: int, rotary_dim: int, mp_num: int, eps: float, residual: bool = True):
        """One CodeGen block for the new tokens x [b, s, embd] fp32; returns its output.

        `block_weights` comes from `block_weights`. The new tokens' keys/values are written into
        the float32 caches [b, heads, max_len, head_dim] at position `past`; `attention_mask` is
        None or int64 [b, past + s]; sin/cos are the rotary tables [positions, rotary_dim / 2].
        `num_heads` and `mp_num` count the heads and qkv shards the weights hold (a tensor-parallel
        rank's share); head_dim follows from the qkv weight. Without `residual` the output is the
        attention's and MLP's sum alone, not added to x.
        """
        return self._run("codegen_decoder_layer", x, *block_weights, key_cache, value_cache, attention_mask, sin,
                         cos, past, num_heads, rotary_dim, mp_num, eps, residual)[0]

    @staticmethod
    def codegeex_layer_weights(input_ln, qkv, dense, post_ln, fc1, fc2) -> tuple:
        """A CodeGeeX layer's tensors in the order `codegeex_layer` takes them: two LayerNorms and
        four `WeightOnlyLinear`s with biases, `qkv` packed [query | value | key]. Build it once per
        layer, as `block_weights`."""
        return (input_ln.weight, input_ln.bias, qkv.weight, qkv.weight_scale, qkv.bias, dense.weight,
                dense.weight_scale, dense.bias, post_ln.weight, post_ln.bias, fc1.weight, fc1.weight_scale,
                fc1.bias, fc2.weight, fc2.weight_scale, fc2.bias)

    def codegeex_layer(self, x, layer_weights: tuple, key_cache, value_cache, attention_mask, query=None, *,
                       past: int, num_heads: int, eps: float):
        """One CodeGeeX layer for the new tokens x [b, s, embd] fp32; returns its output.

        `layer_weights` comes from `codegeex_layer_weights`; `query` [b, s, embd] is the top-query
        layer's query input (the top-query embeddings of the new positions), None for the others.
        Caches and mask as in `decoder_layer`.
        """
        return self._run("codegeex_decoder_layer", x, query, *layer_weights, key_cache, value_cache, attention_mask,
                         past, num_heads, eps)[0]


@contextlib.contextmanager
def _file_lock(path: Path):
    # two processes starting at once (tests, a server) must not both write the library
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _library_path(root: Path, name: str) -> Path:
    return root / name / f"{name}.so"


def _build(root: Path, name: str) -> Path:
    logger.warning("compiling codegen's CPU kernels into %s (once per machine, ~20 s)", root / name)
    # paddle's builder warns about ccache and prints progress, here and in the setup.py process
    # it starts: noise for our users
    with contextlib.redirect_stdout(None), warnings.catch_warnings(), _environment(PYTHONWARNINGS="ignore"):
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension import load as build_extension
        build_extension(name=name, sources=[str(_HERE / "ops.cc")], extra_cxx_cflags=_CXX_FLAGS,
                        extra_ldflags=_LD_FLAGS, build_directory=str(root), verbose=False)
    return _library_path(root, name)


@contextlib.contextmanager
def _environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load() -> Kernels | None:
    """The kernels, building them on first use; None (after one warning) if that fails."""
    global _loaded, _failed
    with _lock:
        if _loaded is not None or _failed:
            return _loaded
        try:
            root = build_dir()
            name = f"codegen_kernels_{_build_key()}"
            library = _library_path(root, name)
            if not library.is_file():
                with _file_lock(root / f"{name}.lock"):
                    if not library.is_file():
                        library = _build(root, name)
            _loaded = Kernels(library)
        except Exception as e:  # any build or load failure means: run without them
            _failed = True
            warnings.warn(f"codegen's fast CPU kernels are unavailable ({type(e).__name__}: {e}); "
                          f"using the plain Paddle path, which is slower", RuntimeWarning, stacklevel=2)
        return _loaded
