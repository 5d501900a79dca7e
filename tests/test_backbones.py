"""Stage one beyond resnet18's last block: --backbone, --layer, the typed provenance, old caches.

Random weights and a handful of real photos: what is checked is that the cache holds what the
named node of the named network gives (against torchvision's own ``create_feature_extractor``),
that the feature width flows through every reader, and that resnet18 caches written before
backbones were a choice stay valid.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from run_helpers import head_run

from cli_helpers import assert_invoke_error, invoke
from conftest import make_subset, without_every_second_val_image
from tlkit.cache import load_cache
from tlkit.cache.reader import CONTENT_DIGEST_ATTR, content_digest
from tlkit.cache.schema import Provenance
from tlkit.data.transforms import TransformSpec
from tlkit.embed import embed
from tlkit.embed.backbones import Backbone, BackboneError
from tlkit.embed.precision import PrecisionError, compare_features
from tlkit.embed.recorded import recorded_weights
from tlkit.runs import RunConfig, read_config
from tlkit.weights import Weights

QUIET = {"progress": False, "echo": lambda *_: None}


@pytest.fixture(scope="module")
def photos(hymenoptera, tmp_path_factory):
    """Eight real photos: 2 per class in train and in val."""
    return make_subset(hymenoptera, tmp_path_factory.mktemp("bb_photos"), {"train": 2, "val": 2})


def _embed(data, out, **kw):
    kw.setdefault("weights", "random")
    return embed(data, out, batch_size=4, workers=0, **QUIET, **kw)


def _direct(name: str, node: str, data, spec: TransformSpec, paths) -> np.ndarray:
    """The same model and weights through torchvision's create_feature_extractor, pooled by hand."""
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(Weights.random(0).load(backbone=name).state_dict)
    extractor = create_feature_extractor(model.eval(), return_nodes={node: "out"})
    transform = spec.build()
    images = torch.stack([transform(spec.load(data / p, None)) for p in paths])
    with torch.no_grad():
        out = extractor(images)["out"]
    if out.ndim == 4:
        out = out.mean(dim=(2, 3))  # global average pool (a 1 x 1 map: the same values)
    elif out.ndim == 3:
        out = out.mean(dim=1)  # tokens
    return out.flatten(1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name, layer, node, dim, pooling", [
    ("resnet50", None, "avgpool", 2048, "none"),
    ("efficientnet_b0", None, "avgpool", 1280, "none"),
    ("vit_b_16", None, "getitem_5", 768, "none"),  # the class token the head reads
    ("resnet18", "layer3", "layer3", 256, "avg"),
])
def test_features_equal_a_direct_forward_of_the_same_node(photos, tmp_path, name, layer, node, dim, pooling):
    out = tmp_path / f"{name}.h5"
    _embed(photos, out, backbone=name, layer=layer)
    cache = load_cache(out)
    p = cache.provenance
    assert (p.backbone, p.layer, p.pooling, p.feature_dim) == (name, node, pooling, dim)
    spec = TransformSpec.from_json(p.transform)
    stored = np.concatenate([cache[split].features for split in ("train", "val")])
    assert stored.shape == (8, dim)
    paths = [p for split in ("train", "val") for p in cache[split].paths.tolist()]
    reference = _direct(name, node, photos, spec, paths)  # one model for both splits (ViT-B: 1.3 s to initialise)
    assert compare_features(reference, stored)["min_cosine"] > 0.9999


def test_batchnorm_is_folded_only_where_a_graph_has_one():
    """fx's re-trace is for folding BatchNorm; a graph without one (ViT) keeps its modules and their fast paths."""
    from tlkit.embed.backbones import _fused

    no_batchnorm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    assert _fused(no_batchnorm) is no_batchnorm
    with_batchnorm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    fused = _fused(with_batchnorm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), with_batchnorm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_timm_feature_index_equals_forward_intermediates(photos, tmp_path):
    timm = pytest.importorskip("timm")
    out = tmp_path / "timm.h5"
    _embed(photos, out, backbone="timm:resnet18", layer="-2")
    cache = load_cache(out)
    assert (cache.provenance.layer, cache.provenance.pooling, cache.provenance.feature_dim) == ("3", "avg", 256)
    model = timm.create_model("resnet18", pretrained=False)
    model.load_state_dict(Weights.random(0).load(backbone="timm:resnet18").state_dict)
    spec = TransformSpec.from_json(cache.provenance.transform)
    assert spec.interpolation == "bicubic"  # timm's own config, not torchvision's
    paths = cache["val"].paths.tolist()
    images = torch.stack([spec.build()(spec.load(photos / p, None)) for p in paths])
    with torch.no_grad():
        reference = model.eval().forward_intermediates(images, indices=[3], intermediates_only=True)[0].mean(dim=(2, 3))
    assert compare_features(reference.numpy(), cache["val"].features)["min_cosine"] > 0.9999


def test_resnet18_default_is_the_network_tlkit_always_ran(photos, tmp_path):
    """--layer avgpool names the default; the network is build_backbone with BatchNorm folded, bit for bit."""
    from tlkit.embed.backbone import build_backbone, fuse_batchnorm

    assert Backbone.parse("resnet18", "avgpool").is_legacy and Backbone.parse().is_legacy
    assert Backbone().transform() == TransformSpec()  # ResNet18_Weights.DEFAULT's transform: the one every cache records
    state = Weights.random(0).load().state_dict
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(Backbone().network(state)(images), fuse_batchnorm(build_backbone(state))(images))


def test_a_state_dict_trained_for_another_class_count_loads_into_any_backbone():
    """Its classifier (the last nn.Linear) is dropped before loading: a size clash there is no error; the body is loaded."""
    import torchvision

    from tlkit.errors import WeightsError

    for name in ("resnet18", "mobilenet_v3_small"):
        trained = torchvision.models.get_model(name, num_classes=2).state_dict()
        model = Backbone.parse(name).model(trained)
        body = {k: v for k, v in model.state_dict().items() if not k.startswith(("fc.", "classifier.3."))}
        assert all(torch.equal(v, trained[k]) for k, v in body.items())
    with pytest.raises(WeightsError, match="missing"):
        Backbone.parse("resnet18").model({"fc.weight": torch.zeros(2, 512)})


# -- old caches ---------------------------------------------------------------------------------------------


def _as_old_layout(path):
    """A resnet18 cache as tlkit wrote it before backbones: no pooling or views attribute."""
    with h5py.File(path, "r+") as f:
        for name in ("pooling", "views"):  # views: absent anyway where a cache has none
            if name in f.attrs:
                del f.attrs[name]
        f.attrs[CONTENT_DIGEST_ATTR] = content_digest(f)


def test_an_old_resnet18_cache_loads_resumes_and_merges(photos, tmp_path):
    whole = tmp_path / "whole.h5"
    _embed(photos, whole)
    new = load_cache(whole).provenance
    first = tmp_path / "data"
    later = without_every_second_val_image(photos, first)
    old = tmp_path / "old.h5"
    _embed(first, old)
    _as_old_layout(old)
    with h5py.File(old, "r") as f:
        assert "pooling" not in f.attrs and "views" not in f.attrs
    read = load_cache(old).provenance
    assert (read.backbone, read.layer, read.pooling, read.view_count, read.precision) == ("resnet18", "avgpool", "none", 0, "fp32")
    assert read.feature_space_mismatch(new) == []
    assert invoke("verify", old).exit_code == 0
    merged = tmp_path / "merged.h5"
    result = invoke("merge", merged, old, whole)
    assert result.exit_code == 0, result.output
    assert load_cache(merged).provenance.feature_space_mismatch(new) == []
    result = _embed(photos, old)  # incremental: the old cache takes the missing images
    assert result.embedded == len(later)
    np.testing.assert_array_equal(load_cache(old)["val"].features, load_cache(whole)["val"].features)


def test_an_old_run_folder_reads_its_provenance_as_the_type(tmp_path):
    """Runs record Provenance.as_dict(); old ones lack precision, pooling, views: read as fp32, none, 0."""
    recorded = {"backbone": "resnet18", "layer": "avgpool", "weights_id": "random:seed=0", "weights_sha256": "0" * 64,
                "transform": json.loads(TransformSpec().to_json()), "feature_dim": 512, "tlkit_version": "0.1.0",
                "torch_version": "2", "torchvision_version": "0", "created": "2026-01-01", "data_root": "/d"}
    config = RunConfig.from_json({"kind": "head", "class_names": ["a", "b"], "head": "linear", "cache_provenance": recorded})
    p = config.part.cache_provenance
    assert isinstance(p, Provenance) and (p.precision, p.pooling, p.view_count) == ("fp32", "none", 0)
    assert p.transform == TransformSpec().to_json()
    assert config.describe_features() == "frozen ResNet-18 features (random:seed=0)"
    back = config.to_json()["cache_provenance"]
    assert back == p.as_dict() and back["transform"] == recorded["transform"]


# -- any width through stage two, mixing refused, names checked ------------------------------------------------


@pytest.fixture(scope="module")
def layer3_cache(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("bb_l3") / "l3.h5"
    _embed(photos, out, backbone="resnet18", layer="layer3")
    return out


@pytest.mark.slow
def test_a_256_d_cache_trains_reports_and_predicts(photos, layer3_cache, tmp_path_factory):
    assert invoke("verify", layer3_cache, "--data", photos, "--sample", "3").exit_code == 0
    run_dir = head_run(tmp_path_factory, layer3_cache, "logreg")
    config = read_config(run_dir)
    assert config.part.cache_provenance.feature_dim == 256 and config.part.n_features == 256
    assert "resnet18 layer3" in config.describe_features()
    result = invoke("predict", run_dir, photos / "val", "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["predictions"]) == 4
    report = invoke("report", run_dir, "--out", tmp_path_factory.mktemp("bb_report"))
    assert report.exit_code == 0, report.output


def test_mixing_backbones_or_layers_is_refused_with_one_line(photos, layer3_cache, tmp_path):
    out = tmp_path / "l3.h5"
    shutil.copy(layer3_cache, out)
    before = load_cache(out)["train"].features
    result = invoke("embed", photos, out, "--weights", "random", "--workers", "0", "--no-progress")
    assert_invoke_error(result, "another feature space", "layer: avgpool vs layer3")
    np.testing.assert_array_equal(load_cache(out)["train"].features, before)
    default = tmp_path / "r18.h5"
    _embed(photos, default)
    result = invoke("merge", tmp_path / "merged.h5", default, layer3_cache)
    assert_invoke_error(result, "layer: ", "pooling: ")
    assert not (tmp_path / "merged.h5").exists()


def test_unknown_names_list_the_closest_valid_ones(photos, tmp_path):
    out = tmp_path / "x.h5"
    line = assert_invoke_error(invoke("embed", photos, out, "--backbone", "resnet5", "--weights", "random"), "closest:")
    assert "resnet50" in line
    line = assert_invoke_error(invoke("embed", photos, out, "--layer", "layer9", "--weights", "random"), "closest:")
    assert "layer4" in line
    with pytest.raises(BackboneError, match="closest: .*resnet18"):
        Backbone.parse("timm:resnt18")
    with pytest.raises(BackboneError, match="feature index"):
        Backbone.parse("timm:resnet18", "layer3").features()
    assert not out.exists()


def test_list_backbones_and_layers(photos):
    result = invoke("embed", "--list-backbones")
    names = result.stdout.split()
    assert result.exit_code == 0 and {"resnet18", "resnet50", "vit_b_16", "convnext_tiny"} <= set(names)
    result = invoke("embed", "--list-layers", "--backbone", "resnet18")
    assert result.exit_code == 0
    assert "avgpool\t(N, 512, 1, 1)" in result.stdout and "layer3.1.relu_1\t(N, 256, 14, 14)" in result.stdout
    assert "default: avgpool, 512-d" in result.stdout


def test_recorded_weights_follow_the_recorded_backbone(layer3_cache):
    """verify and predict resolve a random cache's weights on the backbone it records, checked by sha256."""
    p = load_cache(layer3_cache).provenance
    assert recorded_weights(p).sha256 == p.weights_sha256
    other = Provenance.from_attrs({**p.to_attrs(), "backbone": "resnet34"})
    with pytest.raises(Exception, match="not the weights the features were made with"):
        recorded_weights(other)


def test_int8_other_backbones_run_or_refuse_with_one_line(photos, tmp_path):
    out = tmp_path / "r18l3-int8.h5"
    _embed(photos, out, backbone="resnet18", layer="layer3", precision="int8")
    fp32 = tmp_path / "r18l3.h5"
    _embed(photos, fp32, backbone="resnet18", layer="layer3")
    cmp = compare_features(load_cache(fp32)["val"].features, load_cache(out)["val"].features)
    assert cmp["mean_cosine"] > 0.99, cmp


def test_int8_refuses_a_graph_fx_cannot_quantize_with_one_line(photos, tmp_path, monkeypatch):
    class DataDependent(torch.nn.Module):  # control flow on values: torch.fx cannot trace it
        def forward(self, x):
            return x.mean(dim=(2, 3)) if x.sum() > 0 else -x.mean(dim=(2, 3))

    monkeypatch.setattr(Backbone, "body", lambda self, model: DataDependent())
    out = tmp_path / "int8.h5"
    with pytest.raises(PrecisionError, match="cannot quantize resnet18 at layer layer3") as info:
        _embed(photos, out, backbone="resnet18", layer="layer3", precision="int8")
    assert "\n" not in str(info.value) and not out.exists()
