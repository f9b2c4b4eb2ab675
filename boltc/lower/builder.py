"""Small helpers over `llvmlite.ir` so kernels read like loops, not like basic blocks.

Conventions every kernel follows (DESIGN.md section 4):
- arguments are raw pointers (opaque `ptr`) and int64 scalars only; float hyper-parameters travel in a
  small float32 array; the first two arguments of a batch kernel are the range [b0, b1);
- shapes known at compile time are baked in as constants so LLVM sees fixed trip counts;
- float reductions carry `reassoc contract` (never `fast`: NaN/Inf checks stay alive);
- no kernel allocates heap memory; scratch comes from the caller (one buffer per thread).
"""
from __future__ import annotations

from contextlib import contextmanager

import llvmlite.ir as ir

F32 = ir.FloatType()
F64 = ir.DoubleType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
I1 = ir.IntType(1)
PTR = ir.PointerType()
VOID = ir.VoidType()
RC = ("reassoc", "contract")          # the only fast-math flags we use
ARG_TYPES = {"ptr": PTR, "i64": I64}
VEC = 8                               # lanes of the explicit vector code (Kernel.dot): AVX2 and up


class KernelModule:
    """One LLVM module of kernels plus their signatures (written into the artifact manifest)."""

    def __init__(self, name: str = "boltc"):
        self.module = ir.Module(name=name)
        self.signatures: dict[str, list[list[str]]] = {}

    def kernel(self, name: str, params: list[tuple[str, str]]) -> "Kernel":
        if name in self.signatures:
            raise ValueError(f"kernel {name} defined twice")
        fnty = ir.FunctionType(VOID, [ARG_TYPES[t] for _, t in params])
        fn = ir.Function(self.module, fnty, name=name)
        for arg, (pname, t) in zip(fn.args, params):
            arg.name = pname
            if t == "ptr":
                # buffers handed to one kernel never overlap (the runtime guarantees it): lets LLVM
                # vectorize without runtime alias checks.
                arg.add_attribute("noalias")
        self.signatures[name] = [list(p) for p in params]
        return Kernel(self, fn)

    def ir_text(self) -> str:
        return str(self.module)

    def intrinsic(self, name: str, ret, args):
        try:
            return self.module.get_global(name)
        except KeyError:
            return ir.Function(self.module, ir.FunctionType(ret, args), name=name)


class Kernel:
    def __init__(self, km: KernelModule, fn: ir.Function):
        self.km = km
        self.fn = fn
        self.entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.arg = {a.name: a for a in fn.args}

    # --- values --------------------------------------------------------------------------------
    @staticmethod
    def i64(v: int):
        return ir.Constant(I64, int(v))

    @staticmethod
    def f32(v: float):
        return ir.Constant(F32, float(v))

    def opaque_i64(self, v: int, tag: str):
        """`v` loaded from a writable module global, so LLVM cannot specialise a loop on its value.
        Workaround: LLVM 22's LoopVectorize aborts the process (assertion 'VPlan cost model and legacy
        cost model disagreed') on the softmax/log-sum-exp loops for some constant trip counts (79 and
        159 were seen: bibtex's output layer); a runtime trip count keeps them vectorized without it."""
        gv = ir.GlobalVariable(self.km.module, I64, name=f"boltc.trip.{self.fn.name}.{tag}")
        gv.initializer = ir.Constant(I64, int(v))
        with self.b.goto_entry_block():
            return self.b.load(gv)

    def var(self, ty, init):
        """A mutable local (alloca in the entry block; mem2reg turns it into SSA)."""
        with self.b.goto_entry_block():
            slot = self.b.alloca(ty)
        self.b.store(init, slot)
        return slot

    def get(self, slot):
        return self.b.load(slot, typ=slot.allocated_type)

    def set(self, slot, v):
        self.b.store(v, slot)

    # --- memory --------------------------------------------------------------------------------
    def addr(self, ptr, idx, ty):
        return self.b.gep(ptr, [idx], inbounds=True, source_etype=ty)

    def ld(self, ptr, idx, ty=F32):
        return self.b.load(self.addr(ptr, idx, ty), typ=ty)

    def st(self, ptr, idx, v, ty=None):
        self.b.store(v, self.addr(ptr, idx, ty or v.type))

    def ld_i32_as_i64(self, ptr, idx):
        return self.b.sext(self.ld(ptr, idx, I32), I64)

    # --- arithmetic ------------------------------------------------------------------------------
    def add(self, a, b):
        return self.b.add(a, b, flags=["nsw"])

    def mul(self, a, b):
        return self.b.mul(a, b, flags=["nsw"])

    def fadd(self, a, b):
        return self.b.fadd(a, b, flags=RC)

    def fsub(self, a, b):
        return self.b.fsub(a, b, flags=RC)

    def fmul(self, a, b):
        return self.b.fmul(a, b, flags=RC)

    def fdiv(self, a, b):
        return self.b.fdiv(a, b)

    def call(self, name, ret, *args):
        fn = self.km.intrinsic(name, ret, [a.type for a in args])
        return self.b.call(fn, list(args))

    def exp(self, x):
        """exp(x) in float32 from plain arithmetic (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-6
        polynomial in r, times 2^n built in the exponent bits), within 2 ulp of the correctly rounded
        value. llvm.exp.f32 becomes one libm call per element, which no loop vectorizes: the softmax
        of a 159-wide output spent 0.3 ms a batch of 256 in those calls. Exact at 0 (1.0); 0 below
        -87.33 (no subnormals), +inf above 88.72, NaN stays NaN."""
        b = self.b
        xc = self.fmax(self.call("llvm.minnum.f32", F32, x, self.f32(88.72283)), self.f32(-87.33654))
        n = self.call("llvm.floor.f32", F32, b.fadd(b.fmul(xc, self.f32(1.44269504088896341)), self.f32(0.5)))
        r = b.fsub(b.fsub(xc, b.fmul(n, self.f32(0.693359375))), b.fmul(n, self.f32(-2.12194440e-4)))
        p = self.f32(1.9875691500e-4)
        for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = b.fadd(b.fmul(p, r), self.f32(c))
        p = b.fadd(b.fadd(b.fmul(p, b.fmul(r, r)), r), self.f32(1.0))
        # 2^n as 2^h 2^(n-h), h = n >> 1: each factor a normal float for every n in [-126, 128]
        ni = b.fptosi(n, I32)
        h = b.ashr(ni, ir.Constant(I32, 1))

        def pow2(e):
            return b.bitcast(b.shl(b.add(e, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
        y = b.fmul(b.fmul(p, pow2(h)), pow2(b.sub(ni, h)))
        y = b.select(b.fcmp_ordered("<", x, self.f32(-87.33654)), self.f32(0.0), y)
        y = b.select(b.fcmp_ordered(">", x, self.f32(88.72283)), self.f32(float("inf")), y)
        return b.select(b.fcmp_unordered("uno", x, x), x, y)

    def dot(self, pa, a_base, pb, b_base, n: int):
        """sum_j a[a_base + j] * b[b_base + j] for a compile-time n, in explicit 8-wide vectors: up to 4
        vector accumulators (chunk c into accumulator c % 4), summed pairwise, reduced across lanes,
        then the n % 8 tail added in order. A fixed order (the same bits wherever it is emitted).
        Why not a plain reduction loop: for short rows (n <= 128) LLVM unrolls it and vectorizes the
        loop around it instead, gathering one element per lane (a neuron's few positions, or the K
        active neurons): 2-4x slower at n = 32."""
        vt = ir.VectorType(F32, VEC)
        chunks = n // VEC
        accs = []
        for c in range(chunks):
            va = self.b.load(self.addr(pa, self.add(a_base, self.i64(c * VEC)), F32), typ=vt, align=4)
            vb = self.b.load(self.addr(pb, self.add(b_base, self.i64(c * VEC)), F32), typ=vt, align=4)
            prod = self.b.fmul(va, vb, flags=("contract",))
            if c < 4:
                accs.append(prod)
            else:
                accs[c % 4] = self.b.fadd(accs[c % 4], prod, flags=("contract",))
        total = self.f32(0.0)
        if accs:
            while len(accs) > 1:
                accs = [self.b.fadd(accs[i], accs[i + 1]) if i + 1 < len(accs) else accs[i]
                        for i in range(0, len(accs), 2)]
            total = self.b.call(self.km.intrinsic(f"llvm.vector.reduce.fadd.v{VEC}f32", F32, [F32, vt]),
                                [self.f32(-0.0), accs[0]], fastmath=("reassoc",))
        for j in range(chunks * VEC, n):
            prod = self.b.fmul(self.ld(pa, self.add(a_base, self.i64(j))), self.ld(pb, self.add(b_base, self.i64(j))))
            total = self.b.fadd(total, prod)
        return total

    def log(self, x):
        return self.call("llvm.log.f32", F32, x)

    def sqrt(self, x):
        return self.call("llvm.sqrt.f32", F32, x)

    def fmax(self, a, b):
        return self.call("llvm.maxnum.f32", F32, a, b)

    def select(self, c, a, b):
        return self.b.select(c, a, b)

    def fcmp(self, op, a, b):
        return self.b.fcmp_ordered(op, a, b)

    def icmp(self, op, a, b):
        return self.b.icmp_signed(op, a, b)

    # --- control flow ----------------------------------------------------------------------------
    @contextmanager
    def _head_body_end(self, name: str, cond_fn):
        """The one loop skeleton under `loop` and `while_`: blocks NAME.head (cond_fn() emits the test
        there), NAME.body (the caller's code, then back to head) and NAME.end (where the builder is left)."""
        b = self.b
        head = b.append_basic_block(f"{name}.head")
        body = b.append_basic_block(f"{name}.body")
        end = b.append_basic_block(f"{name}.end")
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(cond_fn(), body, end)
        b.position_at_end(body)
        yield
        b.branch(head)
        b.position_at_end(end)

    @contextmanager
    def loop(self, start, stop, name: str = "i"):
        """for (i = start; i < stop; ++i) — yields i (i64)."""
        b = self.b
        start = self.i64(start) if isinstance(start, int) else start
        stop = self.i64(stop) if isinstance(stop, int) else stop
        pre = b.block
        i = None

        def test():
            nonlocal i
            i = b.phi(I64, name=name)
            i.add_incoming(start, pre)
            return b.icmp_signed("<", i, stop)

        with self._head_body_end(name, test):
            yield i
            nxt = b.add(i, self.i64(1), flags=["nsw", "nuw"])
            i.add_incoming(nxt, b.block)       # the latch: wherever the body's code left the builder

    @contextmanager
    def while_(self, cond_fn, name: str = "w"):
        """while (cond_fn()) { body } — cond_fn emits the test in the loop header."""
        with self._head_body_end(name, cond_fn):
            yield

    @contextmanager
    def if_(self, cond):
        with self.b.if_then(cond):
            yield

    def if_else(self, cond):
        return self.b.if_else(cond)

    def ret(self):
        self.b.ret_void()


def symbol(layer, role: str) -> str:
    """A kernel's symbol: layer (a plan layer dict or its name) and role, as LAYER__ROLE."""
    name = layer["name"] if isinstance(layer, dict) else layer
    return f"{name}__{role}"
