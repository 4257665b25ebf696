"""Several outputs (tuple, dict, nested, None entries; output_fn) and several inputs (tuple, list, dict) in the
empirical kernels: every method and output mode agrees with a reference built by hand with torch.func, in the
concatenation order the docstring of ``empirical_ntk`` states (pytree order: sequences by position, dicts in
insertion order, None skipped)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkit.empirical import empirical_nngp, empirical_ntk
from empirical_models import DT, reduce_output, seeded

METHODS = ("auto", "layerwise", "jacobian", "vector_products")
OUTPUTS = ("full", "trace", "diagonal")


def reference_ntk(model, x1, x2, leaves, call=lambda model, params, x: functional_call(model, params, x)):
    """Θ from per-sample Jacobians by vmap(jacrev), with the outputs concatenated in the order ``leaves(out)``
    lists them (written out by hand in each test: this is what pins the documented order). x1, x2: tuples of
    input tensors, the model called as model(*sample)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, *sample):
        out = call(model, p, tuple(t[None] for t in sample))
        return torch.cat([leaf.reshape(-1) for leaf in leaves(out)])

    def jac(x):
        rows = vmap(jacrev(f), in_dims=(None, *[0] * len(x)))(params, *x)
        return torch.cat([r.reshape(r.shape[0], r.shape[1], -1) for r in rows.values()], -1)

    return torch.einsum("xap,ybp->xyab", jac(x1), jac(x2))


def assert_all_methods(model, x1, x2, reference, **kwargs):
    for method in METHODS:
        for output in OUTPUTS:
            kernel = empirical_ntk(model, x1, x2, output=output, method=method, **kwargs)
            torch.testing.assert_close(kernel, reduce_output(reference, output), rtol=1e-10, atol=1e-10,
                                       msg=lambda m: f"method={method}, output={output}: {m}")


class TupleHeads(nn.Module):
    """(logits (N, 3), boxes (N, 2, 2)): a trunk, two heads, and a bare parameter (Jacobian path of layerwise)."""

    def __init__(self):
        super().__init__()
        self.trunk, self.cls, self.box = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 4)
        self.gain = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        h = torch.tanh(self.trunk(x)) * self.gain
        return self.cls(h), self.box(h).view(-1, 2, 2)


class DictHeads(nn.Module):
    """{"z": (N, 2), "a": ((N, 3), None, [(N, 1)])}: keys inserted out of alphabetical order, nested, a None."""

    def __init__(self):
        super().__init__()
        self.trunk, self.z, self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 2), nn.Linear(5, 3), nn.Linear(5, 1)

    def forward(self, x):
        h = torch.sin(self.trunk(x))
        return {"z": self.z(h), "a": (self.a(h), None, [self.b(h) ** 2])}


class TwoInputs(nn.Module):
    """model(signal (N, 2, 6), meta (N, 3)): a Conv1d branch and a Linear branch added."""

    def __init__(self):
        super().__init__()
        self.conv, self.meta, self.out = nn.Conv1d(2, 3, 3), nn.Linear(3, 12), nn.Linear(12, 2)

    def forward(self, signal, meta):
        return self.out(torch.relu(self.conv(signal).flatten(1) + self.meta(meta)))


def _model(cls, seed=0):
    torch.manual_seed(seed)
    return cls().to(DT).eval()


def _x(n, *shape, seed=0):
    return torch.randn(n, *shape, generator=seeded(seed), dtype=DT)


def test_tuple_outputs_are_concatenated_in_order_for_every_method():
    model = _model(TupleHeads)
    x1, x2 = _x(4, 4), _x(3, 4, seed=1)
    reference = reference_ntk(model, (x1,), (x2,), lambda out: [out[0], out[1]])
    assert reference.shape == (4, 3, 7, 7)
    assert_all_methods(model, x1, x2, reference)
    # x2 = None: the symmetric path, the same kernel
    torch.testing.assert_close(empirical_ntk(model, x1), reference_ntk(model, (x1,), (x1,), lambda o: list(o)),
                               rtol=1e-10, atol=1e-10)


def test_dict_outputs_follow_insertion_order_and_skip_none():
    model = _model(DictHeads)
    x1, x2 = _x(3, 4), _x(2, 4, seed=1)
    # insertion order "z" before "a" (not sorted), depth first into the tuple, the None skipped
    reference = reference_ntk(model, (x1,), (x2,), lambda out: [out["z"], out["a"][0], out["a"][2][0]])
    assert_all_methods(model, x1, x2, reference)
    # The documented order, block by block: the "z" block is z's own NTK, the last output b's.
    full = empirical_ntk(model, x1, x2)
    z_only = empirical_ntk(model, x1, x2, output_fn=lambda out: out["z"])
    b_only = empirical_ntk(model, x1, x2, output_fn=lambda out: out["a"][2][0])
    torch.testing.assert_close(full[..., :2, :2], z_only, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full[..., 5:, 5:], b_only, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(full[..., :2, :2], full[..., 2:4, 2:4])  # the blocks differ, so the order is seen


def test_two_inputs_as_tuple_list_and_dict():
    model = _model(TwoInputs)
    s1, m1, s2, m2 = _x(4, 2, 6), _x(4, 3, seed=1), _x(3, 2, 6, seed=2), _x(3, 3, seed=3)
    reference = reference_ntk(model, (s1, m1), (s2, m2), lambda out: [out])
    assert_all_methods(model, (s1, m1), (s2, m2), reference)
    for x1, x2 in (([s1, m1], [s2, m2]), ({"signal": s1, "meta": m1}, {"signal": s2, "meta": m2})):
        for method in METHODS:  # model(*x) and model(**x), vmapped over every tensor
            torch.testing.assert_close(empirical_ntk(model, x1, x2, method=method), reference, rtol=1e-10,
                                       atol=1e-10)
    # chunked: every block of the symmetric kernel from slices of both input tensors
    symmetric = reference_ntk(model, (s1, m1), (s1, m1), lambda out: [out])
    for method in METHODS:
        torch.testing.assert_close(empirical_ntk(model, (s1, m1), method=method, batch_size=3), symmetric,
                                   rtol=1e-10, atol=1e-10)


def test_multihead_attention_with_and_without_output_fn():
    """nn.MultiheadAttention returns (attn_output (N, L, E), attn_weights (N, L, S)); called as mha(q, k, v)."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2, batch_first=True).to(DT).eval()
    q1, k1, v1 = _x(3, 2, 4), _x(3, 3, 4, seed=1), _x(3, 3, 4, seed=2)
    q2, k2, v2 = _x(2, 2, 4, seed=3), _x(2, 3, 4, seed=4), _x(2, 3, 4, seed=5)
    reference = reference_ntk(mha, (q1, k1, v1), (q2, k2, v2), lambda out: [out[0]])
    assert reference.shape == (3, 2, 8, 8)
    assert_all_methods(mha, (q1, k1, v1), (q2, k2, v2), reference, output_fn=lambda out: out[0])
    both = empirical_ntk(mha, (q1, k1, v1), (q2, k2, v2), output="diagonal")  # (out, weights): 8 + 6 outputs
    assert both.shape == (3, 2, 14)
    torch.testing.assert_close(both[..., :8], reduce_output(reference, "diagonal"), rtol=1e-10, atol=1e-10)
    weights = reference_ntk(mha, (q1, k1, v1), (q2, k2, v2), lambda out: [out[1]])
    torch.testing.assert_close(both[..., 8:], reduce_output(weights, "diagonal"), rtol=1e-10, atol=1e-10)


def test_integer_ids_beside_float_inputs():
    class IdsAndFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin, self.out = nn.Embedding(7, 4), nn.Linear(2, 4), nn.Linear(4, 2)

        def forward(self, ids, feats):
            return self.out(torch.tanh(self.emb(ids).mean(1) + self.lin(feats)))

    model = _model(IdsAndFeatures)
    ids1 = torch.randint(0, 7, (4, 3), generator=seeded(0))
    ids2 = torch.randint(0, 7, (3, 3), generator=seeded(1))
    f1, f2 = _x(4, 2), _x(3, 2, seed=1)
    reference = reference_ntk(model, (ids1, f1), (ids2, f2), lambda out: [out])
    assert_all_methods(model, (ids1, f1), (ids2, f2), reference)


def test_floating_inputs_are_brought_to_one_dtype():
    model = _model(TwoInputs).float()
    s, m = _x(3, 2, 6).float(), _x(3, 3, seed=1)  # float32 and float64
    kernel = empirical_ntk(model, (s, m), output="trace")
    assert kernel.dtype == torch.float64
    reference = reference_ntk(model.double(), (s.double(), m), (s.double(), m), lambda out: [out])
    torch.testing.assert_close(kernel, reduce_output(reference, "trace"), rtol=1e-10, atol=1e-10)


def test_nngp_of_several_outputs_and_inputs():
    model = _model(DictHeads)
    x = _x(3, 4)
    with torch.no_grad():
        out = model(x)
    f = torch.cat([out["z"], out["a"][0], out["a"][2][0]], 1)
    torch.testing.assert_close(empirical_nngp(model, x), f[:, None, :, None] * f[None, :, None, :], rtol=1e-12,
                               atol=1e-12)
    two = _model(TwoInputs)
    s, m = _x(3, 2, 6), _x(3, 3, seed=1)
    with torch.no_grad():
        g = two(s, m)
    torch.testing.assert_close(empirical_nngp(two, {"signal": s, "meta": m}, output="trace"), g @ g.T / 2,
                               rtol=1e-12, atol=1e-12)


def test_the_probe_finds_batch_coupling_in_any_input_or_output():
    class CoupledSecondInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, y):
            return self.lin(x) + (y - y.mean(0, keepdim=True))

    class CoupledSecondOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            z = self.lin(x)
            return z, z - z.mean(0, keepdim=True)

    x, y = _x(3, 3), _x(3, 2, seed=1)
    for fn in (empirical_ntk, empirical_nngp):
        with pytest.raises(ValueError, match="depends on the other samples in the batch"):
            fn(_model(CoupledSecondInput), (x, y))
        with pytest.raises(ValueError, match="depends on the other samples in the batch"):
            fn(_model(CoupledSecondOutput), x)
    # selecting the per-sample output makes it a valid model
    assert empirical_ntk(_model(CoupledSecondOutput), x, output_fn=lambda out: out[0]).shape == (3, 3, 2, 2)


def test_bad_trees_are_named():
    model = _model(TwoInputs)
    s, m = _x(4, 2, 6), _x(4, 3, seed=1)
    with pytest.raises(ValueError, match=r"the tensors of x1 must share the batch axis 0: x1\[0\] has shape "
                                         r"\(4, 2, 6\) \(4 samples\) but x1\[1\] has shape \(3, 3\) \(3 samples\)"):
        empirical_ntk(model, (s, m[:3]))
    with pytest.raises(ValueError, match=r"the tensors of x2 must share the batch axis 0: x2\['signal'\]"):
        empirical_ntk(model, {"signal": s, "meta": m}, {"signal": s, "meta": m[:2]})
    with pytest.raises(ValueError, match="x2 must have the same structure as x1"):
        empirical_ntk(model, (s, m), {"signal": s, "meta": m})
    with pytest.raises(ValueError, match="x2 must have the same structure as x1"):
        empirical_ntk(model, (s, m), s)
    with pytest.raises(ValueError, match=r"x1\[1\] and x2\[1\] must have the same per-sample shape"):
        empirical_ntk(model, (s, m), (s, m[:, :2]))
    with pytest.raises(TypeError, match=r"x1\[1\] is of type NoneType; every element of x1 must be a tensor"):
        empirical_ntk(model, (s, None))
    with pytest.raises(TypeError, match=r"x2\[1\] has dtype torch.int64.*both as floats or both as integer ids"):
        empirical_ntk(model, (s, m), (s, m.long()))
    with pytest.raises(ValueError, match=r"x1\[1\] contains 3 non-finite value\(s\).*index \(1, 0\)"):
        empirical_ntk(model, (s, m.clone().index_fill_(0, torch.tensor([1]), float("nan"))))
    with pytest.raises(TypeError, match="output_fn must be a callable"):
        empirical_ntk(model, (s, m), output_fn="logits")
    with pytest.raises(ValueError, match=r"the model's output\['a'\] must have the batch axis first: for a batch of 1 "
                                         r"sample\(s\) it has shape \(2,\)"):
        empirical_ntk(model, (s, m), output_fn=lambda out: {"z": out, "a": out.sum(0)})
    with pytest.raises(TypeError, match=r"the model's output\[1\] must be floating point; got torch.int64"):
        empirical_ntk(model, (s, m), output_fn=lambda out: (out, out.argmax(1)))


def test_a_list_of_numbers_is_still_one_input():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    points = [[0.5, -1.0], [2.0, 0.25], [1.0, 1.0]]
    torch.testing.assert_close(empirical_ntk(model, points), empirical_ntk(model, torch.tensor(points)), rtol=0,
                               atol=0)
