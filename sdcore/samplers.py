"""Diffusion samplers, each matching a diffusers scheduler number for number.

======================  =====================================================================
name                    diffusers scheduler
======================  =====================================================================
``ddim``                ``DDIMScheduler`` (eta 0)
``euler``               ``EulerDiscreteScheduler``
``euler_a``             ``EulerAncestralDiscreteScheduler`` (draws noise every step)
``dpmpp_2m``            ``DPMSolverMultistepScheduler``, ``algorithm_type="dpmsolver++"``,
                        ``solver_order=2``
``dpmpp_2m_karras``     the same with ``use_karras_sigmas=True``
``pndm``                ``PNDMScheduler`` with ``skip_prk_steps=True`` (SD 1.5's default)
``lms``                 ``LMSDiscreteScheduler`` (order 4)
======================  =====================================================================

``Sampler(name, num_steps, config=None, device="cpu")`` takes a scheduler config dict as a
model's ``scheduler/scheduler_config.json`` holds it (SD 1.5's when None). A key the dict
leaves out takes the default of the diffusers class the sampler mirrors, as diffusers'
``from_config`` gives it: betas 0.0001 .. 0.02 ``linear``, ``steps_offset`` 0,
``prediction_type`` epsilon; ``timestep_spacing`` ``leading`` for ddim and pndm, ``linspace``
for the others; for ddim ``clip_sample`` and ``set_alpha_to_one`` true (not SD 1.5's false);
``use_karras_sigmas`` false, ``final_sigmas_type`` zero, ``lower_order_final`` true. A key
is read only by the samplers whose class has it (``clip_sample`` by ddim alone), as
``from_config`` ignores the others. pndm never runs PNDM's Runge-Kutta warm-up (SD 1.5's
``skip_prk_steps=True``); a config with ``skip_prk_steps`` false is refused. Read keys:
``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule`` (``scaled_linear``
or ``linear``), ``trained_betas``, ``prediction_type`` (``epsilon`` or ``v_prediction``),
``steps_offset``, ``timestep_spacing``, ``clip_sample`` and ``clip_sample_range`` (ddim),
``set_alpha_to_one`` (ddim, pndm), ``use_karras_sigmas`` (euler, dpmpp_2m),
``final_sigmas_type`` (euler, dpmpp), ``lower_order_final`` and ``euler_at_final`` (dpmpp).
Keys that only name another scheduler's choices (``_class_name``, ``skip_prk_steps``,
``solver_order``, ``algorithm_type``, ...) are ignored; keys asking for what these samplers
do not implement (``thresholding``, ``rescale_betas_zero_snr``, non-linear
``interpolation_type``, ...) raise ValueError naming the key.

With ``device="cuda"`` each update runs on the GPU, as the pipeline runs it there (the
arrays go to the device and back each call); the results equal the CPU's bit for bit.

A sampling loop::

    s = Sampler("dpmpp_2m_karras", 20)
    x = noise * s.init_noise_sigma
    for i in range(s.num_steps):           # pndm makes one call more than num_steps asked
        eps = unet(s.scale_model_input(i, x), s.timesteps[i])
        x = s.step(i, eps, x, noise=fresh_noise() if s.needs_noise else None)
"""

from sdcore._C import Sampler, sampler_names

SAMPLERS = (
    "ddim",
    "euler",
    "euler_a",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "pndm",
    "lms",
)

DIFFUSERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": 'DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)',
    "dpmpp_2m_karras": (
        'DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, '
        "use_karras_sigmas=True)"
    ),
    "pndm": "PNDMScheduler(skip_prk_steps=True)",
    "lms": "LMSDiscreteScheduler",
}


def names():
    """The sampler names Sampler accepts."""
    return sampler_names()


__all__ = ["DIFFUSERS", "SAMPLERS", "Sampler", "names", "sampler_names"]
