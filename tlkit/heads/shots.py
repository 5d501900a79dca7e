"""Shots: each <Z> estimated from N measured bit strings, and gradients as a device would give them.

A device runs the circuit N times and returns N bit strings. Their counts
over the 2**n outcomes are one multinomial draw from the circuit's outcome
probabilities, which :mod:`tlkit.heads.density` computes exactly (with or
without noise), so sampling costs one draw per circuit, not N simulations
(Qiskit Aer samples every shot from one final state the same way).

* The multinomial is drawn by numpy's ``Generator.multinomial`` (conditional
  binomials, exact), a whole block of circuits in one C call: about 4x faster
  per binomial here than ``torch.binomial``, and far faster than
  ``torch.multinomial`` with replacement (which draws and counts all N shots).
* Readout error flips each sampled bit with probability r. Shots are
  independent, so an outcome drawn from p with each bit then flipped is one
  draw from the flipped distribution: the counts are drawn from the readout-
  flipped probabilities (:func:`tlkit.heads.density.apply_readout`), the same
  law as flipping the sampled bits one by one (:func:`flip_bits`, which the
  tests hold it to) without 2**n x n more binomials per circuit.
* <Z_j> is then the mean of +1/-1 over the N shots.
* Every draw comes from a seeded generator per seed of the head (numpy's
  PCG64 seeded with the module's shot seed, :class:`ShotSampler`), so the
  same seed gives the same numbers, and a seed trained among many draws
  exactly what it draws alone: its draws depend on its own generator and its
  own circuits only. The seeds' blocks are drawn one C call each (a stream
  generator cannot be shared by seeds without mixing their draws).

Training under shots (:class:`ParameterShift`): the circuit's output is a
sampled estimate, so its gradient is what a device gives, the
parameter-shift rule with sampled expectations, d<Z>/dtheta =
(<Z>(theta + pi/2) - <Z>(theta - pi/2)) / 2 for every RY angle, weights and
input angles alike; the input angles' gradient flows on into the classical
dressing through autograd. The 2 x (weights + inputs) shifted circuits of
every sample and seed have their outcome probabilities computed together
(:func:`tlkit.heads.density.shifted_probabilities`, the seed axis a batch
axis) and are sampled in one draw per seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tlkit.heads import density


class ShotSampler:
    """Sampled <Z> of a traced program at ``shots`` shots; one generator per shot seed."""

    def __init__(self, program: density.Program, shots: int):
        self.program, self.shots = program, int(shots)
        self._generators: dict[int, np.random.Generator] = {}

    def generators(self, shot_seeds: torch.Tensor) -> list[np.random.Generator]:
        """The generator of each seed (created at first use, then continued), in order."""
        out = []
        for seed in shot_seeds.reshape(-1).tolist():
            if seed not in self._generators:
                self._generators[seed] = np.random.Generator(np.random.PCG64(int(seed)))
            out.append(self._generators[seed])
        return out

    def reset(self) -> None:
        self._generators.clear()

    def estimate(self, probs: torch.Tensor, generators: list[np.random.Generator]) -> torch.Tensor:
        """(S, ..., 2**n) exact probabilities -> (S, ..., n_measured) shot estimates; seed s draws from
        ``generators[s]``.

        Readout error is applied to the probabilities before the draw: a shot's outcome drawn from p, then
        each of its bits flipped with probability r, is one draw from the flipped distribution (shots are
        independent), so the counts are exactly the multinomial of :func:`density.apply_readout` (p), the
        same law as flipping the sampled bits one by one (:func:`flip_bits`), at no extra draws."""
        program = self.program
        probs = density.apply_readout(probs.detach(), program.readout, program.n_qubits)
        counts = sample_counts(probs.reshape(len(generators), -1, probs.shape[-1]), self.shots, generators)
        return (counts @ program.z_signs / self.shots).reshape(*probs.shape[:-1], -1)


def sample_counts(probs: torch.Tensor, shots: int, generators) -> torch.Tensor:
    """(S, R, 2**n) probabilities -> (S, R, 2**n) counts of ``shots`` draws each (float64): one multinomial per
    row, seed s's rows drawn from ``generators[s]`` (a ``numpy.random.Generator``; one generator may be given
    for a 2-d ``probs``).

    numpy's multinomial draws a whole (R, 2**n) block in one C call (conditional binomials, exact), about
    4x faster per binomial here than ``torch.binomial``; a seed's draws depend on its own generator and
    rows only, so it draws the same numbers alone or among many seeds."""
    if isinstance(generators, np.random.Generator):
        return sample_counts(probs[None], shots, [generators])[0]
    p = probs.detach().to(torch.float64).clamp_min(0.0).numpy()
    p = p / p.sum(-1, keepdims=True)  # rounding: numpy wants the probabilities to sum to at most 1
    counts = np.stack([g.multinomial(shots, p[s]) for s, g in enumerate(generators)])
    return torch.from_numpy(counts.astype(np.float64))


def flip_bits(counts: torch.Tensor, readout: float, n: int, generator: np.random.Generator) -> torch.Tensor:
    """Readout error on sampled bit strings held as counts: each bit of each shot flipped with probability
    ``readout``, wire after wire. (The reference for :meth:`ShotSampler.estimate`, which draws the same law
    from the flipped probabilities.)"""
    if readout <= 0:
        return counts
    for wire in range(n):
        flipped = torch.from_numpy(generator.binomial(counts.numpy().astype(np.int64), readout).astype(np.float64))
        counts = counts - flipped + flipped.index_select(-1, density._flip_index(n, wire, str(counts.device)))
    return counts


class ParameterShift(torch.autograd.Function):
    """Sampled <Z> with the parameter-shift gradient, sampled too.

    ``apply(sampler, generators, inputs (S, B, I), weights (S, P)[, training])`` -> (S, B, n_measured).
    ``training`` False (evaluation under ``torch.no_grad``, where a parameter's views still require grad): the
    forward pass is not kept for a backward that will not come, and runs laid out for large batches.
    """

    @staticmethod
    def forward(ctx, sampler: ShotSampler, generators, inputs: torch.Tensor, weights: torch.Tensor,
                training: bool = True):
        ctx.sampler, ctx.generators = sampler, generators
        ctx.save_for_backward(inputs, weights)
        ctx.forward = None
        with torch.no_grad():
            if training and any(ctx.needs_input_grad) and sampler.program.mixed:  # keep the forward pass for backward
                ctx.forward = density.forward_pass(sampler.program, inputs, weights)
                probs = ctx.forward["probs"]
            else:  # inference (any batch size): the replay laid out for large batches
                probs = density.probabilities(sampler.program, inputs, weights.unsqueeze(1))
            return sampler.estimate(probs, generators)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inputs, weights = ctx.saved_tensors
        sampler = ctx.sampler
        dtype = density.DTYPE
        with torch.no_grad():
            # Every rotation shifted by +pi/2 and -pi/2 (rows 2t and 2t+1), sampled like any circuit.
            probs, params = _shifted(sampler.program, inputs, weights, ctx.forward)
            ctx.forward = None
            values = sampler.estimate(probs, ctx.generators)  # (S, 2 * rotations, B, M)
            derivative = (values[:, 0::2] - values[:, 1::2]) / 2  # (S, rotations, B, M): d<Z>/d angle
            per_rotation = torch.einsum("srbm,sbm->srb", derivative, grad.to(dtype))
            grad_inputs = torch.zeros(inputs.shape, dtype=dtype)
            grad_weights = torch.zeros(weights.shape, dtype=dtype)
            for r, (kind, index) in enumerate(params):  # an angle feeding several rotations sums their terms
                if kind == "weight":
                    grad_weights[:, index] += per_rotation[:, r].sum(-1)
                else:
                    grad_inputs[:, :, index] += per_rotation[:, r]
        return None, None, grad_inputs.to(inputs.dtype), grad_weights.to(weights.dtype), None


def _shifted(program: density.Program, inputs: torch.Tensor, weights: torch.Tensor, forward: dict | None = None):
    """:func:`tlkit.heads.density.shifted_probabilities`'s rows. Density matrices: in the Heisenberg picture
    (fewer operations); state vectors: as whole shifted circuits in one batch (fewer, larger operations, which
    is faster at 16 amplitudes). Each angle must feed one rotation here."""
    if program.mixed or any(count != 1 for count in program.uses.values()):
        return density.shifted_probabilities(program, inputs, weights, math.pi / 2, forward)
    n_in, n_w = inputs.shape[-1], weights.shape[-1]
    dtype = density.DTYPE
    shift = math.pi / 2
    eye_w, eye_x = torch.eye(n_w, dtype=dtype), torch.eye(n_in, dtype=dtype)
    signs = torch.tensor([1.0, -1.0], dtype=dtype)[:, None, None]
    shifts_w = torch.cat([(shift * signs * eye_w).transpose(0, 1).reshape(2 * n_w, n_w),
                          torch.zeros(2 * n_in, n_w, dtype=dtype)])  # rows: weight 0 +, weight 0 -, ..., then inputs
    shifts_x = torch.cat([torch.zeros(2 * n_w, n_in, dtype=dtype),
                          (shift * signs * eye_x).transpose(0, 1).reshape(2 * n_in, n_in)])
    shifted_inputs = inputs.to(dtype)[:, None] + shifts_x[None, :, None, :]  # (S, T, B, I)
    shifted_weights = weights.to(dtype)[:, None, None, :] + shifts_w[None, :, None, :]  # (S, T, 1, P)
    params = [("weight", p) for p in range(n_w)] + [("input", i) for i in range(n_in)]
    return density.probabilities(program, shifted_inputs, shifted_weights), params
