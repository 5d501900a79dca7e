"""Scoring a trained quantum head's seeds on the run's evaluation rows under given conditions.

The trained weights are the run's (``model.pt`` / ``model_seeds.pt``); only
how the circuit runs changes: noise, shots, device. On the torch simulators
all seeds run together along the circuit's seed axis (the dressing as
batched matrix products, the circuit as one batched simulation); on another
PennyLane device each seed's module runs one after another (inference only).
Shots are drawn from a generator seeded by each head's own seed, so the same
evaluation gives the same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from tlkit.heads.noise import NoiseModel

ROWS = 8192  # seed-rows per simulation (bounds memory: a 4-qubit density matrix is 256 float64 per row)


@dataclass(frozen=True)
class Conditions:
    noise: NoiseModel = NoiseModel()
    shots: int | None = None
    qdevice: str = "default.qubit"

    def as_dict(self) -> dict:
        return {"noise": self.noise.spec or None, "shots": self.shots, "qdevice": self.qdevice}

    @property
    def folder(self) -> str:
        """The folder name under RUN/evaluations/: "exact", or e.g. "noise-depolarizing=0.01_shots-1000"."""
        parts = ([f"noise-{self.noise.spec.replace(',', '+')}"] if self.noise.components else []) + (
            [f"shots-{self.shots}"] if self.shots else []) + (
            [f"device-{self.qdevice}"] if self.qdevice != "default.qubit" else [])
        return "_".join(parts) or "exact"


def score(heads: list, seeds: list[int], X: np.ndarray, conditions: Conditions) -> tuple[np.ndarray, float]:
    """(seeds, n, classes) probabilities of the fitted quantum ``heads`` under ``conditions``, and the seconds
    the computation took."""
    from tlkit.heads.quantum import DressedQuantumNet, resolve_simulator
    from tlkit.threads import one_thread

    params = heads[0].get_params()
    n_features, n_classes = int(heads[0].n_features_in_), len(heads[0].classes_)

    def build(seed: int) -> DressedQuantumNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return DressedQuantumNet(
                n_features, n_classes, n_qubits=int(params["n_qubits"]), depth=int(params["depth"]),
                qdevice=conditions.qdevice, shots=conditions.shots, simulator="auto",
                noise=conditions.noise.spec or None, entangling=params.get("entangling", "chain"))

    features = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    with one_thread(), torch.no_grad():
        start = time.perf_counter()
        if resolve_simulator("auto", conditions.qdevice, conditions.shots, conditions.noise) != "torch":
            probas = []
            for head, seed in zip(heads, seeds):  # a device runs one circuit at a time anyway
                net = build(seed)
                net.load_state_dict(head.module_.state_dict())
                probas.append(torch.softmax(net(features).double(), dim=-1).numpy())
            return np.stack(probas), time.perf_counter() - start
        net = build(seeds[0])
        net.reseed_shots(0)
        states = [head.module_.state_dict() for head in heads]
        stacked = {key: torch.stack([s[key] for s in states]) for key in states[0]}
        shot_seeds = torch.as_tensor(seeds, dtype=torch.long)
        step = max(1, ROWS // len(seeds))
        chunks = []
        for i in range(0, len(features), step):
            x = features[i:i + step]
            # The dressing of every seed at once (nn.Linear's arithmetic along a seed axis), then the circuit.
            pre = torch.einsum("sqf,nf->snq", stacked["pre.weight"], x) + stacked["pre.bias"][:, None]
            angles = torch.tanh(pre) * (math.pi / 2)
            expectations = net.runner(angles, stacked["q_weights"], shot_seeds).to(x.dtype)
            logits = torch.einsum("scq,snq->snc", stacked["post.weight"], expectations) + stacked["post.bias"][:, None]
            chunks.append(torch.softmax(logits.double(), dim=-1))
        return torch.cat(chunks, dim=1).numpy(), time.perf_counter() - start
