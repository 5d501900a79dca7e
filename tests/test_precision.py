"""Stage one at reduced precision: bf16 / fp16 / int8 against fp32, the int8 rebuild, the CPU notes.

(Caches at each precision through the command line, resumed, merged, verified and predicted:
test_precision_caches.py; two files, so that two test workers share the slow bf16 passes of this CPU.)

Quality is asserted on a small real subset (26 photos) with two sets of weights: ``random``,
and a state-dict file whose BatchNorm statistics were measured on the photos (random
weights give activations no photo would; recalibrated statistics are what a trained
network has). The full-set table comes from bench/bench_precision.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from cli_helpers import assert_invoke_error, invoke
from tlkit.data import TransformSpec
from tlkit.data.discovery import discover
from tlkit.data.reader import read_batches
from tlkit.embed.backbone import build_backbone, fuse_batchnorm
from tlkit.embed.mapper import FeatureMapper
from tlkit.embed.precision import (
    PRECISIONS,
    Int8Calibration,
    Precision,
    PrecisionError,
    _FloatPool,
    _activation_observers,
    _prepare,
    _quant_engine,
    build_int8,
    build_published_int8,
    calibrate_int8,
    calibrate_on_images,
    calibration_sample,
    compare_features,
    device_for,
    speed_warning,
    check_speed,
    cpu_flags,
    FAST_ON_CPU,
)
from tlkit.weights import PRETRAINED, Weights, is_quantized_state_dict, load_quantized_state_dict
from tlkit.errors import WeightsError
from tlkit.heads.logreg import LogRegHead

CPU = torch.device("cpu")
QUIET = {"progress": False, "echo": lambda *_: None}


@pytest.fixture(scope="module")
def photos(hymenoptera_small):
    """The subset decoded once: (images, labels, splits, items)."""
    index = discover(hymenoptera_small)
    batches = list(read_batches([str(hymenoptera_small / it.path) for it in index.items], TransformSpec(), 32, 0, None))
    assert all(not b.errors for b in batches)
    images = torch.cat([b.images for b in batches])
    labels = np.array([index.class_names.index(it.class_name) for it in index.items])
    splits = np.array([it.split for it in index.items])
    return images, labels, splits, index.items


def bn_recalibrated(state_dict: dict, images: torch.Tensor) -> dict:
    """``state_dict`` with every BatchNorm's running statistics measured on ``images`` (one pass, exact averages)."""
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(state_dict)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch gives its exact statistics
    model.train()
    with torch.no_grad():
        model(images)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def weights(photos, tmp_path_factory):
    """name -> state dict: ``random``, and a state-dict ``file`` loaded through --weights PATH."""
    images, _, splits, _ = photos
    path = tmp_path_factory.mktemp("weights") / "bn-recalibrated.pt"
    torch.save(bn_recalibrated(Weights.random(0).load().state_dict, images[torch.from_numpy(splits == "train")]), path)
    return {"random": Weights.random(0).load().state_dict, "file": Weights.parse(str(path)).load().state_dict}


def features_of(mapper: FeatureMapper, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([mapper(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@pytest.fixture(scope="module")
def calibrations(photos, weights) -> dict[str, Int8Calibration]:
    """weights name -> int8 calibration on tlkit's sample of the training photos."""
    images, _, _, items = photos
    chosen = set(calibration_sample({"train": [it.path for it in items if it.split == "train"]}))
    sample = images[[i for i, it in enumerate(items) if it.path in chosen]]
    return {name: calibrate_int8(state_dict, [sample], "test: training photos") for name, state_dict in weights.items()}


@pytest.fixture(scope="module")
def embedded(photos, weights, calibrations):
    """(weights name, precision) -> features of the subset."""
    images = photos[0]
    out = {}
    for name, state_dict in weights.items():
        for precision in ("fp32", "bf16", "int8"):
            calibration = calibrations[name] if precision == "int8" else None
            out[name, precision] = features_of(FeatureMapper(state_dict, CPU, precision, calibration), images)
    return out


# -- the value type -----------------------------------------------------------------------------------------


def test_precision_names_and_cli_choices_agree():
    assert PRECISIONS == ("fp32", "bf16", "fp16", "int8")
    from tlkit.embed.cli import embed as embed_command

    option = next(p for p in embed_command.params if p.name == "precision")
    assert tuple(option.type.choices) == PRECISIONS and option.default == "fp32"
    with pytest.raises(PrecisionError, match="not one of"):
        Precision("fp64")
    assert Precision.parse("bf16") == Precision("bf16") and Precision.parse(Precision("int8")).name == "int8"


def test_fp32_is_bit_identical_to_the_network_before_precisions(weights):
    """fp32 caches must not change: the old mapper's network and call, written out, give the same bits."""
    state_dict = weights["file"]
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    old = fuse_batchnorm(build_backbone(state_dict)).to(device=CPU, memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = old(images.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
    got = FeatureMapper(state_dict, CPU)(images)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_fp16_off_cuda_is_one_line(hymenoptera_small, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 runs here")
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        Precision("fp16").check_device(CPU)
    result = invoke("embed", hymenoptera_small, tmp_path / "f.h5", "--weights", "random", "--precision", "fp16",
                    "--device", "cpu", "--no-progress")
    assert_invoke_error(result, "--precision fp16 needs a CUDA GPU")
    assert not (tmp_path / "f.h5").exists()


def test_int8_runs_on_the_cpu_and_auto_picks_it():
    with pytest.raises(PrecisionError, match="CPU only"):
        Precision("int8").check_device(torch.device("cuda"))
    assert device_for("int8", "auto") == "cpu"
    assert device_for("int8", "cpu") == "cpu" and device_for("bf16", "auto") == "auto"


def test_provenance_attrs_and_verify_tolerances():
    assert Precision("fp32").provenance_attrs() == {"precision": "fp32"}
    calibration = Int8Calibration("s", ("a", "b"), (0.5, 0.25), (0, 3), 0, 127)
    attrs = Precision("int8").provenance_attrs(calibration)
    assert attrs["precision"] == "int8"
    assert Int8Calibration.from_json(attrs["int8_calibration"]) == calibration
    assert attrs["int8_calibration_sha256"] == calibration.sha256
    assert Precision("fp32").verify_tolerance == 1e-4  # tlkit verify's tolerance, unchanged
    # Looser where another CPU may round differently (bf16), never as loose as the gap between
    # precisions (asserted below); int8's integers must agree exactly, as fp32's floats nearly do.
    assert Precision("int8").verify_tolerance == Precision("fp32").verify_tolerance < Precision("bf16").verify_tolerance


# -- quality against fp32 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["random", "file"])
def test_bf16_and_int8_features_agree_with_fp32(embedded, name):
    fp32 = embedded[name, "fp32"]
    bf16 = compare_features(fp32, embedded[name, "bf16"])
    int8 = compare_features(fp32, embedded[name, "int8"])
    assert bf16["min_cosine"] >= 0.999, bf16
    assert int8["mean_cosine"] >= 0.99, int8
    # Different precisions really are different numbers: a re-embedding check (verify --data)
    # at the same precision tolerates less than what separates these from fp32.
    assert bf16["max_abs_diff"] > Precision("bf16").verify_tolerance
    assert int8["max_abs_diff"] > Precision("int8").verify_tolerance


@pytest.mark.parametrize("name", ["random", "file"])
def test_linear_probe_accuracy_matches_fp32(embedded, photos, name):
    """The probe's accuracy at each precision equals fp32's to within one of the 10 validation photos.

    (One photo is 10 points here; the 1-point target is measured on the full set by bench_precision.)
    """
    _, labels, splits, _ = photos
    train, val = splits == "train", splits == "val"

    def accuracy(features):
        head = LogRegHead().fit(features[train], labels[train])
        return float((head.predict(features[val]) == labels[val]).mean())

    reference = accuracy(embedded[name, "fp32"])
    for precision in ("bf16", "int8"):
        assert abs(accuracy(embedded[name, precision]) - reference) <= 1 / val.sum() + 1e-9, precision


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_features_do_not_depend_on_the_batch_or_the_process(photos, weights, calibrations, embedded, precision):
    """What resume, incremental and Ray runs rely on: an image's features do not depend on its batch
    or on which mapper (process, shard) embeds it, given the same weights and calibration."""
    images = photos[0]
    state_dict = weights["file"]
    calibration = calibrations["file"] if precision == "int8" else None
    whole = embedded["file", precision]  # one mapper, batches of 32
    # a second mapper, built from a calibration that went through its stored (JSON) form, on the first 12
    # images in batches of 5, 5 and 2 (bf16 is emulated on a CPU without bf16 instructions: 0.7 s an image)
    stored = Int8Calibration.from_json(calibration.to_json()) if calibration else None
    pieces = features_of(FeatureMapper(state_dict, CPU, precision, stored), images[:12], batch_size=5)
    assert np.abs(whole[:12] - pieces).max() <= Precision(precision).verify_tolerance


# -- int8: the calibration and the network rebuilt from it ----------------------------------------------------


def quantized_state(model) -> dict:
    out = {}
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_quantized:
            out[key] = (value.int_repr(), value.q_per_channel_scales() if value.qscheme() in (
                torch.per_channel_affine, torch.per_channel_symmetric) else torch.tensor(value.q_scale()))
        else:
            out[key] = value
    return out


def test_int8_builds_from_the_stored_calibration_are_identical(photos, weights, calibrations):
    state_dict = weights["file"]
    calibration = calibrations["file"]
    text = calibration.to_json()
    assert Int8Calibration.from_json(text) == calibration  # exact: every float32 scale survives JSON
    first, second = build_int8(state_dict, Int8Calibration.from_json(text)), build_int8(state_dict, calibration)
    a, b = quantized_state(first), quantized_state(second)
    assert a.keys() == b.keys() and len(a) > 50
    for key in a:
        if isinstance(a[key], tuple):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
    images = photos[0][:4].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(first(images), second(images))


def test_stored_calibration_gives_the_network_calibration_itself_gives(photos, weights):
    """The stored numbers are all there is: rebuilding from them equals converting the calibrated network."""
    from torch.ao.quantization.quantize_fx import convert_fx

    state_dict = weights["random"]
    sample = photos[0][:8].contiguous(memory_format=torch.channels_last)
    prepared = _prepare(state_dict, "float")
    with _quant_engine(), torch.no_grad():
        prepared(sample)
        direct = _FloatPool(convert_fx(prepared))
    rebuilt = build_int8(state_dict, calibrate_int8(state_dict, [sample], "8 photos"))
    with torch.inference_mode():
        assert torch.equal(direct(photos[0]), rebuilt(photos[0]))


def test_calibration_records_its_sample_and_refuses_another_network(hymenoptera_small, photos, weights):
    state_dict = weights["random"]
    items = photos[3]
    calibration = calibrate_on_images(state_dict, hymenoptera_small, items, TransformSpec(), None)
    used = json.loads(calibration.sample.split(": ", 1)[1])
    assert used == calibration_sample({"train": [it.path for it in items if it.split == "train"]})
    assert all(p.startswith("train/") for p in used)
    assert len(calibration.observers) == len(calibration.scales) == len(_activation_observers(_prepare(state_dict, "float")))
    broken = Int8Calibration.from_json(calibration.to_json().replace('"activation_post_process_0"', '"elsewhere"'))
    with pytest.raises(PrecisionError, match="does not fit this network"):
        build_int8(state_dict, broken)
    with pytest.raises(PrecisionError, match="unreadable"):
        Int8Calibration.from_json("{}")
    with pytest.raises(PrecisionError, match="needs a calibration"):
        Precision("int8").build(state_dict, CPU)


def test_the_average_pool_runs_in_float_and_old_calibrations_keep_their_quantized_pool(photos, weights, calibrations):
    """int8 features are means of 49 dequantized values, not whole multiples of the last activation's
    scale as with a quantized pool, and land closer to fp32; a calibration stored before the float
    pool (no "pool" in its JSON) keeps its text, its sha256 and the network it was made with."""
    from dataclasses import replace

    state_dict, calibration = weights["file"], calibrations["file"]
    images = photos[0]
    assert calibration.pool == "float" and json.loads(calibration.to_json())["pool"] == "float"
    old_text = json.dumps({k: v for k, v in json.loads(calibration.to_json()).items() if k != "pool"},
                          sort_keys=True, separators=(",", ":"))
    old = Int8Calibration.from_json(old_text)
    assert old.pool == "int8" and old.to_json() == old_text and old == replace(calibration, pool="int8")
    new_features = features_of(FeatureMapper(state_dict, CPU, "int8", calibration), images)
    old_features = features_of(FeatureMapper(state_dict, CPU, "int8", old), images)
    last_scale = calibration.scales[-1]  # layer4's output, which the quantized pool kept
    steps = old_features / last_scale
    assert np.abs(steps - np.round(steps)).max() < 1e-3  # the quantized pool: whole steps only
    fine = new_features / last_scale
    assert np.mean(np.abs(fine - np.round(fine)) > 0.01) > 0.5  # the float pool: between the steps
    fp32 = features_of(FeatureMapper(state_dict, CPU, "fp32"), images)
    assert compare_features(fp32, new_features)["mean_cosine"] > compare_features(fp32, old_features)["mean_cosine"]
    with pytest.raises(PrecisionError, match="unknown pool"):
        build_int8(state_dict, replace(calibration, pool="int4"))


def test_calibration_sample_depends_on_the_names_only():
    paths = {"train": [f"train/c{k % 2}/{k}.jpg" for k in range(100)], "val": [f"val/c0/{k}.jpg" for k in range(50)]}
    sample = calibration_sample(paths)
    assert len(sample) == 32 and len(set(sample)) == 32 and all(p.startswith("train/") for p in sample)
    assert calibration_sample({"val": paths["val"], "train": paths["train"][::-1]}) == sample
    assert {p.split("/")[1] for p in sample} == {"c0", "c1"}  # spread over the classes
    assert all(p.startswith("val/") for p in calibration_sample({"val": paths["val"]}))  # no train split: all


# -- int8 with torchvision's published quantized weights ------------------------------------------------------


def test_published_int8_weights_are_a_variant_in_the_one_registry():
    source = PRETRAINED["imagenet"].int8
    assert source.enum == "ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1" and source.quantized
    assert source.url.endswith(f"_{source.sha256_prefix}.pth") and len(source.sha256_prefix) >= 8
    assert PRETRAINED["imagenet"].sha256_prefix == "f37072fd"  # the fp32 file's, unchanged
    int8 = Weights.parse("imagenet").at_precision("int8")
    assert int8.id == "torchvision:ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1"
    assert Weights.from_id(int8.id) == int8 and int8.known and int8.entry is source
    assert Weights.parse("imagenet").at_precision("bf16") == Weights.parse("imagenet")
    assert Weights.random(3).at_precision("int8") == Weights.random(3)  # calibrated, not published


def test_published_int8_offline_fails_in_one_line(hymenoptera_small, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="offline"):
        Weights.parse("imagenet").at_precision("int8").load()
    result = invoke("embed", hymenoptera_small, tmp_path / "f.h5", "--precision", "int8", "--no-progress")
    line = assert_invoke_error(result, "ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1", "offline?", ignore=("note: ",))
    assert "ResNet18_Weights.IMAGENET1K_V1" not in line  # the int8 run never needs the fp32 file
    assert not (tmp_path / "f.h5").exists()


def test_published_int8_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = tmp_path / "torch" / "hub" / "checkpoints" / PRETRAINED["imagenet"].int8.file_name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the published weights")
    with pytest.raises(WeightsError, match="does not match the sha256 prefix"):
        Weights.parse("imagenet").at_precision("int8").load()


def test_published_int8_state_dict_loads_and_builds_losslessly(tmp_path):
    """The load-and-build path, with a quantized ResNet-18 of the published kind written here."""
    from torchvision.models.quantization import resnet18 as quantizable_resnet18

    torch.manual_seed(0)
    with _quant_engine():
        original = quantizable_resnet18(weights=None, quantize=True)
    path = tmp_path / "resnet18_fbgemm_test.pth"
    torch.save(original.state_dict(), path)
    state_dict = load_quantized_state_dict(path)  # weights_only=True, as for any downloaded file
    assert is_quantized_state_dict(state_dict) and not is_quantized_state_dict(Weights.random(0).load().state_dict)
    mapper = FeatureMapper(state_dict, CPU, "int8")  # no calibration: the numbers come with the weights
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    features = mapper(images)
    original.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = original(images).numpy()
    assert features.shape == (2, 512) and features.dtype == np.float32
    np.testing.assert_array_equal(features, expected)
    torch.save(Weights.random(0).load().state_dict, tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="not a quantized"):
        load_quantized_state_dict(tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="do not fit"):
        build_published_int8({k: v for k, v in state_dict.items() if not k.startswith("layer4")})


# -- the CPU notes -------------------------------------------------------------------------------------------


def test_speed_warning_names_the_missing_instructions():
    plain_avx2 = {"sse4_2", "avx2", "fma"}
    bf16 = speed_warning("bf16", CPU, plain_avx2)
    int8 = speed_warning("int8", CPU, plain_avx2)
    assert bf16 and "avx512_bf16 or amx_bf16" in bf16 and "\n" not in bf16
    assert int8 and "avx512_vnni or avx_vnni" in int8 and "\n" not in int8
    assert speed_warning("bf16", CPU, plain_avx2 | {"avx512_bf16"}) is None
    assert speed_warning("bf16", CPU, plain_avx2 | {"amx_bf16"}) is None
    assert speed_warning("int8", CPU, plain_avx2 | {"avx_vnni"}) is None
    assert speed_warning("fp32", CPU, plain_avx2) is None
    assert speed_warning("int8", CPU, set()) is None  # cannot tell: say nothing
    # the expected cost and the faster choice are named
    assert "5x fp32's time" in bf16 and "--precision int8" in bf16 and "still the fastest choice" in int8


def test_a_precision_measured_several_times_slower_is_refused_unless_confirmed(hymenoptera_small, tmp_path):
    plain_avx2 = {"sse4_2", "avx2", "fma"}
    with pytest.raises(PrecisionError, match="pass --allow-slow"):
        check_speed("bf16", CPU, flags=plain_avx2)
    assert check_speed("bf16", CPU, allow_slow=True, flags=plain_avx2).startswith("note: ")
    assert check_speed("int8", CPU, flags=plain_avx2).startswith("note: ")  # slower kernels, still faster than fp32
    assert check_speed("bf16", CPU, flags=plain_avx2 | {"avx512_bf16"}) is None
    if not cpu_flags() & set(FAST_ON_CPU["bf16"]) and cpu_flags():  # this CPU: refused before any work, one line
        out = tmp_path / "bf16.h5"
        result = invoke("embed", hymenoptera_small, out, "--weights", "random", "--precision", "bf16", "--workers", "0")
        assert_invoke_error(result, "--precision bf16", "--allow-slow", "fp32")
        assert not out.exists() and not out.with_name(out.name + ".parts").exists()
