"""Samplers for the svd engine beyond SVD's own Euler scheduler.

``ConsistencySampler`` is the few-step multistep consistency sampling that AnimateLCM-SVD-xt's UNet
weights were distilled for (G-U-N/AnimateLCM, ``animatelcm_svd/animatelcm_scheduler.py``, read for
its constants and schedule; this is our own implementation of the same maths):

- 40 training steps; ``n`` inference steps take every ``40 // n``-th point of a Karras schedule
  (sigma_max 700, sigma_min 0.002, rho 7), from sigma_max down, then 0;
- the UNet input is scaled by ``1 / sqrt(sigma^2 + 1)`` and its timestep is ``0.25 * log(sigma)``,
  exactly as SVD's EulerDiscreteScheduler does (sigma_data = 1), so the same UNet call works;
- each step takes the model's clean estimate (v-prediction: ``x / (sigma^2 + 1) - v * sigma /
  sqrt(sigma^2 + 1)``) and re-noises it with fresh noise to the next sigma; the last step returns
  the clean estimate.

It speaks the small part of the diffusers scheduler interface the engine's loop uses
(``set_timesteps``, ``timesteps``, ``init_noise_sigma``, ``scale_model_input``, ``step``), so
``retrieve_timesteps`` and ``pipe.prepare_latents`` work with it unchanged. Its fresh noise comes
from the clip's own generator(s), so a seed gives the same clip alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StepOutput:
    prev_sample: object


class ConsistencySampler:
    """AnimateLCM-SVD's stochastic multistep consistency sampling (see the module docstring)."""

    train_steps = 40
    sigma_min = 0.002
    sigma_max = 700.0
    rho = 7.0
    needs_generator = True  # the engine passes the clips' generators to ``step``
    order = 1

    def __init__(self) -> None:
        self.init_noise_sigma = (self.sigma_max ** 2 + 1) ** 0.5
        self.timesteps = None
        self.sigmas = None
        self._index = 0

    def karras(self, ramp: np.ndarray) -> np.ndarray:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (hi + ramp * (lo - hi)) ** self.rho

    def set_timesteps(self, num_inference_steps: int, device=None, **_ignored) -> None:
        import torch

        if not 1 <= num_inference_steps <= self.train_steps:
            raise ValueError(f"the consistency sampler takes 1 to {self.train_steps} steps, "
                             f"got {num_inference_steps}")
        stride = self.train_steps // num_inference_steps
        ramp = np.arange(num_inference_steps) * stride / (self.train_steps - 1)
        sigmas = self.karras(ramp)
        self.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))  # on the CPU: read per step
        self.timesteps = torch.from_numpy(0.25 * np.log(sigmas)).to(device)
        self._index = 0

    def scale_model_input(self, sample, timestep):
        sigma = float(self.sigmas[self._index])
        return sample / (sigma ** 2 + 1) ** 0.5

    def step(self, model_output, timestep, sample, generator=None) -> StepOutput:
        from diffusers.utils.torch_utils import randn_tensor

        sigma, following = float(self.sigmas[self._index]), float(self.sigmas[self._index + 1])
        clean = sample / (sigma ** 2 + 1) - model_output * (sigma / (sigma ** 2 + 1) ** 0.5)
        self._index += 1
        if following == 0.0:
            return StepOutput(prev_sample=clean)
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        return StepOutput(prev_sample=clean + noise * following)


SAMPLERS = ("euler", "consistency")
