"""Noise schedules and timestep respacing (Ho et al. 2020; Nichol & Dhariwal 2021, "improved DDPM").

Everything here is float64 numpy: schedules are computed once, on the host, at full precision.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NOISE_SCHEDULES = ("linear", "cosine")


def get_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Return the ``(num_timesteps,)`` float64 array of betas of a named schedule.

    ``"linear"``: betas evenly spaced from 1e-4 to 0.02, both scaled by ``1000 / num_timesteps`` so that
    any number of steps approximates the same continuous process (Ho et al. 2020, Sec. 4).
    ``"cosine"``: ``alpha_bar(s) = cos²((s + 0.008) / 1.008 · π/2)`` and
    ``beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), 0.999)`` (Nichol & Dhariwal 2021, Eq. 17).
    """
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise ValueError(f"unknown noise schedule {name!r}: use one of {NOISE_SCHEDULES}")


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Choose which of ``num_timesteps`` diffusion steps to keep; returns sorted step indices.

    ``section_counts`` is
    - an int or a digit string such as ``"250"``: that many steps, evenly spaced with a fractional
      stride over ``[0, num_timesteps - 1]``, both ends included;
    - a comma-separated string or a list, e.g. ``"10,20,30"``: the steps are cut into that many
      sections of (nearly) equal length and each section is spaced as above with its own count;
    - ``"ddimN"``: the integer stride ``s`` with ``len(range(0, num_timesteps, s)) == N``, i.e.
      ``0, s, 2s, ...`` as in the DDIM paper's uniform schedule.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            return _ddim_timesteps(num_timesteps, spec)
        try:
            counts = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"timestep respacing {section_counts!r} is not valid: use a step count such as '250', "
                "comma-separated section counts such as '10,20,30', or 'ddimN' such as 'ddim50'"
            ) from None
    elif isinstance(section_counts, (int, np.integer)) and not isinstance(section_counts, bool):
        counts = [int(section_counts)]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"timestep respacing {section_counts!r} is not valid: every count must be >= 1")

    # Sections get num_timesteps // n steps each, the first num_timesteps % n one more.
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"timestep respacing {section_counts!r} asks for {count} steps from a section of {size} "
                f"(of {num_timesteps} steps in all): use fewer steps"
            )
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        kept.extend(start + round(j * stride) for j in range(count))
        start += size
    return kept


def _ddim_timesteps(num_timesteps: int, spec: str) -> list[int]:
    try:
        count = int(spec[len("ddim"):])
    except ValueError:
        raise ValueError(f"timestep respacing {spec!r} is not valid: 'ddim' must be followed by a step count") from None
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == count:
            return list(range(0, num_timesteps, stride))
    raise ValueError(
        f"timestep respacing {spec!r}: no integer stride gives exactly {count} of {num_timesteps} steps; "
        f"use plain '{count}' (fractional stride) instead"
    )


def evenly_spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` step indices evenly spaced over ``[0, num_timesteps - 1]``, both ends included.

    The same as ``space_timesteps(num_timesteps, steps)`` except that a single step is the noisiest
    one (``num_timesteps - 1``) rather than step 0, so one-step sampling starts from noise.
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an int in [1, {num_timesteps}], got {steps!r}")
    return [num_timesteps - 1] if steps == 1 else space_timesteps(num_timesteps, int(steps))
