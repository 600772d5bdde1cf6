"""Properties every registered rule must have: its output does not depend on the order of its
inputs, it is differentiable (autograd), and overflow of the dtype does not change its nature.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import byzance as bz
from byzance.aggregators import REGISTRY, Bulyan, MultiBulyan, PreAggregator, create

#: every rule and pre-aggregator, once (aliases dropped)
NAMES = sorted({cls.name for cls in REGISTRY.values()})
RULE_NAMES = [n for n in NAMES if not issubclass(REGISTRY[n], PreAggregator)]
PRE_NAMES = [n for n in NAMES if issubclass(REGISTRY[n], PreAggregator)]


def min_n(rule) -> int:
    """The smallest n the rule accepts."""
    for n in range(1, 100):
        try:
            rule.check(n)
        except ValueError:
            continue
        return n
    raise AssertionError(f"{rule!r} accepts no n < 100")


def cloud(seed: int, n: int, d: int, outlier: int) -> torch.Tensor:
    """n continuous random vectors (no exact ties), row ``outlier`` far from the others."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[outlier] = 8.0 + 3.0 * torch.randn(d, generator=g, dtype=torch.float64)
    return x


def permutation(seed: int, n: int, keep_first: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    if keep_first:  # MoNNA: its reference (row 0) is a trusted worker, not any input
        return torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(n - 1, generator=g)])
    return torch.randperm(n, generator=g)


# --------------------------------------------------------------------------- permutations


@pytest.mark.parametrize("name", RULE_NAMES)
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.sampled_from([1, 2]),
    extra=st.integers(0, 5),
    d=st.sampled_from([1, 2, 3, 5]),
    data=st.data(),
)
def test_rule_output_does_not_depend_on_the_order_of_inputs(name, seed, f, extra, d, data):
    rule = create(name, f=f)
    n = min_n(rule) + extra
    outlier = data.draw(st.integers(0, n - 1), label="outlier row")
    x = cloud(seed, n, d, outlier)
    perm = permutation(seed, n, keep_first=name == "monna")
    out, out_perm = rule(x), rule(x[perm])
    torch.testing.assert_close(out_perm, out, rtol=1e-7, atol=1e-7 * float(x.abs().max()))


@pytest.mark.parametrize("name", ["nnm", "clipping", "arc"])
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), f=st.sampled_from([1, 2]), extra=st.integers(0, 3))
def test_pre_aggregators_are_permutation_equivariant(name, seed, f, extra):
    step = REGISTRY[name](**({} if name == "clipping" else {"f": f}))
    n = min_n(step) + extra
    x = cloud(seed, n, 3, outlier=seed % n)
    perm = permutation(seed, n)
    torch.testing.assert_close(step(x[perm]), step(x)[perm], rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), s=st.integers(1, 4))
def test_bucketing_with_a_fixed_seed_on_permuted_inputs(seed, n, s):
    # random by design: the buckets of x[perm] are not those of x (the permutation drawn from
    # the seed does not depend on the data), so exact invariance is not a property. What is:
    # the sizes of the buckets, hence the weighted sum of the bucket means, and for s = 1 the
    # multiset of the outputs (the inputs themselves)
    x = cloud(seed, n, 3, outlier=seed % n)
    perm = permutation(seed, n)
    sizes = torch.full((-(-n // s),), float(s), dtype=torch.float64)
    sizes[-1] = n - s * (len(sizes) - 1)
    a = bz.aggregators.Bucketing(s=s, seed=seed)(x)
    b = bz.aggregators.Bucketing(s=s, seed=seed)(x[perm])
    torch.testing.assert_close((a * sizes[:, None]).sum(0), x.sum(0))
    torch.testing.assert_close((b * sizes[:, None]).sum(0), x.sum(0))
    if s == 1:
        assert torch.equal(a.sort(dim=0).values, x.sort(dim=0).values)
        assert torch.equal(b.sort(dim=0).values, x.sort(dim=0).values)


@pytest.mark.parametrize("n", [5, 6, 8])
def test_mda_ties_do_not_depend_on_the_order_of_inputs(n):
    # f = 2: several subsets often share the minimal diameter (the pair that spans it); the
    # lexicographically smallest by index was chosen, so reversing the rows changed the output
    for seed in range(30):
        x = cloud(seed, n, 3, outlier=0)
        rule = bz.aggregators.MDA(f=2)
        torch.testing.assert_close(rule(x.flip(0)), rule(x), msg=f"seed {seed}")


@pytest.mark.parametrize("cls", [Bulyan, MultiBulyan])
@pytest.mark.parametrize("row", [0, 3, 6])
def test_bulyan_outlier_never_selected_wherever_it_is(cls, row):
    # n = 7, f = 1: the last of the theta = 5 iterated-Krum steps sees 3 inputs; with Krum's
    # r - f - 2 = 0 neighbours every score was 0 and the lowest index won: an outlier in row 0
    # was selected 20 times in 20, in row 6 never
    for seed in range(20):
        x = cloud(seed, 7, 4, outlier=row)
        selected = cls(f=1).select(x)
        assert not (selected - x[row]).abs().sum(dim=1).lt(1e-12).any(), (seed, row)
        if cls is Bulyan:
            shifted = torch.roll(x, 3, dims=0)
            torch.testing.assert_close(cls(f=1)(shifted), cls(f=1)(x))


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_requires_grad_inputs_give_a_differentiable_output(name, dtype):
    f = 2
    spec = f"{name}+average" if name in PRE_NAMES else name
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 6, generator=g, dtype=dtype)
    x[4] += 6.0
    plain = create(spec, f=f)(x)
    leaf = x.clone().requires_grad_()
    out = create(spec, f=f)(leaf)
    assert out.requires_grad and out.dtype == dtype
    torch.testing.assert_close(out.detach(), plain)  # the value does not change
    out.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    if name not in ("sign_majority", "clipping", "arc"):  # translation equivariant rules
        torch.testing.assert_close(leaf.grad.sum(0), torch.ones(6, dtype=dtype))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    f = 1
    spec = {
        "geometric_median": "geometric_median(tol=1e-15, max_iter=100000)",
        "centered_clipping": "centered_clipping(tau=1.0, iterations=3)",
    }.get(name, name)
    spec = f"{spec}+average" if name in PRE_NAMES else spec
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    x[2] += 4.0

    def rule(v: torch.Tensor) -> torch.Tensor:
        return create(spec, f=f)(v)  # a fresh rule per call (bucketing: the same draw)

    # Weiszfeld stops where the objective is flat: the median is known to ~1e-8 only, too
    # coarse for differences over 1e-6 (exact comparison: the test below)
    eps, atol = (1e-3, 1e-4) if name == "geometric_median" else (1e-6, 1e-5)
    assert torch.autograd.gradcheck(rule, (x.requires_grad_(),), eps=eps, atol=atol, rtol=1e-4)


def test_geometric_median_gradient_is_the_implicit_derivative():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    x[2] += 4.0

    def weiszfeld(v: torch.Tensor) -> torch.Tensor:  # plain iterations, converged
        z = v.mean(0)
        for _ in range(3000):
            w = 1 / (v - z).norm(dim=1)
            z = (w[:, None] * v).sum(0) / w.sum()
        return z

    leaf = x.clone().requires_grad_()
    z = bz.aggregators.GeometricMedian(tol=1e-15, max_iter=100_000)(leaf)
    for k in range(3):
        (grad,) = torch.autograd.grad(z[k], leaf, retain_graph=True)
        numeric = torch.zeros_like(x)
        for i in range(7):
            for j in range(3):
                e = torch.zeros_like(x)
                e[i, j] = 1e-4
                numeric[i, j] = (weiszfeld(x + e)[k] - weiszfeld(x - e)[k]) / 2e-4
        torch.testing.assert_close(grad, numeric, rtol=0, atol=1e-6)
    # at an input (odd n on a line: the median is the middle input) z = x_j locally
    line = torch.tensor([[0.0, 0.0], [1.0, 0.1], [2.0, 0.0], [5.0, 0.3], [9.0, 0.0]],
                        dtype=torch.float64, requires_grad=True)  # fmt: skip
    bz.aggregators.GeometricMedian()(line).sum().backward()
    expected = torch.zeros(5, 2, dtype=torch.float64)
    expected[2] = 1.0
    torch.testing.assert_close(line.grad, expected)


def test_gradients_through_a_chain_and_a_stateful_step():
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    chain = create("nnm+geometric_median", f=2)
    chain(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    cc = create("centered_clipping(tau=0.5, iterations=2)")
    out, state = cc.step(x, cc.init_state())
    out2, _ = cc.step(x * 2, state)  # the centre carries the graph of the first round
    out2.sum().backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- overflow


@pytest.mark.parametrize(
    ("dtype", "scale", "d"),
    [(torch.float16, 3.0, 20_000), (torch.float32, 1e19, 50), (torch.float64, 1e160, 50)],
)
def test_caf_when_squared_norms_overflow_the_dtype(dtype, scale, d):
    # every row's squared norm overflows the dtype: CAF returned exactly 0 (all rows "bad")
    g = torch.Generator().manual_seed(0)
    x = (1.0 + 0.1 * torch.randn(9, d, generator=g, dtype=torch.float64)) * scale
    out = bz.aggregators.CAF(f=2)(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    mean = x.mean(0) / scale

    def error(out: torch.Tensor) -> float:  # relative, on values scaled back near 1
        return float((out.double() / scale - mean).norm() / mean.norm())

    assert error(out) < 0.05
    # one huge finite outlier on top is still filtered out
    y = x.clone()
    y[0] *= 1e3 if dtype != torch.float16 else 50.0
    assert error(bz.aggregators.CAF(f=2)(y.to(dtype))) < 0.05
