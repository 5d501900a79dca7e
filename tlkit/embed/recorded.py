"""The network a cache's features came from, rebuilt from its provenance: one home for every reader.

``verify --data`` re-embeds a sample with it and ``predict`` runs a head's cache backbone with it,
so both must resolve the same thing the same way: the backbone and layer, the precision (with the
int8 calibration, checked by its sha256) and the weights (checked by the sha256 of their tensors).
A missing attribute means what :data:`tlkit.provenance.PROVENANCE_DEFAULTS` says (an old cache:
resnet18, fp32); that is decided when the provenance is read, not here.
"""

from __future__ import annotations

from tlkit.cache.schema import Provenance
from tlkit.embed.backbones import Backbone
from tlkit.embed.precision import Int8Calibration, Precision, PrecisionError
from tlkit.errors import WeightsError
from tlkit.weights import LoadedWeights, Weights


def as_provenance(provenance) -> Provenance:
    """A :class:`Provenance`, from itself or from a run folder's record of it (``as_dict``)."""
    return provenance if isinstance(provenance, Provenance) else Provenance.from_attrs(provenance or {}, lenient=True)


def recorded_backbone(provenance) -> Backbone:
    provenance = as_provenance(provenance)
    return Backbone.parse(provenance.backbone, provenance.layer)


def recorded_precision(provenance) -> tuple[Precision, Int8Calibration | None]:
    """The precision a cache records, and its int8 calibration if any (checked against its sha256)."""
    provenance = as_provenance(provenance)
    precision = Precision.parse(provenance.precision)
    text = provenance.int8_calibration
    calibration = Int8Calibration.from_json(text) if text else None
    if calibration is not None and calibration.sha256 != provenance.int8_calibration_sha256:
        raise PrecisionError("the stored int8 calibration does not match its recorded sha256: the cache was altered")
    return precision, calibration


def recorded_weights(provenance, weights_path=None) -> LoadedWeights:
    """The exact weights the features were embedded with, loaded and checked by sha256; one-line
    :class:`WeightsError` saying how to supply them otherwise.

    ``weights_path``: a state_dict file (needed when the cache was made from one); the named
    weights' published int8 variant is chosen as the embedding chose it.
    """
    provenance = as_provenance(provenance)
    wid = provenance.weights_id
    if weights_path is not None:
        chosen = Weights.parse(str(weights_path), backbone=provenance.backbone).at_precision(provenance.precision)
    else:
        try:
            chosen = Weights.from_id(wid)
        except WeightsError:
            raise WeightsError(f"the features were embedded with unknown weights {wid!r}; pass --weights PATH") from None
        if chosen.kind == "file":  # an id names the file, not where it is
            raise WeightsError(f"the features were embedded with the weights file {chosen.name}: "
                               "pass --weights PATH to that file")
        if not chosen.known:
            raise WeightsError(f"the features were embedded with weights {wid} that are not known to this tlkit; "
                               "pass --weights PATH to a state_dict file of them")
    loaded = chosen.load(backbone=provenance.backbone)
    if provenance.weights_sha256 and loaded.sha256 != provenance.weights_sha256:
        raise WeightsError(
            f"the weights {loaded.id} (sha256 {loaded.sha256[:12]}...) are not the weights the features were made with "
            f"({wid}, sha256 {provenance.weights_sha256[:12]}...)"
        )
    return loaded
