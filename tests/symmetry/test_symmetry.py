"""Weight-space symmetries: every transform preserves the function, canonical forms are
canonical, alignment finds what it should; on random and on trained networks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightspace import symmetry as S
from weightspace.nets.forward import MLP, effective_params, forward
from weightspace.nets.layout import flatten_params, unflatten_params, weight_distance
from weightspace.nets.spec import ACTIVATIONS, MLPSpec
from weightspace.zoo.population import sample_population
from weightspace.zoo.train.loop import train_population

ALL_ACTIVATIONS = tuple(ACTIVATIONS)
ODD = tuple(sorted(S.ODD_ACTIVATIONS))
HOMOGENEOUS = tuple(sorted(S.HOMOGENEOUS_ACTIVATIONS))
FAST = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------------------- helpers
def random_params(spec: MLPSpec, n_members: int, seed: int, trainable: bool = False):
    """Stacked random parameters, Gaussian with 1/sqrt(fan_in) scale (biases 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in spec.param_shapes(trainable).items():
        x = torch.randn(n_members, *shape, generator=gen)
        if name.endswith(("weight", "weight_v")):
            x = x / shape[1] ** 0.5
        elif name.endswith("bias"):
            x = 0.5 * x
        params[name] = x  # weight_g: standard normal, so some g are negative
    return params


def probe(spec: MLPSpec, seed: int = 0, n: int = 32) -> torch.Tensor:
    return torch.randn(n, spec.widths[0], generator=torch.Generator().manual_seed(seed + 1))


def assert_same_function(spec: MLPSpec, a, b, x: torch.Tensor) -> None:
    """Outputs of forward agree to 1e-4 relative to the output scale."""
    ya, yb = forward(a, x, spec), forward(b, x, spec)
    scale = 1.0 + ya.abs().max().item()
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4 * scale)


def assert_params_equal(a, b, exact: bool = True, tol: float = 1e-6) -> None:
    assert set(a) == set(b)
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=k)


@st.composite
def networks(draw, activations=ALL_ACTIVATIONS, weight_norm=None, members=(1, 3)):
    """(spec, stacked params): depth 2-4 layers, widths 1..12, bias on/off, M members."""
    n_layers = draw(st.integers(2, 4))
    widths = tuple(draw(st.lists(st.integers(1, 12), min_size=n_layers + 1, max_size=n_layers + 1)))
    activation = draw(st.sampled_from(activations))
    bias = draw(st.booleans())
    wn = draw(st.booleans()) if weight_norm is None else weight_norm
    seed = draw(st.integers(0, 2**31 - 1))
    m = draw(st.integers(*members))
    spec = MLPSpec(widths, activation, bias, wn)
    return spec, random_params(spec, m, seed, trainable=wn)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- trained nets
TRAINED = [("relu", False), ("tanh", False), ("identity", False), ("relu", True), ("sine", False)]


@pytest.fixture(scope="module")
def trained(digits):
    """``trained(activation, weight_norm)``: (spec, trainable params (4, ...), test inputs) of
    4 members of [64, 16, 16, 10] trained 2 epochs on digits; built once per module."""
    cache: dict = {}

    def get(activation: str, weight_norm: bool):
        key = (activation, weight_norm)
        if key not in cache:
            spec = MLPSpec((64, 16, 16, 10), activation, True, weight_norm)
            hp = {
                "epochs": 2,
                "activation": activation,
                "lr": 0.02 if activation == "identity" else 0.05,
            }
            members = sample_population(hp, 4, seed=7)
            result = train_population(digits, spec, members)
            names = spec.param_shapes(trainable=True)
            params = {k: result.weights[k][:, -1] for k in names}  # last checkpoint
            cache[key] = (spec, params, digits.x_test[:256])
        return cache[key]

    return get


def _transforms() -> dict[str, Callable]:
    """name -> f(spec, params, x) returning transformed params, or None if not applicable."""

    def perm(spec, p, x):
        ps = S.mlp_permutation_spec(spec, trainable=spec.weight_norm)
        return S.apply_permutation(ps, S.random_permutations(ps, _m(p), gen(3)), p)

    def signs(spec, p, x):
        return S.canonical_signs(p, spec)[0] if spec.activation in S.ODD_ACTIVATIONS else None

    def scale(spec, p, x):
        if spec.activation not in S.HOMOGENEOUS_ACTIVATIONS:
            return None
        return S.canonical_scale(p, spec)[0]

    def wn(spec, p, x):
        return S.canonical_weight_norm(p, spec) if spec.weight_norm else None

    def aligned(spec, p, x):
        ref = {k: v[:1] for k, v in p.items()}
        odd = spec.activation in S.ODD_ACTIVATIONS
        return S.align_to_reference(p, ref, spec, sign_aware=odd)[0]

    def merged(spec, p, x):
        return S.merge_many(p, spec, sign_aware=spec.activation in S.ODD_ACTIVATIONS)[0]

    def act_matched(spec, p, x):
        perms = S.activation_matching(p, {k: v[:1] for k, v in p.items()}, x, spec)
        return S.apply_permutation(S.mlp_permutation_spec(spec, spec.weight_norm), perms, p)

    out = {"permutation": perm, "signs": signs, "scale": scale, "weight_norm": wn}
    for key in S.SORT_KEYS:
        out[f"sort_{key}"] = lambda spec, p, x, key=key: (
            None if key == "bias" and not spec.bias else S.sort_units(p, spec, key)[0]
        )
    out["canonicalize"] = lambda spec, p, x: S.canonicalize(p, spec)[0]
    out["weight_matching"] = aligned
    out["merge_many"] = merged
    out["activation_matching"] = act_matched
    out["augment"] = lambda spec, p, x: S.augment(p, spec, gen(5))
    return out


TRANSFORMS = _transforms()


def _m(params) -> int:
    return next(iter(params.values())).shape[0]


# Networks each transform applies to.
NETWORKS = {
    "signs": networks(activations=ODD),
    "scale": networks(activations=HOMOGENEOUS),
    "weight_norm": networks(weight_norm=True),
}


def _applies(name: str, activation: str, weight_norm: bool) -> bool:
    if name == "signs":
        return activation in S.ODD_ACTIVATIONS
    if name == "scale":
        return activation in S.HOMOGENEOUS_ACTIVATIONS
    if name == "weight_norm":
        return weight_norm
    return True


# --------------------------------------------------------------------------- function
@pytest.mark.parametrize(
    "name,activation,weight_norm",
    [(n, a, w) for n in TRANSFORMS for a, w in TRAINED if _applies(n, a, w)],
)
def test_transforms_preserve_trained_networks(trained, name, activation, weight_norm):
    spec, params, x = trained(activation, weight_norm)
    out = TRANSFORMS[name](spec, params, x)
    assert set(out) == set(params)
    assert_same_function(spec, params, out, x)


@pytest.mark.parametrize("name", list(TRANSFORMS))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_transforms_preserve_random_networks(name, data):
    spec, params = data.draw(NETWORKS.get(name, networks()), label="net")
    x = probe(spec)
    out = TRANSFORMS[name](spec, params, x)
    if out is not None:  # only the sort by bias of a network without biases
        assert set(out) == set(params)
        assert_same_function(spec, params, out, x)


def test_siren_inrs_keep_their_function_under_sign_flips_and_permutations():
    """SIRENs (sine, w0 = 30: first-layer weights up to 15) fitted to digit images: every
    transform that applies to sine (an odd activation) keeps the fitted image."""
    from weightspace.zoo.tasks import load_task

    task = load_task({"name": "inr_digits", "n_signals": 4})
    spec = MLPSpec((2, 16, 16, 1), "sine")
    hp = {"init": "siren", "activation": "sine", "optimizer": "adam", "lr": 0.01}
    members = sample_population({**hp, "batch_size": 64, "epochs": 40, "signal": [0, 1, 2, 3]}, 4)
    result = train_population(task, spec, members, [])
    params = {k: v[:, -1] for k, v in result.weights.items()}
    assert "sine" in S.ODD_ACTIVATIONS
    for name, f in TRANSFORMS.items():
        if _applies(name, "sine", False):
            out = f(spec, params, task.coords)
            assert_same_function(spec, params, out, task.coords)
    flipped = S.canonical_signs(params, spec)[0]
    assert not torch.equal(flipped["layers.0.weight"], params["layers.0.weight"])


def test_transforms_change_the_weights(trained):
    """The function tests above are not vacuous: the weights really move."""
    spec, params, x = trained("tanh", False)
    for name in ("permutation", "signs", "sort_incoming_norm", "augment", "merge_many"):
        out = TRANSFORMS[name](spec, params, x)
        assert not torch.equal(out["layers.0.weight"], params["layers.0.weight"]), name


@pytest.mark.parametrize("activation", ["gelu", "sigmoid", "relu", "tanh"])
def test_inapplicable_canonical_forms_raise(activation):
    spec = MLPSpec((3, 4, 2), activation)
    p = random_params(spec, 2, 0)
    if activation not in S.ODD_ACTIVATIONS:
        with pytest.raises(ValueError, match="odd"):
            S.canonical_signs(p, spec)
        with pytest.raises(ValueError, match="odd"):
            S.weight_matching(p, p, spec, sign_aware=True)
        with pytest.raises(ValueError, match="sign"):
            S.canonicalize(p, spec, sign=True)
    if activation not in S.HOMOGENEOUS_ACTIVATIONS:
        with pytest.raises(ValueError, match="homogeneous"):
            S.canonical_scale(p, spec)
        with pytest.raises(ValueError, match="scale"):
            S.canonicalize(p, spec, scale=True)
    with pytest.raises(ValueError, match="weight_g"):
        S.canonical_weight_norm(p, spec)
    if activation in S.HOMOGENEOUS_ACTIVATIONS:  # every incoming norm is 1 after scaling
        with pytest.raises(ValueError, match="incoming_norm"):
            S.canonicalize(p, spec, sort_key="incoming_norm")
        S.canonicalize(p, spec, sort_key="incoming_norm", scale=False)
    with pytest.raises(ValueError, match="sort key"):
        S.sort_units(p, spec, "nope")
    with pytest.raises(ValueError, match="bias"):
        S.sort_units(_nobias(p), _nb(spec), "bias")


def _nb(spec: MLPSpec) -> MLPSpec:
    return MLPSpec(spec.widths, spec.activation, bias=False)


def _nobias(p):
    return {k: v for k, v in p.items() if not k.endswith("bias")}


# --------------------------------------------------------------------------- the spec
@settings(max_examples=20, deadline=None)
@given(
    widths=st.lists(st.integers(1, 10), min_size=3, max_size=5),
    activation=st.sampled_from(ALL_ACTIVATIONS),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_permutation_spec_matches_the_real_module(widths, activation, bias, seed):
    """A permuted state_dict loads into a plain nn.Module that computes the same function."""
    spec = MLPSpec(tuple(widths), activation, bias)
    torch.manual_seed(seed)
    net = MLP(spec).eval()
    state = net.state_dict()
    ps = S.mlp_permutation_spec(spec)
    assert list(ps.axes_to_perm) == list(state)  # every tensor of the module, in order
    for name, perms in ps.axes_to_perm.items():
        assert len(perms) == state[name].dim()
        for axis, p in enumerate(perms):
            if p is not None:
                assert state[name].shape[axis] == ps.sizes[p]
    stacked = {k: v.unsqueeze(0) for k, v in state.items()}
    perms = S.random_permutations(ps, 1, gen(seed))
    moved = S.apply_permutation(ps, perms, stacked)
    twin = MLP(spec).eval()
    twin.load_state_dict({k: v[0] for k, v in moved.items()}, strict=True)
    x = probe(spec, seed)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), rtol=1e-5, atol=1e-5)
    if any(not torch.equal(p[0], torch.arange(p.shape[-1])) for p in perms.values()):
        assert any(not torch.equal(moved[k][0], state[k]) for k in state)


def test_permutation_spec_layout():
    spec = MLPSpec((5, 4, 3, 2), "relu", True, weight_norm=True)
    ps = S.mlp_permutation_spec(spec)
    assert ps.sizes == {"P_0": 4, "P_1": 3}
    assert ps.perm_to_axes["P_0"] == (
        ("layers.0.weight", 0),
        ("layers.0.bias", 0),
        ("layers.1.weight", 1),
    )
    assert ps.axes_to_perm["layers.2.weight"] == (None, "P_1")
    assert ps.axes_to_perm["layers.2.bias"] == (None,)
    tr = S.mlp_permutation_spec(spec, trainable=True)
    assert tr.perm_to_axes["P_1"] == (
        ("layers.1.weight_g", 0),
        ("layers.1.weight_v", 0),
        ("layers.1.bias", 0),
        ("layers.2.weight_v", 1),
    )
    assert list(tr.axes_to_perm) == list(spec.param_shapes(trainable=True))
    with pytest.raises(KeyError, match="weight_g"):
        S.apply_permutation(ps, {}, {"layers.0.weight_g": torch.zeros(1, 4)})


@FAST
@given(net=networks(weight_norm=True))
def test_permuting_weight_norm_params_permutes_the_effective_weights(net):
    spec, params = net
    ps = S.mlp_permutation_spec(spec, trainable=True)
    perms = S.random_permutations(ps, _m(params), gen(1))
    moved = S.apply_permutation(ps, perms, params)
    expected = S.apply_permutation(
        S.mlp_permutation_spec(spec), perms, effective_params(params, spec)
    )
    assert_params_equal(effective_params(moved, spec), expected, exact=False, tol=1e-5)
    assert_same_function(spec, params, moved, probe(spec))


# --------------------------------------------------------------------------- permutations
@FAST
@given(net=networks(), seed=st.integers(0, 1000))
def test_invert_and_compose(net, seed):
    spec, params = net
    ps = S.mlp_permutation_spec(spec, trainable=spec.weight_norm)
    m = _m(params)
    p1, p2 = S.random_permutations(ps, m, gen(seed)), S.random_permutations(ps, m, gen(seed + 1))
    once = S.apply_permutation(ps, p1, params)
    assert_params_equal(S.apply_permutation(ps, S.invert_permutation(p1), once), params)
    twice = S.apply_permutation(ps, p2, once)
    assert_params_equal(S.apply_permutation(ps, S.compose(p1, p2), params), twice)
    ident = S.identity_permutations(ps, m)
    assert_params_equal(S.apply_permutation(ps, ident, params), params)
    # A shared (n,) permutation acts on every member like its (M, n) expansion.
    shared = {k: v[0] for k, v in p1.items()}
    expanded = {k: v.expand(m, -1) for k, v in shared.items()}
    assert_params_equal(
        S.apply_permutation(ps, shared, params), S.apply_permutation(ps, expanded, params)
    )


def test_random_permutations_are_permutations_and_differ_per_member():
    spec = MLPSpec((3, 12, 12, 2))
    ps = S.mlp_permutation_spec(spec)
    perms = S.random_permutations(ps, 50, gen(0))
    for p in perms.values():
        assert p.shape == (50, 12) and p.dtype == torch.long
        assert torch.equal(p.sort(-1).values, torch.arange(12).expand(50, 12))
        assert len({tuple(r.tolist()) for r in p}) > 40
    assert torch.equal(perms["P_0"], S.random_permutations(ps, 50, gen(0))["P_0"])


@FAST
@given(net=networks(), seed=st.integers(0, 1000))
def test_transforms_compose_and_undo(net, seed):
    spec, params = net
    m = _m(params)
    t1 = S.random_transform(spec, m, gen(seed))
    t2 = S.random_transform(spec, m, gen(seed + 1))
    step = S.apply_transform(S.apply_transform(params, spec, t1), spec, t2)
    both = S.apply_transform(params, spec, S.compose_transforms(t1, t2))
    assert_params_equal(step, both, exact=False, tol=1e-5)
    assert_params_equal(
        S.undo_transform(step, spec, S.compose_transforms(t1, t2)), params, False, 1e-5
    )


# --------------------------------------------------------------------------- canonical forms
def _copy(spec: MLPSpec, params, seed: int, scale: bool = False):
    """A random function-preserving copy: permuted, sign-flipped where odd, and with random
    positive unit scales where homogeneous (if ``scale``)."""
    m = _m(params)
    t = S.random_transform(spec, m, gen(seed))
    if scale and spec.activation in S.HOMOGENEOUS_ACTIVATIONS:
        ps = S.mlp_permutation_spec(spec)
        g = gen(seed + 7)
        f = {k: torch.exp(torch.randn(m, n, generator=g)) for k, n in ps.sizes.items()}
        params = S.rescale_units(params, spec, f)
    return S.apply_transform(params, spec, t)


@FAST
@given(net=networks(weight_norm=False), key=st.sampled_from(S.SORT_KEYS), seed=st.integers(0, 99))
def test_sort_units_is_canonical(net, key, seed):
    spec, params = net
    if key == "bias" and not spec.bias:
        return
    canon, perms = S.sort_units(params, spec, key)
    ps = S.mlp_permutation_spec(spec)
    copy = S.apply_permutation(ps, S.random_permutations(ps, _m(params), gen(seed)), params)
    assert_params_equal(S.sort_units(copy, spec, key)[0], canon)  # bit for bit
    again, perms2 = S.sort_units(canon, spec, key)
    assert_params_equal(again, canon)  # idempotent
    for p in perms2.values():
        assert torch.equal(p, torch.arange(p.shape[-1]).expand_as(p))
    assert_params_equal(S.apply_permutation(ps, perms, params), canon)  # perms are the map


def test_sort_units_orders_by_the_key():
    spec = MLPSpec((6, 9, 7, 3), "relu")
    params = random_params(spec, 4, 1)
    for key in ("incoming_norm", "bias", "outgoing_norm"):
        canon, _ = S.sort_units(params, spec, key)
        for l in range(spec.n_layers - 1):
            w, b = canon[f"layers.{l}.weight"], canon[f"layers.{l}.bias"]
            value = {
                "incoming_norm": (w**2).sum(-1) + b**2,
                "bias": b,
                "outgoing_norm": (canon[f"layers.{l + 1}.weight"] ** 2).sum(1),
            }[key]
            assert bool((value[:, 1:] <= value[:, :-1] + 1e-6).all()), key


def test_sort_units_breaks_ties_by_the_incoming_row():
    """Zero biases tie everywhere under the bias key; the canonical form is still unique."""
    spec = MLPSpec((4, 8, 5, 2), "gelu")
    params = random_params(spec, 3, 2)
    params = {k: torch.zeros_like(v) if k.endswith("bias") else v for k, v in params.items()}
    canon, _ = S.sort_units(params, spec, "bias")
    for seed in range(5):
        assert_params_equal(S.sort_units(_copy(spec, params, seed), spec, "bias")[0], canon)
    w = canon["layers.0.weight"]
    assert bool((w[:, 1:, 0] <= w[:, :-1, 0]).all())  # first column descending


def test_constant_init_network_canonicalizes():
    """Every hidden unit identical (constant init): all keys tie, nothing breaks."""
    spec = MLPSpec((4, 6, 6, 3), "relu")
    params = {k: torch.full((2, *s), 0.5) for k, s in spec.param_shapes().items()}
    canon, t = S.canonicalize(params, spec)
    assert_same_function(spec, params, canon, probe(spec))
    assert_params_equal(S.canonicalize(canon, spec)[0], canon, exact=False)
    assert_params_equal(S.undo_transform(canon, spec, t), params, exact=False, tol=1e-5)


@FAST
@given(net=networks(activations=ODD, weight_norm=False), seed=st.integers(0, 99))
def test_canonical_signs_is_canonical(net, seed):
    spec, params = net
    canon, signs = S.canonical_signs(params, spec)
    ps = S.mlp_permutation_spec(spec)
    # A flipped copy gets the same form; a permuted and flipped copy the permuted form.
    t = S.random_transform(spec, _m(params), gen(seed))
    flipped = S.rescale_units(params, spec, t.factors)
    assert_params_equal(S.canonical_signs(flipped, spec)[0], canon)
    both = S.apply_transform(params, spec, t)
    assert_params_equal(S.canonical_signs(both, spec)[0], S.apply_permutation(ps, t.perms, canon))
    again, signs2 = S.canonical_signs(canon, spec)
    assert_params_equal(again, canon)
    assert all(bool((s == 1).all()) for s in signs2.values())
    for l in range(spec.n_layers - 1):  # the key is positive (or zero)
        key = canon[f"layers.{l}.weight"].double().sum(-1)
        if spec.bias:
            key = key + canon[f"layers.{l}.bias"].double()
        assert bool((key >= -1e-12).all())


@FAST
@given(net=networks(activations=HOMOGENEOUS, weight_norm=False), seed=st.integers(0, 99))
def test_canonical_scale_is_canonical(net, seed):
    spec, params = net
    canon, scales = S.canonical_scale(params, spec)
    for l in range(spec.n_layers - 1):
        sq = (canon[f"layers.{l}.weight"].double() ** 2).sum(-1)
        if spec.bias:
            sq = sq + canon[f"layers.{l}.bias"].double() ** 2
        torch.testing.assert_close(sq, torch.ones_like(sq), rtol=1e-5, atol=1e-5)
    g = gen(seed)
    f = {k: torch.exp(2 * torch.randn(v.shape, generator=g)) for k, v in scales.items()}
    rescaled = S.rescale_units(params, spec, f)
    assert_params_equal(S.canonical_scale(rescaled, spec)[0], canon, exact=False, tol=1e-5)
    assert_params_equal(S.canonical_scale(canon, spec)[0], canon, exact=False)


@FAST
@given(net=networks(weight_norm=True), seed=st.integers(0, 99))
def test_canonical_weight_norm(net, seed):
    spec, params = net
    canon = S.canonical_weight_norm(params, spec)
    assert_params_equal(effective_params(canon, spec), effective_params(params, spec), False, 1e-5)
    for l in range(spec.n_layers):
        g, v = canon[f"layers.{l}.weight_g"], canon[f"layers.{l}.weight_v"]
        assert bool((g >= 0).all())
        norms = torch.linalg.vector_norm(v, dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    assert_params_equal(S.canonical_weight_norm(canon, spec), canon, exact=False)
    # (g, v) -> (-g, -c v) for c > 0 is the same network: the same canonical form.
    c = torch.rand(1, generator=gen(seed)).item() + 0.5
    other = {
        k: -v if k.endswith("weight_g") else -c * v if k.endswith("weight_v") else v
        for k, v in params.items()
    }
    assert_params_equal(S.canonical_weight_norm(other, spec), canon, exact=False, tol=1e-5)


@FAST
@given(net=networks(), seed=st.integers(0, 99))
def test_canonicalize_is_canonical_and_undoable(net, seed):
    spec, params = net
    canon, t = S.canonicalize(params, spec)
    copy = _copy(spec, params, seed, scale=True)
    exact = not spec.weight_norm and spec.activation not in S.HOMOGENEOUS_ACTIVATIONS
    assert_params_equal(S.canonicalize(copy, spec)[0], canon, exact=exact, tol=1e-5)
    assert_params_equal(S.canonicalize(canon, spec)[0], canon, exact=exact, tol=1e-5)
    # The transform reproduces the canonical network (its (g, v) up to their own rescaling).
    moved = S.apply_transform(params, spec, t)
    assert_params_equal(
        effective_params(moved, spec), effective_params(canon, spec), exact=False, tol=1e-5
    )
    back = S.undo_transform(canon, spec, t)
    assert_params_equal(
        effective_params(back, spec), effective_params(params, spec), exact=False, tol=1e-5
    )


def test_canonicalize_permuted_copies_are_bit_identical(trained):
    for activation in ("relu", "tanh"):
        spec, params, _ = trained(activation, False)
        canon, _ = S.canonicalize(params, spec)
        copy = S.apply_transform(params, spec, S.random_transform(spec, 4, gen(9)))
        assert_params_equal(S.canonicalize(copy, spec)[0], canon)


def test_canonicalize_flags():
    spec = MLPSpec((3, 5, 2), "identity")
    params = random_params(spec, 2, 0)
    _, t = S.canonicalize(params, spec, sign=False, scale=False)
    assert t.factors is None
    _, t = S.canonicalize(params, spec)  # identity: both scale and sign
    f = t.factors["P_0"]
    assert bool((f < 0).any()) and not bool((f.abs() == 1).all())


# --------------------------------------------------------------------------- alignment
@FAST
@given(net=networks(members=(2, 4)), seed=st.integers(0, 99))
def test_weight_matching_never_decreases_the_objective(net, seed):
    spec, params = net
    ref = {k: v[:1] for k, v in params.items()}
    sign_aware = spec.activation in S.ODD_ACTIVATIONS and seed % 2 == 0
    match = S.weight_matching(params, ref, spec, seed=seed, sign_aware=sign_aware)
    assert bool((match.objective_after >= match.objective_before - 1e-9).all())
    aligned = S.apply_transform(params, spec, match.transform)
    eff_a, eff_r = effective_params(aligned, spec), effective_params(ref, spec)
    recomputed = sum((eff_a[k].double() * eff_r[k].double()).flatten(1).sum(1) for k in eff_a)
    torch.testing.assert_close(recomputed, match.objective_after, rtol=1e-5, atol=1e-5)
    # Member 0 is the reference itself: matched to itself, untouched.
    for k, p in match.transform.perms.items():
        assert torch.equal(p[0], torch.arange(p.shape[-1])), k
    # Starting from the found permutations changes nothing (a fixed point).
    again = S.weight_matching(params, ref, spec, seed=seed + 1, init=match.transform.perms)
    if not sign_aware:
        for k, p in again.transform.perms.items():
            assert torch.equal(p, match.transform.perms[k])


@FAST
@given(net=networks(), seed=st.integers(0, 99))
def test_weight_matching_recovers_a_permuted_copy(net, seed):
    spec, params = net
    sign_aware = spec.activation in S.ODD_ACTIVATIONS
    copy = S.apply_transform(
        params, spec, S.random_transform(spec, _m(params), gen(seed), sign_aware)
    )
    aligned, t = S.align_to_reference(copy, params, spec, seed=seed, sign_aware=sign_aware)
    assert_params_equal(
        effective_params(aligned, spec), effective_params(params, spec), False, 1e-6
    )
    dist = weight_distance(flatten_params(aligned, spec), flatten_params(params, spec))
    assert bool((dist < 1e-6).all())
    # The returned transform maps the aligned weights back to the copy's own frame.
    assert_params_equal(S.undo_transform(aligned, spec, t), copy)
    if t.factors is None:  # permutations only: inverting them is enough
        ps = S.mlp_permutation_spec(spec, trainable=spec.weight_norm)
        assert_params_equal(S.apply_permutation(ps, S.invert_permutation(t.perms), aligned), copy)


@FAST
@given(net=networks(members=(2, 4)), seed=st.integers(0, 99))
def test_weight_matching_members_are_independent(net, seed):
    spec, params = net
    ref = random_params(MLPSpec(spec.widths, spec.activation, spec.bias), 1, seed)
    together = S.weight_matching(params, ref, spec, seed=seed).transform.perms
    for m in range(_m(params)):
        alone = S.weight_matching(
            {k: v[m : m + 1] for k, v in params.items()}, ref, spec, seed=seed
        )
        for k, p in alone.transform.perms.items():
            assert torch.equal(p[0], together[k][m])


def test_weight_matching_accepts_per_member_and_unstacked_references():
    spec = MLPSpec((4, 6, 5, 2), "relu")
    params = random_params(spec, 3, 0)
    refs = random_params(spec, 3, 1)
    per_member = S.weight_matching(params, refs, spec).transform.perms
    for m in range(3):
        one = {k: v[m] for k, v in refs.items()}  # unstacked
        alone = S.weight_matching({k: v[m : m + 1] for k, v in params.items()}, one, spec)
        for k, p in alone.transform.perms.items():
            assert torch.equal(p[0], per_member[k][m])


def test_sign_aware_matching_beats_permutations_alone_on_tanh(trained):
    spec, params, _ = trained("tanh", False)
    ref = {k: v[:1] for k, v in params.items()}
    plain = S.weight_matching(params, ref, spec)
    signed = S.weight_matching(params, ref, spec, sign_aware=True)
    assert bool((signed.objective_after[1:] > plain.objective_after[1:]).all())


def test_alignment_brings_trained_runs_closer(trained):
    """Different seeds end far apart; alignment removes part of that distance."""
    spec, params, _ = trained("relu", False)
    flat = flatten_params(params, spec)
    before = weight_distance(flat[1:], flat[:1])
    aligned, _ = S.align_to_reference(params, {k: v[:1] for k, v in params.items()}, spec)
    after = weight_distance(flatten_params(aligned, spec)[1:], flat[:1])
    assert bool((after < 0.95 * before).all()), (before, after)


@settings(max_examples=15, deadline=None)
@given(net=networks(weight_norm=False), seed=st.integers(0, 99))
def test_merge_many_puts_permuted_copies_in_one_frame(net, seed):
    spec, params = net
    one = {k: v[:1] for k, v in params.items()}
    odd = spec.activation in S.ODD_ACTIVATIONS
    copies = S.apply_transform(one, spec, S.random_transform(spec, 4, gen(seed), odd))
    merged, t, mean = S.merge_many(copies, spec, seed=seed, sign_aware=odd)
    flat = flatten_params(merged, spec)
    assert bool((weight_distance(flat, flat[:1]) < 1e-6).all())  # all in one frame
    torch.testing.assert_close(flatten_params(mean, spec), flat.mean(0, keepdim=True))
    assert_params_equal(S.undo_transform(merged, spec, t), copies)


def test_merge_many_on_trained_networks(trained):
    spec, params, x = trained("relu", False)
    merged, t, mean = S.merge_many(params, spec, seed=1)
    assert_same_function(spec, params, merged, x)
    assert_params_equal(S.undo_transform(merged, spec, t), params)

    def spread(p):
        flat = flatten_params(p, spec)
        return weight_distance(flat, flat.mean(0, keepdim=True)).mean()

    assert spread(merged) < spread(params)
    assert mean["layers.0.weight"].shape == (1, 16, 64)


def test_merge_many_reports_its_passes(trained, capsys):
    spec, params, _ = trained("relu", False)
    quiet = S.merge_many(params, spec, seed=1)
    shown = S.merge_many(params, spec, seed=1, progress=True)
    assert_params_equal(shown[0], quiet[0])  # the bars change nothing
    lines = [line for line in capsys.readouterr().out.splitlines() if "MergeMany pass" in line]
    m = len(next(iter(params.values())))
    assert lines and f": 0 of {m} members moved, objective +0.0e+00" in lines[-1]  # converged
    assert int(lines[0].split(": ")[1].split()[0]) > 0  # the first pass moved someone


def test_merge_many_stops_at_its_tolerance(trained, capsys):
    """A tolerance stops the passes once one gains little; the objective never falls."""
    spec, params, _ = trained("relu", False)
    full = S.merge_many(params, spec, seed=1, progress=True)
    out = capsys.readouterr().out.splitlines()
    gains = [float(line.rsplit("objective +", 1)[1]) for line in out if "objective +" in line]
    assert len(gains) >= 3 and all(g >= 0 for g in gains)
    tol = 1.01 * gains[1]  # (the printed gains are rounded)
    early = S.merge_many(params, spec, seed=1, progress=True, tol=tol)
    lines = [line for line in capsys.readouterr().out.splitlines() if "MergeMany pass" in line]
    assert len(lines) == 2  # the first pass, then the second, which gains <= tol
    assert_params_equal(S.undo_transform(early[0], spec, early[1]), params)

    def objective(p):
        flat = flatten_params(p, spec).double()
        return float(flat.sum(0).square().sum() - flat.square().sum()) / 2

    assert objective(params) < objective(early[0]) <= objective(full[0]) * (1 + 1e-9)


@FAST
@given(net=networks(weight_norm=False), seed=st.integers(0, 99))
def test_activation_matching_recovers_a_permuted_copy(net, seed):
    spec, params = net
    ps = S.mlp_permutation_spec(spec)
    copy = S.apply_permutation(ps, S.random_permutations(ps, _m(params), gen(seed)), params)
    x = probe(spec, seed, n=256)
    perms = S.activation_matching(copy, params, x, spec)
    aligned = S.apply_permutation(ps, perms, copy)
    assert_same_function(spec, params, aligned, x)
    # Units with distinct, non-constant activations land exactly where the reference has them
    # (dead or duplicate units may trade places: that still preserves the function).
    distinct = True
    for h in S.hidden_activations(params, x, spec):
        for m in range(_m(params)):
            if h.shape[-1] > 1:
                hm = h[m].double()
                if not bool((hm.std(0) > 1e-3).all()):
                    distinct = False
                    break
                corr = torch.corrcoef(hm.T).fill_diagonal_(0)
                distinct &= bool((corr < 0.99).all())
    if distinct:
        assert_params_equal(aligned, params, exact=False, tol=1e-6)


def test_activation_matching_on_trained_networks(trained):
    spec, params, x = trained("relu", False)
    ref = {k: v[:1] for k, v in params.items()}
    perms = S.activation_matching(params, ref, x, spec)
    assert all(torch.equal(p[0], torch.arange(p.shape[-1])) for p in perms.values())
    aligned = S.apply_permutation(S.mlp_permutation_spec(spec), perms, params)
    flat, ref_flat = flatten_params(params, spec), flatten_params(ref, spec)
    after = weight_distance(flatten_params(aligned, spec)[1:], ref_flat)
    assert bool((after < weight_distance(flat[1:], ref_flat)).all())


# --------------------------------------------------------------------------- augmentation
@FAST
@given(net=networks(), seed=st.integers(0, 99))
def test_augment_is_a_random_function_preserving_view(net, seed):
    spec, params = net
    a = S.augment(params, spec, gen(seed))
    assert_same_function(spec, params, a, probe(spec))
    assert_params_equal(S.augment(params, spec, gen(seed)), a)  # seeded
    t = S.random_transform(spec, _m(params), gen(seed))
    assert_params_equal(S.undo_transform(a, spec, t), params)


def test_augment_views_differ_and_flip_signs_only_when_odd():
    for activation, flips in (("tanh", True), ("relu", False), ("identity", True)):
        spec = MLPSpec((4, 10, 10, 2), activation)
        params = random_params(spec, 1, 0)
        many = {k: v.expand(64, *v.shape[1:]) for k, v in params.items()}
        views = S.augment(many, spec, gen(1))
        w = views["layers.0.weight"]
        assert len({tuple(r.flatten().tolist()) for r in w}) > 60
        rows = params["layers.0.weight"][0]
        negated = any(
            torch.equal(w[m, i], -rows[j]) for m in range(8) for i in range(10) for j in range(10)
        )
        assert negated == flips, activation
        assert S.random_transform(spec, 2, gen(0), sign_flips=False).factors is None


# --------------------------------------------------------------------------- flat vectors
@FAST
@given(net=networks())
def test_flatten_round_trip(net):
    spec, params = net
    flat = flatten_params(params, spec)
    assert flat.shape == (_m(params), spec.n_params())
    eff = effective_params(params, spec)
    assert_params_equal(unflatten_params(flat, spec), eff)
    assert list(unflatten_params(flat, spec)) == list(spec.param_shapes())
    if spec.weight_norm:
        tr = flatten_params(params, spec, trainable=True)
        assert_params_equal(unflatten_params(tr, spec, trainable=True), params)


def test_flatten_order_is_the_state_dict_order():
    spec = MLPSpec((3, 4, 2))
    net = MLP(spec)
    stacked = {k: v.unsqueeze(0) for k, v in net.state_dict().items()}
    expected = torch.cat([v.flatten() for v in net.state_dict().values()])
    assert torch.equal(flatten_params(stacked, spec)[0], expected)
    assert torch.equal(
        flatten_params(stacked, spec)[0], torch.nn.utils.parameters_to_vector(net.parameters())
    )
    with pytest.raises(ValueError, match="values per member"):
        unflatten_params(torch.zeros(1, 5), spec)


def test_weight_distance():
    g = gen(0)
    a, b = torch.randn(5, 40, generator=g), torch.randn(5, 40, generator=g)
    d = weight_distance(a, b)
    assert d.shape == (5,) and bool((d > 0).all())
    torch.testing.assert_close(d, weight_distance(b, a))
    torch.testing.assert_close(weight_distance(3 * a, 3 * b), d)
    assert bool((weight_distance(a, a) == 0).all())
    assert bool((weight_distance(torch.zeros(2, 3), torch.zeros(2, 3)) == 0).all())
    e = torch.eye(2)
    torch.testing.assert_close(
        weight_distance(e[:1], e[1:]), torch.tensor([2**0.5], dtype=torch.float64)
    )
    spec = MLPSpec((3, 4, 2))
    p, q = random_params(spec, 2, 0), random_params(spec, 2, 1)
    torch.testing.assert_close(
        weight_distance(p, q), weight_distance(flatten_params(p, spec), flatten_params(q, spec))
    )


@FAST
@given(net=networks(weight_norm=False), seed=st.integers(0, 99))
def test_canonical_unit_frame_fixes_scale_and_signs_and_keeps_the_unit_order(net, seed):
    """What the symmetry-aware encoders read: a rescaled / sign-flipped copy gets the same
    frame, a permuted copy the permuted frame, and the function is kept."""
    spec, params = net
    frame = S.canonical_unit_frame(params, spec)
    assert_same_function(spec, params, frame, probe(spec, seed))
    ps = S.mlp_permutation_spec(spec)
    t = S.random_transform(spec, _m(params), gen(seed))
    moved = _copy(spec, params, seed, scale=True)  # permuted, flipped and rescaled as allowed
    got = S.canonical_unit_frame(moved, spec)
    assert_params_equal(got, S.apply_permutation(ps, t.perms, frame), exact=False, tol=1e-4)
    if spec.activation not in S.HOMOGENEOUS_ACTIVATIONS | S.ODD_ACTIVATIONS:
        assert_params_equal(frame, params)  # nothing to fix: left as it is
