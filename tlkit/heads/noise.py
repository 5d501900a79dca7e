"""The noise model of ``--noise``: declared once, with one exact meaning in PennyLane.

    --noise depolarizing=0.01,amplitude_damping=0.005,dephasing=0.005,readout=0.02

* ``depolarizing=p``: ``qml.DepolarizingChannel(p)`` after every gate, on each wire the gate acts on
  (Hadamard, RY, and both wires of a CNOT);
* ``amplitude_damping=g``, ``dephasing=g``: ``qml.AmplitudeDamping(g)``, ``qml.PhaseDamping(g)``, placed
  the same way;
* ``readout=r``: ``qml.BitFlip(r)`` on every wire just before measurement.

After a gate, its channels follow in the order written. :meth:`NoiseModel.to_pennylane` is that meaning
as a ``qml.NoiseModel`` (for ``qml.add_noise``), so anyone can rebuild the noisy circuit, and the torch
simulators (:mod:`tlkit.heads.density`) are tested against it on ``default.mixed``.

A comma list on one component (``depolarizing=0,0.001,0.01``) is a sweep: :func:`parse_sweep` (used by
``tlkit evaluate``). Imported when the CLI starts: no PennyLane here until :meth:`to_pennylane`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlkit.errors import HeadError

# component -> the PennyLane channel placed after every gate
GATE_CHANNELS = {"depolarizing": "DepolarizingChannel", "amplitude_damping": "AmplitudeDamping",
                 "dephasing": "PhaseDamping"}
READOUT = "readout"  # qml.BitFlip on every wire before measurement
COMPONENTS = (*GATE_CHANNELS, READOUT)
NOISE_HELP = ("Noise channels, COMPONENT=P[,...] in the order applied: depolarizing, amplitude_damping, dephasing "
              "(after every gate, on its wires), readout (a bit flip of every measured bit); each P in [0, 1]. "
              "E.g. depolarizing=0.01,readout=0.02")


@dataclass(frozen=True)
class NoiseModel:
    """An ordered set of noise components, each with its strength in [0, 1]; empty: no noise."""

    components: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, spec) -> NoiseModel:
        """``"depolarizing=0.01,readout=0.02"`` (or None, "" or a NoiseModel) -> NoiseModel; HeadError if bad."""
        if isinstance(spec, NoiseModel):
            return spec
        if spec is None or not str(spec).strip() or str(spec).strip() == "none":
            return cls()
        components, seen = [], set()
        for item in str(spec).split(","):
            name, value = _split_item(item, spec)
            if name in seen:
                raise HeadError(f"noise {spec!r}: {name} is given twice")
            seen.add(name)
            components.append((name, _strength(name, value, spec)))
        return cls(tuple(components))

    @property
    def spec(self) -> str:
        """The canonical text (what config.json records); "" without noise."""
        return ",".join(f"{name}={value:g}" for name, value in self.components)

    def __bool__(self) -> bool:
        return any(value > 0 for _, value in self.components)

    @property
    def gate_channels(self) -> tuple[tuple[str, float], ...]:
        """(PennyLane channel name, strength) placed after every gate, in order; zero strengths left out."""
        return tuple((GATE_CHANNELS[n], v) for n, v in self.components if n != READOUT and v > 0)

    @property
    def readout(self) -> float:
        return dict(self.components).get(READOUT, 0.0)

    def to_pennylane(self):
        """This noise as a ``qml.NoiseModel`` (None without noise): ``qml.add_noise(qnode, model)``."""
        if not self:
            return None
        import pennylane as qml

        channels = [(getattr(qml, name), value) for name, value in self.gate_channels]
        readout = self.readout

        def after_gate(op, **kwargs):
            for wire in op.wires:
                for channel, value in channels:
                    channel(value, wires=wire)

        def before_measurement(mp, **kwargs):
            for wire in mp.wires:
                qml.BitFlip(readout, wires=wire)

        any_gate = qml.BooleanFn(lambda op: True, "every gate")
        return qml.NoiseModel({any_gate: after_gate} if channels else {},
                              meas_map={qml.noise.meas_eq(qml.expval): before_measurement} if readout > 0 else None)


def _split_item(item: str, spec) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not value.strip():
        raise HeadError(f"noise {spec!r}: give COMPONENT=P, e.g. depolarizing=0.01 (components: {', '.join(COMPONENTS)})")
    if name not in COMPONENTS:
        raise HeadError(f"noise {spec!r}: unknown channel {name!r} (known: {', '.join(COMPONENTS)})")
    return name, value.strip()


def _strength(name: str, value: str, spec) -> float:
    try:
        number = float(value)
    except ValueError:
        raise HeadError(f"noise {spec!r}: {name}={value} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise HeadError(f"noise {spec!r}: {name}={value} is outside [0, 1]")
    return number


def parse_sweep(spec) -> tuple[str | None, list[NoiseModel]]:
    """``--noise`` of ``tlkit evaluate``: a comma list of values on one component sweeps it.

    ``"depolarizing=0,0.01,readout=0.02"`` -> ("depolarizing", [depolarizing=0 + readout, depolarizing=0.01
    + readout]). Without a list: (None, [the one model]). A list on two components is refused.
    """
    if spec is None or not str(spec).strip():
        return None, [NoiseModel()]
    groups: list[list[str]] = []
    for item in str(spec).split(","):
        if "=" in item or not groups:
            groups.append([item])
        else:
            groups[-1].append(item)
    swept = [g for g in groups if len(g) > 1]
    if len(swept) > 1:
        raise HeadError(f"noise {spec!r}: a list of values sweeps one component only")
    if not swept:
        return None, [NoiseModel.parse(spec)]
    name = _split_item(swept[0][0], spec)[0]
    first_value = swept[0][0].partition("=")[2]
    models = []
    for value in [first_value, *swept[0][1:]]:
        items = [f"{name}={value.strip()}" if g is swept[0] else ",".join(g) for g in groups]
        models.append(NoiseModel.parse(",".join(items)))
    return name, models

