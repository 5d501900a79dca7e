"""Shots: each <Z> estimated from N measured bit strings, and gradients as a device would give them.

A device runs the circuit N times and returns N bit strings. Their counts
over the 2**n outcomes are one multinomial draw from the circuit's outcome
probabilities, which :mod:`tlkit.heads.density` computes exactly (with or
without noise), so sampling costs one draw per circuit, not N simulations
(Qiskit Aer samples every shot from one final state the same way).

* The multinomial is drawn by conditional binomials, halving the outcomes at
  each step (n steps for 2**n outcomes), vectorised over every circuit of the
  batch: an exact multinomial sampler, about 30x faster here than
  ``torch.multinomial`` with replacement (which draws and counts all N shots).
* Readout error flips each sampled bit with probability r: for each wire,
  Binomial(count, r) of each outcome's shots move to the outcome with that
  bit flipped. That is the sampled bits flipped one by one, counted.
* <Z_j> is then the mean of +1/-1 over the N shots.
* Every draw comes from a seeded ``torch.Generator`` per seed of the head
  (:class:`ShotSampler`), so the same seed gives the same numbers, and a
  seed trained among many draws exactly what it draws alone.

Training under shots (:class:`ParameterShift`): the circuit's output is a
sampled estimate, so its gradient is what a device gives, the
parameter-shift rule with sampled expectations, d<Z>/dtheta =
(<Z>(theta + pi/2) - <Z>(theta - pi/2)) / 2 for every RY angle, weights and
input angles alike; the input angles' gradient flows on into the classical
dressing through autograd. All 2 x (weights + inputs) shifted circuits of
every sample and seed are one batched simulation and one batched draw.
"""

from __future__ import annotations

import math

import torch

from tlkit.heads import density


class ShotSampler:
    """Sampled <Z> of a traced program at ``shots`` shots; one generator per shot seed."""

    def __init__(self, program: density.Program, shots: int):
        self.program, self.shots = program, int(shots)
        self._generators: dict[int, torch.Generator] = {}

    def generators(self, shot_seeds: torch.Tensor) -> list[torch.Generator]:
        """The generator of each seed (created at first use, then continued), in order."""
        out = []
        for seed in shot_seeds.reshape(-1).tolist():
            if seed not in self._generators:
                self._generators[seed] = torch.Generator().manual_seed(int(seed))
            out.append(self._generators[seed])
        return out

    def reset(self) -> None:
        self._generators.clear()

    def estimate(self, probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """(S, ..., 2**n) exact probabilities -> (S, ..., n_measured) shot estimates; seed s draws from
        ``generators[s]``."""
        program = self.program
        out = []
        for s, generator in enumerate(generators):
            flat = probs[s].reshape(-1, probs.shape[-1])
            counts = sample_counts(flat, self.shots, generator)
            counts = flip_bits(counts, program.readout, program.n_qubits, generator)
            out.append((counts @ program.z_signs / self.shots).reshape(*probs.shape[1:-1], -1))
        return torch.stack(out)


def sample_counts(probs: torch.Tensor, shots: int, generator: torch.Generator) -> torch.Tensor:
    """(R, 2**n) probabilities -> (R, 2**n) counts of ``shots`` draws each (float64): one multinomial per row,
    drawn as binomial splits of each half of the outcomes (exact)."""
    probs = probs.detach().to(torch.float64).clamp_min(0.0)
    rows = probs.shape[0]
    masses = [probs]
    while masses[-1].shape[1] > 1:
        masses.append(masses[-1].view(rows, -1, 2).sum(-1))
    counts = torch.full((rows, 1), float(shots), dtype=torch.float64)
    for mass in reversed(masses[:-1]):
        pairs = mass.view(rows, -1, 2)
        total = pairs.sum(-1)
        left_share = torch.where(total > 0, pairs[..., 0] / total.clamp_min(1e-300), torch.zeros_like(total))
        left = torch.binomial(counts, left_share.clamp(0.0, 1.0), generator=generator)
        counts = torch.stack([left, counts - left], dim=-1).view(rows, -1)
    return counts


def flip_bits(counts: torch.Tensor, readout: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """Readout error on sampled bit strings held as counts: each bit of each shot flipped with probability
    ``readout``, wire after wire."""
    if readout <= 0:
        return counts
    rate = torch.full_like(counts, readout)
    for wire in range(n):
        flipped = torch.binomial(counts, rate, generator=generator)
        counts = counts - flipped + flipped.index_select(-1, density._flip_index(n, wire, str(counts.device)))
    return counts


class ParameterShift(torch.autograd.Function):
    """Sampled <Z> with the parameter-shift gradient, sampled too.

    ``apply(sampler, generators, inputs (S, B, I), weights (S, P))`` -> (S, B, n_measured).
    """

    @staticmethod
    def forward(ctx, sampler: ShotSampler, generators, inputs: torch.Tensor, weights: torch.Tensor):
        ctx.sampler, ctx.generators = sampler, generators
        ctx.save_for_backward(inputs, weights)
        with torch.no_grad():
            probs = density.probabilities(sampler.program, inputs, weights.unsqueeze(1))
            return sampler.estimate(probs, generators)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inputs, weights = ctx.saved_tensors
        sampler = ctx.sampler
        program = sampler.program
        n_in, n_w = inputs.shape[-1], weights.shape[-1]
        if any(count != 1 for count in program.uses.values()):
            raise NotImplementedError("the parameter-shift rule here needs each angle to feed one RY gate")
        shift = math.pi / 2
        dtype = density.DTYPE
        # Rows of shifts: weights +, weights -, inputs +, inputs -.
        eye_w, eye_x = torch.eye(n_w, dtype=dtype), torch.eye(n_in, dtype=dtype)
        zeros_w, zeros_x = torch.zeros(2 * n_in, n_w, dtype=dtype), torch.zeros(2 * n_w, n_in, dtype=dtype)
        shifts_w = torch.cat([shift * eye_w, -shift * eye_w, zeros_w])  # (T, P)
        shifts_x = torch.cat([zeros_x, shift * eye_x, -shift * eye_x])  # (T, I)
        with torch.no_grad():
            shifted_inputs = inputs.to(dtype)[:, None] + shifts_x[None, :, None, :]  # (S, T, B, I)
            shifted_weights = weights.to(dtype)[:, None, None, :] + shifts_w[None, :, None, :]  # (S, T, 1, P)
            probs = density.probabilities(program, shifted_inputs, shifted_weights)  # (S, T, B, 2**n)
            values = sampler.estimate(probs, ctx.generators)  # (S, T, B, M)
            grad = grad.to(dtype)
            d_weights = (values[:, :n_w] - values[:, n_w:2 * n_w]) / 2  # (S, P, B, M)
            d_inputs = (values[:, 2 * n_w:2 * n_w + n_in] - values[:, 2 * n_w + n_in:]) / 2  # (S, I, B, M)
            grad_weights = torch.einsum("spbm,sbm->sp", d_weights, grad)
            grad_inputs = torch.einsum("sibm,sbm->sbi", d_inputs, grad)
        return None, None, grad_inputs.to(inputs.dtype), grad_weights.to(weights.dtype)
