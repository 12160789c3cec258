"""The objectives: the one registry (each objective's options, ranges, log-weights form), the
specs that name them, and the estimators beyond the paper (Roeder et al. 2017; Rainforth et
al. 2018): STL, MIWAE, CIWAE, PIWAE — their identities and which network each gradient comes
from."""


import pytest
import torch
from helpers import X, exact_posterior_model, grey, seeded_model

from iwae_tutorial.bounds import elbo, iwae_bound, power_bound
from iwae_tutorial.models import IWAE
from iwae_tutorial.objectives import (
    OBJECTIVES,
    REGISTRY,
    fleet_objectives,
    get_objective,
    log_w_objective,
    loss,
    objective_slug,
    parse_objective,
    register,
    samples_per_point,
)
from iwae_tutorial.runs import RunConfig
from iwae_tutorial.train import fit

K, M, B = 4, 3, 6


def model_and_x():
    model = seeded_model([(8, 3)], seed=0, dim=12, dtype=torch.float64)
    x = torch.bernoulli(grey(B, 12, seed=1, dtype=torch.float64))
    return model, x


def noise(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, B, d, generator=g, dtype=torch.float64) for d in model.latent_dims]


def all_grads(model, value) -> dict:
    names = [n for n, _ in model.named_parameters()]
    return dict(zip(names, torch.autograd.grad(value, list(model.parameters()))))


def part(grads: dict, prefix: str) -> dict:
    return {n: g for n, g in grads.items() if n.startswith(prefix)}


def test_every_estimator_is_registered():
    for name in ("vae", "iwae", "dreg", "stl"):
        assert get_objective(name) is OBJECTIVES[name]
    for name in ("power", "miwae", "ciwae", "piwae"):  # options bound to their defaults
        assert get_objective(name).func is OBJECTIVES[name]
    assert get_objective("power:p=2").keywords == {"p": 2.0}


def test_miwae_with_one_group_is_iwae_and_with_k1_the_m_sample_elbo():
    model, x = model_and_x()
    eps = noise(model, K)
    s, _ = OBJECTIVES["miwae"](model, x, K, m=1, eps=eps)
    assert torch.allclose(s, iwae_bound(model.log_weights(x, K, eps=eps)), atol=1e-12)
    eps = noise(model, M)
    s, _ = OBJECTIVES["miwae"](model, x, 1, m=M, eps=eps)
    assert torch.allclose(s, elbo(model.log_weights(x, M, eps=eps)), atol=1e-12)
    eps = noise(model, M * K)
    s, _ = OBJECTIVES["miwae"](model, x, K, m=M, eps=eps)
    log_w = model.log_weights(x, M * K, eps=eps).view(M, K, B)
    assert torch.allclose(s, torch.stack([iwae_bound(g) for g in log_w]).mean(0), atol=1e-12)
    assert (s <= iwae_bound(log_w.reshape(M * K, B)) + 1e-12).all()  # looser than L_mk


def test_ciwae_at_beta_0_and_1_is_iwae_and_elbo():
    model, x = model_and_x()
    eps = noise(model, K)
    log_w = model.log_weights(x, K, eps=eps)
    for beta, want in ((0.0, iwae_bound(log_w)), (1.0, elbo(log_w))):
        s, _ = OBJECTIVES["ciwae"](model, x, K, beta=beta, eps=eps)
        assert torch.allclose(s, want, atol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        OBJECTIVES["ciwae"](model, x, K, beta=1.5, eps=eps)


def test_piwae_decoder_follows_iwae_and_encoder_follows_miwae():
    model, x = model_and_x()
    eps = noise(model, M * K)
    piwae = -loss(model, x, K, "piwae", m=M, eps=eps)
    iwae = -loss(model, x, M * K, "iwae", eps=eps)
    miwae = -loss(model, x, K, "miwae", m=M, eps=eps)
    g = all_grads(model, piwae)
    for prefix, ref in (("decoder", iwae), ("encoder", miwae)):
        got, want = part(g, prefix), part(all_grads(model, ref), prefix)
        assert got and all(torch.allclose(got[n], want[n], atol=1e-10) for n in got), prefix
    _, bound = OBJECTIVES["piwae"](model, x, K, m=M, eps=eps)
    assert torch.allclose(bound, iwae_bound(model.log_weights(x, M * K, eps=eps)), atol=1e-12)


def test_stl_keeps_the_decoder_gradient_and_drops_the_score_term():
    model, x = model_and_x()
    eps = noise(model, K)
    stl = -loss(model, x, K, "stl", eps=eps)
    iwae = -loss(model, x, K, "iwae", eps=eps)
    g_stl, g_iwae = all_grads(model, stl), all_grads(model, iwae)
    got, want = part(g_stl, "decoder"), part(g_iwae, "decoder")
    assert all(torch.allclose(got[n], want[n], atol=1e-10) for n in got)
    enc_stl, enc_iwae = part(g_stl, "encoder"), part(g_iwae, "encoder")
    assert any(not torch.allclose(enc_stl[n], enc_iwae[n]) for n in enc_stl)  # score dropped
    # at the exact posterior every log-weight is log p(x): STL's encoder gradient is zero
    exact = exact_posterior_model()
    g = part(all_grads(exact, -loss(exact, X, 5, "stl")), "encoder")
    assert g and all(torch.allclose(t, torch.zeros_like(t), atol=1e-12) for t in g.values())


@pytest.mark.parametrize("objective, kw", [("stl", {}), ("miwae", {"m": 2}),
                                           ("ciwae", {"beta": 0.3}), ("piwae", {"m": 2})])
def test_each_estimator_trains_by_name(objective, kw):
    """Usable by name in fit (objective_kwargs for its parameters); a short run raises the
    bound."""
    model = seeded_model([(16, 4)], seed=0)
    x = grey(200, seed=2)
    history = fit(model, x, objective=objective, k=3, epochs=3, batch_size=20,
                  progress=False, objective_kwargs=kw)
    assert history[-1]["train_bound"] > history[0]["train_bound"]


@pytest.mark.parametrize("spec,message", [
    ("power:q=2", "power takes"), ("power:p=x", "p must be a float"),
    ("miwae:m=0", "out of range"), ("ciwae:beta=2", r"beta must be in \[0, 1\]"),
    ("iwae:m=3", "iwae takes no options"), ("nope", "unknown objective"),
    ("power:p", "power takes")])
def test_bad_objective_specs_get_one_line(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_objective(spec)
    assert "\n" not in str(err.value)


def test_objective_specs_name_runs_and_samples():
    assert parse_objective("power:p=2") == ("power", {"p": 2.0})
    assert parse_objective("power") == ("power", {"p": 0.5})  # defaults filled in
    assert objective_slug("ciwae:beta=0.05") == "ciwae-beta0.05"
    assert samples_per_point("miwae:m=5", 10) == 50 and samples_per_point("iwae", 10) == 10
    assert RunConfig(objective="power:p=2", k=50).name == "mnist-power-p2-k50-1L-s0"
    with pytest.raises(ValueError, match="power takes"):
        RunConfig(objective="power:x=1")
    model, x = model_and_x()
    eps = noise(model, K)
    s, _ = get_objective("power:p=2")(model, x, K, eps=eps)
    assert torch.allclose(s, power_bound(model.log_weights(x, K, eps=eps), 2.0))
    assert log_w_objective("ciwae:beta=0.25")(model.log_weights(x, K, eps=eps)).shape == (B,)


def test_cli_takes_objective_specs(tmp_path, capsys):
    from iwae_tutorial.cli import main

    assert main(["train", "--objective", "power:q=1", "--out", str(tmp_path / "r")]) == 2
    assert "argument --objective: objective 'power:q=1': power takes ['p']" in (
        capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_new_objectives_slot_in_by_name():
    @register("test-half-elbo")
    def half(model, x, k, **kw):
        b = 0.5 * model.log_weights(x, k, **kw).mean(0)
        return b, b

    try:
        m = IWAE(8, [(4, 2)])
        x = torch.rand(3, 8).bernoulli()
        g = torch.Generator().manual_seed(0)
        a = loss(m, x, 4, "test-half-elbo", generator=g)
        g = torch.Generator().manual_seed(0)
        b = loss(m, x, 4, "vae", generator=g)
        assert torch.allclose(a, 0.5 * b)
    finally:
        OBJECTIVES.pop("test-half-elbo")


def test_the_registry_holds_each_objectives_record_once():
    """One record per objective: its options with defaults, the ranges checked once, its
    log-weights form (what the fleet trainers can run) and the option that groups samples."""
    assert REGISTRY["power"].options == {"p": 0.5} and REGISTRY["ciwae"].ranges == {
        "beta": (0.0, 1.0)}
    assert REGISTRY["miwae"].groups == REGISTRY["piwae"].groups == "m"
    assert fleet_objectives() == ["ciwae", "iwae", "miwae", "power", "vae"]
    assert all(REGISTRY[n].log_w is None for n in ("dreg", "stl", "rws", "piwae"))
    with pytest.raises(ValueError, match="beta must be in"):  # the one declared range
        REGISTRY["ciwae"].check("beta", 1.5)
    OBJECTIVES["test-view"] = REGISTRY["vae"].fn  # the name -> function view registers
    try:
        assert REGISTRY["test-view"].options == {} and parse_objective("test-view")
    finally:
        del OBJECTIVES["test-view"]
    assert "test-view" not in REGISTRY
