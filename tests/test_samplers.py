"""The samplers against their diffusers schedulers.

Each scheduler is made as a pipeline makes it, ``Cls.from_config(SD 1.5's scheduler
config, **extra)``, so each class's own default timestep_spacing applies. We compare the
timesteps exactly, the sigmas and init_noise_sigma, and then run whole sampling loops on
both sides with the same deterministic fake model, the same starting latent and (for the
ancestral sampler) the same noise, comparing every intermediate sample.
"""

import types

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers import scheduling_euler_ancestral_discrete, scheduling_lms_discrete

import sdcore
from sdcore import _C, samplers
from sdcore.configs import SD15_SCHEDULER

# the class itself, not the placeholder diffusers exports when scipy is missing
LMSDiscreteScheduler = scheduling_lms_discrete.LMSDiscreteScheduler


DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
REFERENCE = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, DPMPP),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {**DPMPP, "use_karras_sigmas": True}),
    "pndm": (PNDMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
}
STEPS = [1, 2, 3, 10, 20, 25, 50]
TOL = 1e-5  # max abs error / max abs value, per step
SHAPE = (1, 4, 8, 8)


def rel_err(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def gauss_legendre_quad(f, a, b, epsrel=None):
    """scipy.integrate.quad stand-in for LMS's polynomial integrands (degree <= 3)."""
    x, w = np.polynomial.legendre.leggauss(8)
    half, mid = 0.5 * (b - a), 0.5 * (a + b)
    return half * sum(wi * float(f(mid + half * xi)) for xi, wi in zip(x, w, strict=True)), 0.0


@pytest.fixture(autouse=True)
def lms_integration(monkeypatch):
    """diffusers integrates the LMS coefficients with scipy.integrate.quad; where scipy is
    not installed, give it an exact quadrature instead (the integrand is a cubic at most)."""
    if not hasattr(scheduling_lms_discrete, "integrate"):
        monkeypatch.setattr(
            scheduling_lms_discrete,
            "integrate",
            types.SimpleNamespace(quad=gauss_legendre_quad),
            raising=False,
        )


class FakeModel:
    """eps = tanh(A x + t / 1000 * b): depends on both x and t, so any error in the
    schedule or the update shows up in later steps."""

    def __init__(self, rng):
        n = int(np.prod(SHAPE))
        self.A = rng.standard_normal((n, n)) / np.sqrt(n)
        self.b = rng.standard_normal(n)

    def __call__(self, x, t):
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return np.tanh(self.A @ x + float(t) / 1000.0 * self.b).astype(np.float32).reshape(SHAPE)


def make_reference(kind, steps, config):
    cls, extra = REFERENCE[kind]
    sched = cls.from_config(config, **extra)
    sched.set_timesteps(steps)
    return sched


def run_diffusers(kind, steps, config, model, latent, noises, monkeypatch):
    sched = make_reference(kind, steps, config)
    queue = list(noises)

    def fake_randn(shape, generator=None, device=None, dtype=None, **kw):
        return torch.from_numpy(queue.pop(0)).to(dtype=dtype).reshape(shape)

    monkeypatch.setattr(scheduling_euler_ancestral_discrete, "randn_tensor", fake_randn)
    x = torch.from_numpy(latent) * sched.init_noise_sigma
    out = []
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        eps = torch.from_numpy(model(x_in.numpy(), t.item()))
        x = sched.step(eps, t, x).prev_sample
        out.append(x.numpy().copy())
    return out


def run_sdcore(kind, steps, config, model, latent, noises):
    s = _C.Sampler(kind, steps, config)
    x = (latent * np.float32(s.init_noise_sigma)).astype(np.float32)
    out = []
    for i in range(s.num_steps):
        x_in = s.scale_model_input(i, x)
        eps = model(x_in, s.timesteps[i])
        x = s.step(i, eps, x, noises[i] if s.needs_noise else None)
        out.append(x.copy())
    return out


def check_schedule(kind, steps, config):
    sched = make_reference(kind, steps, config)
    s = _C.Sampler(kind, steps, config)
    ref_t = sched.timesteps.numpy().astype(np.float32)
    assert s.num_steps == len(ref_t), f"{kind} {steps} steps: {s.timesteps} vs {ref_t}"
    if kind == "euler" and config.get("use_karras_sigmas"):
        # fractional timesteps from NumPy's float32 log, which is not correctly rounded
        # (ours is): the last bit may differ
        np.testing.assert_allclose(s.timesteps, ref_t, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(s.timesteps, ref_t, err_msg=f"{kind} {steps} timesteps")
    ref_sigma = np.float32(np.asarray(sched.init_noise_sigma))
    assert abs(s.init_noise_sigma - ref_sigma) <= 1e-6 * ref_sigma, (kind, steps)
    if s.sigmas is not None:
        ref_sigmas = sched.sigmas.numpy().astype(np.float32)
        np.testing.assert_allclose(s.sigmas, ref_sigmas, rtol=1e-6, atol=0, err_msg=kind)
    else:
        assert not hasattr(sched, "sigmas") or kind in ("ddim", "pndm")
    return s


def check_loop(kind, steps, config, monkeypatch, seed=None):
    seed = np.random.SeedSequence().entropy % 2**32 if seed is None else seed
    rng = np.random.default_rng(seed)
    model = FakeModel(rng)
    latent = rng.standard_normal(SHAPE).astype(np.float32)
    noises = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(steps + 2)]
    ours = run_sdcore(kind, steps, config, model, latent, noises)
    ref = run_diffusers(kind, steps, config, model, latent, noises, monkeypatch)
    assert len(ours) == len(ref)
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        err = rel_err(a, b)
        worst = max(worst, err)
        assert err <= TOL, f"{kind} {steps} steps, step {i}: rel err {err:.3g} (seed {seed})"
    return worst


@pytest.mark.parametrize("kind", list(REFERENCE))
@pytest.mark.parametrize("steps", STEPS)
def test_matches_diffusers(kind, steps, monkeypatch):
    check_schedule(kind, steps, SD15_SCHEDULER)
    worst = check_loop(kind, steps, SD15_SCHEDULER, monkeypatch)
    print(f"{kind} {steps}: max rel err {worst:.3g}")


@pytest.mark.parametrize("kind", list(REFERENCE))
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("steps", [1, 3, 7, 30])
def test_timestep_spacing(kind, spacing, steps, monkeypatch):
    config = {**SD15_SCHEDULER, "timestep_spacing": spacing}
    check_schedule(kind, steps, config)
    check_loop(kind, steps, config, monkeypatch)


@pytest.mark.parametrize("kind", list(REFERENCE))
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_v_prediction(kind, steps, monkeypatch):
    config = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}
    check_schedule(kind, steps, config)
    check_loop(kind, steps, config, monkeypatch)


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("ddim", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}),
        ("euler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}),
        ("ddim", {"clip_sample": True, "clip_sample_range": 0.5}),
        ("ddim", {"set_alpha_to_one": True}),
        ("pndm", {"set_alpha_to_one": True}),
        ("euler", {"use_karras_sigmas": True}),
        ("euler", {"final_sigmas_type": "sigma_min"}),
        ("dpmpp_2m", {"final_sigmas_type": "sigma_min"}),
        ("dpmpp_2m", {"lower_order_final": False}),
        ("dpmpp_2m", {"euler_at_final": True}),
        ("dpmpp_2m", {"steps_offset": 0, "timestep_spacing": "leading"}),
        ("lms", {"num_train_timesteps": 500}),
    ],
)
@pytest.mark.parametrize("steps", [3, 12, 25])
def test_config_variants(kind, extra, steps, monkeypatch):
    config = {**SD15_SCHEDULER, **extra}
    check_schedule(kind, steps, config)
    check_loop(kind, steps, config, monkeypatch)


def test_trained_betas(monkeypatch):
    rng = np.random.default_rng()
    betas = np.sort(rng.uniform(1e-4, 0.03, 1000)).astype(np.float32)
    config = {**SD15_SCHEDULER, "trained_betas": betas.tolist()}
    for kind in ("ddim", "euler", "dpmpp_2m"):
        s = check_schedule(kind, 10, config)
        ref = REFERENCE[kind][0].from_config(config, **REFERENCE[kind][1])
        np.testing.assert_array_equal(s.alphas_cumprod, ref.alphas_cumprod.numpy())
        check_loop(kind, 10, config, monkeypatch)


def test_alphas_cumprod_bitwise():
    for schedule in ("scaled_linear", "linear"):
        config = {**SD15_SCHEDULER, "beta_schedule": schedule}
        ref = DDIMScheduler.from_config(config).alphas_cumprod.numpy()
        np.testing.assert_array_equal(_C.Sampler("ddim", 10, config).alphas_cumprod, ref)


def test_scheduler_config_parsed_once():
    """A SchedulerConfig is the dict parsed and checked once (the pipeline makes one when
    it loads a model): samplers made from it match diffusers as those from the dict do,
    and a bad field is named when it is made."""
    rng = np.random.default_rng()
    betas = np.sort(rng.uniform(1e-4, 0.03, 1000)).astype(np.float32)
    config = {**SD15_SCHEDULER, "trained_betas": betas.tolist(), "timestep_spacing": "trailing"}
    parsed = _C.SchedulerConfig(config)
    from_dict = _C.Sampler("dpmpp_2m_karras", 15, dict(config))
    del config["trained_betas"]  # the parsed betas do not borrow the list
    s = _C.Sampler("dpmpp_2m_karras", 15, parsed)
    ref = DPMSolverMultistepScheduler.from_config({**config, "trained_betas": betas.tolist()})
    np.testing.assert_array_equal(s.alphas_cumprod, ref.alphas_cumprod.numpy())
    for name in ("alphas_cumprod", "timesteps", "sigmas"):
        np.testing.assert_array_equal(getattr(s, name), getattr(from_dict, name), err_msg=name)
    with pytest.raises(ValueError, match="beta_schedule"):
        _C.SchedulerConfig({"beta_schedule": "squaredcos_cap_v2"})


def test_pndm_model_calls():
    # skip_prk_steps repeats one timestep: n + 1 model calls, except 1 for n = 1
    assert _C.Sampler("pndm", 1).num_steps == 1
    assert _C.Sampler("pndm", 2).num_steps == 3
    assert _C.Sampler("pndm", 50).num_steps == 51


def test_names_and_python_module():
    assert _C.sampler_names() == list(samplers.SAMPLERS)
    assert samplers.names() == list(samplers.SAMPLERS)
    assert samplers.DIFFUSERS["pndm"].startswith("PNDMScheduler")
    s = samplers.Sampler("euler_a", 5)
    assert s.needs_noise and s.kind == "euler_a"
    assert not samplers.Sampler("euler", 5).needs_noise


def test_default_config_is_sd15():
    a = _C.Sampler("dpmpp_2m_karras", 20)
    b = _C.Sampler("dpmpp_2m_karras", 20, SD15_SCHEDULER)
    np.testing.assert_array_equal(a.timesteps, b.timesteps)
    np.testing.assert_array_equal(a.sigmas, b.sigmas)


@pytest.mark.parametrize(
    "args,field",
    [
        (("foo", 10), "kind"),
        (("euler", 0), "num_steps"),
        (("euler", 1001), "num_steps"),
        (("ddim", 10, {"beta_schedule": "squaredcos_cap_v2"}), "beta_schedule"),
        (("ddim", 10, {"prediction_type": "sample"}), "prediction_type"),
        (("ddim", 10, {"timestep_spacing": "middle"}), "timestep_spacing"),
        (("ddim", 10, {"num_train_timesteps": "1000"}), "num_train_timesteps"),
        (("ddim", 10, {"num_train_timesteps": 1}), "num_train_timesteps"),
        (("ddim", 10, {"beta_start": -1.0}), "beta_start"),
        (("ddim", 10, {"beta_end": 2}), "beta_end"),
        (("ddim", 10, {"steps_offset": -1}), "steps_offset"),
        (("ddim", 1000, {"steps_offset": 1}), "steps_offset"),
        (("ddim", 61, {"timestep_spacing": "trailing"}), "trailing"),
        (("ddim", 10, {"clip_sample": "yes"}), "clip_sample"),
        (("ddim", 10, {"clip_sample_range": 0.0}), "clip_sample_range"),
        (("lms", 10, {"use_karras_sigmas": True}), "use_karras_sigmas"),
        (("euler", 10, {"final_sigmas_type": "one"}), "final_sigmas_type"),
        (("euler", 10, {"interpolation_type": "log_linear"}), "interpolation_type"),
        (("ddim", 10, {"thresholding": True}), "thresholding"),
        (("ddim", 10, {"rescale_betas_zero_snr": True}), "rescale_betas_zero_snr"),
        (("ddim", 10, {"trained_betas": [0.1, 0.2]}), "trained_betas"),
        (
            ("ddim", 10, {"num_train_timesteps": 3, "trained_betas": [0.1, 1.5, 0.2]}),
            "trained_betas",
        ),
    ],
)
def test_bad_inputs(args, field):
    with pytest.raises(ValueError, match=field):
        _C.Sampler(*args)


def test_bad_step_calls():
    x = np.zeros(SHAPE, np.float32)
    s = _C.Sampler("euler_a", 5)
    with pytest.raises(ValueError, match="noise"):
        s.step(0, x, x)
    with pytest.raises(ValueError, match="order"):
        s.step(1, x, x, x)
    with pytest.raises(ValueError, match="shape"):
        s.step(0, x, np.zeros((1, 4, 8, 9), np.float32), x)
    with pytest.raises(TypeError, match="float32"):
        s.step(0, x.astype(np.float64), x, x)
    with pytest.raises(ValueError, match="range"):
        s.scale_model_input(5, x)
    with pytest.raises(TypeError):
        _C.Sampler("euler", 5, [("steps_offset", 1)])
    s = _C.Sampler("dpmpp_2m", 5)
    s.step(0, x, x)
    with pytest.raises(ValueError, match="elements"):
        s.step(1, np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="range"):
        _C.Sampler("ddim", 3).step(3, x, x)
    assert isinstance(sdcore.SdcoreError, type)


# -- keys a config leaves out -----------------------------------------------------------------


def _reference_extra(kind):
    # pndm is PNDMScheduler with skip_prk_steps=True whatever the config; the others'
    # extras are in REFERENCE
    return {"skip_prk_steps": True} if kind == "pndm" else {}


@pytest.mark.parametrize("kind", list(REFERENCE))
@pytest.mark.parametrize(
    "missing", [k for k in SD15_SCHEDULER if k not in ("_class_name", "skip_prk_steps")]
)
def test_a_missing_key_takes_the_scheduler_class_default(kind, missing, monkeypatch):
    """A key the config leaves out means what diffusers' from_config makes of it for that
    scheduler class (DDIMScheduler clips x0 and sets alpha to one by default; every class
    defaults to betas 0.0001 .. 0.02, linear, steps_offset 0)."""
    config = {k: v for k, v in SD15_SCHEDULER.items() if k != missing}
    config.update(_reference_extra(kind))
    for steps in (4, 13):
        check_schedule(kind, steps, config)
        check_loop(kind, steps, config, monkeypatch)


@pytest.mark.parametrize("kind", list(REFERENCE))
def test_an_empty_config_is_the_scheduler_class_defaults(kind, monkeypatch):
    config = _reference_extra(kind)
    for steps in (3, 20):
        check_schedule(kind, steps, config)
        check_loop(kind, steps, config, monkeypatch)


def test_ddim_without_clip_sample_clips_as_diffusers_does(monkeypatch, rng):
    # SD 1.5's config says clip_sample false; one without the key clips x0 to [-1, 1]
    config = {k: v for k, v in SD15_SCHEDULER.items() if k != "clip_sample"}
    assert DDIMScheduler.from_config(config).config.clip_sample is True
    seed = int(rng.integers(2**32))
    for steps in (2, 10, 50):
        check_loop("ddim", steps, config, monkeypatch, seed=seed)
    # and the clipping changes the result here, so the check above can tell
    model = FakeModel(np.random.default_rng(seed))
    latent, noise = _latent_and_noise(np.random.default_rng(seed), 10)
    clipped = run_sdcore("ddim", 10, config, model, latent, noise)[-1]
    unclipped = run_sdcore("ddim", 10, SD15_SCHEDULER, model, latent, noise)[-1]
    assert rel_err(unclipped, clipped) > 100 * TOL


def _latent_and_noise(rng, steps):
    latent = rng.standard_normal(SHAPE).astype(np.float32)
    return latent, [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(steps + 2)]


@pytest.mark.parametrize("kind", ["euler", "euler_a", "dpmpp_2m", "pndm", "lms"])
def test_keys_of_another_class_are_ignored_as_from_config_ignores_them(kind, monkeypatch):
    # a DDIM config that clips: only DDIMScheduler has clip_sample
    config = {**SD15_SCHEDULER, "clip_sample": True, "clip_sample_range": 2.0}
    config.update(_reference_extra(kind))
    check_loop(kind, 10, config, monkeypatch)


def test_pndm_refuses_a_config_that_asks_for_runge_kutta_steps():
    with pytest.raises(ValueError, match="skip_prk_steps"):
        _C.Sampler("pndm", 10, {**SD15_SCHEDULER, "skip_prk_steps": False})
