"""Feature extraction, the Inception-v3 wrapper (with a stand-in torch-fidelity) and references."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from scoresde.jobs.evaluation.features import (
    EvaluationError,
    FeatureExtractor,
    MissingDependencyError,
    extract_features,
)
from scoresde.jobs.evaluation.inception import (
    INCEPTION_WEIGHTS_URL,
    InceptionV3Features,
    to_uint8_rgb,
)
from scoresde.jobs.evaluation.metrics import feature_statistics
from scoresde.jobs.evaluation.reference import load_reference, save_reference

INCEPTION_MODULE = "torch_fidelity.feature_extractor_inceptionv3"


class TinyFeatures:
    """A test extractor: per-channel mean and max through a fixed random linear map.

    ``features = [mean_c, max_c] @ proj`` ``(B, num_features)``; ``logits = features @ head``.
    """

    name = "tiny"

    def __init__(self, num_features: int = 4, num_classes: int = 3, channels: int = 3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.num_features = num_features
        self.proj = torch.randn(2 * channels, num_features, generator=g).requires_grad_()
        self.head = torch.randn(num_features, num_classes, generator=g)
        self.batch_sizes: list[int] = []
        self.grad_enabled: list[bool] = []

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batch_sizes.append(images.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        pooled = torch.cat([images.mean(dim=(2, 3)), images.amax(dim=(2, 3))], dim=1)
        features = pooled @ self.proj
        return {"features": features, "logits": features @ self.head}


def _images(n: int, c: int = 3, h: int = 5, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# ---- extract_features ---------------------------------------------------------------------


def test_tiny_features_satisfies_the_protocol():
    assert isinstance(TinyFeatures(), FeatureExtractor)


def test_extract_features_batches_under_no_grad_and_concatenates_on_cpu():
    images = _images(10)
    tiny = TinyFeatures()
    out = extract_features(tiny, images, batch_size=4)
    assert tiny.batch_sizes == [4, 4, 2]
    assert tiny.grad_enabled == [False, False, False]
    assert set(out) == {"features", "logits"}
    assert out["features"].shape == (10, 4) and out["logits"].shape == (10, 3)
    assert out["features"].dtype == torch.float32 and out["features"].device.type == "cpu"
    assert not out["features"].requires_grad
    with torch.no_grad():
        whole = TinyFeatures()(images)
    torch.testing.assert_close(out["features"], whole["features"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["logits"], whole["logits"], rtol=0, atol=1e-6)


def test_extract_features_rejects_bad_input():
    tiny = TinyFeatures()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        extract_features(tiny, torch.rand(3, 5, 5))
    with pytest.raises(ValueError, match="float"):
        extract_features(tiny, torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(tiny, _images(2), batch_size=0)
    with pytest.raises(EvaluationError, match="no images"):
        extract_features(tiny, torch.rand(0, 3, 4, 4))
    tiny.num_features = 5  # claims 5 but gives 4
    with pytest.raises(EvaluationError, match=r"expected \(2, 5\)"):
        extract_features(tiny, _images(2))


# ---- InceptionV3Features with a stand-in torch-fidelity -----------------------------------


@pytest.fixture
def fake_fidelity(monkeypatch):
    """Install a stand-in ``torch_fidelity``; returns the list of networks it builds.

    Its ``FeatureExtractorInceptionV3`` records the weights path, whether the file existed,
    and loads it with ``weights_only=True``; ``forward`` takes uint8 ``(B, 3, H, W)``, records
    it, and returns features ``(B, 2048)`` (the per-channel means, tiled) and logits
    ``(B, 1008)`` (the first 1008 features plus ``fc.bias.sum()``).
    """
    built: list[torch.nn.Module] = []

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            self.init_args = (name, list(features_list))
            self.path = Path(feature_extractor_weights_path)
            self.path_existed = self.path.is_file()
            self.state = torch.load(self.path, weights_only=True)
            if "fc.bias" not in self.state:
                raise RuntimeError(
                    "Error(s) in loading state_dict for FakeInception:\n\tMissing key(s): fc.bias"
                )
            self.inputs: list[torch.Tensor] = []
            built.append(self)

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
            self.inputs.append(x.clone())
            features = x.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048]
            return features, features[:, :1008] + self.state["fc.bias"].sum()

    package = types.ModuleType("torch_fidelity")
    module = types.ModuleType(INCEPTION_MODULE)
    module.FeatureExtractorInceptionV3 = FakeInception
    package.feature_extractor_inceptionv3 = module
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    monkeypatch.setitem(sys.modules, INCEPTION_MODULE, module)
    return built


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"conv.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(5, generator=g)}


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_inception_hands_torch_fidelity_a_verified_temporary_copy(fake_fidelity, tmp_path, suffix):
    user = tmp_path / "user" / f"inception{suffix}"
    user.parent.mkdir()
    weights = _weights()
    if suffix == ".pth":
        torch.save(weights, user)
    else:
        save_file(weights, str(user))
    extractor = InceptionV3Features(user, device="cpu")
    (network,) = fake_fidelity
    assert network.init_args == ("inception-v3-compat", ["2048", "logits_unbiased"])
    assert network.path_existed
    assert network.path.resolve() != user.resolve()
    assert user.parent.resolve() not in network.path.resolve().parents
    assert not network.path.exists()  # the private copy is gone after construction
    assert user.is_file()
    _assert_same_tensors(network.state, weights)
    assert extractor.network is network and extractor.device == torch.device("cpu")
    assert (extractor.name, extractor.num_features) == ("inception-v3-compat", 2048)


def _mark(message: str) -> list[str]:
    UNPICKLED.append(message)
    return UNPICKLED


UNPICKLED: list[str] = []


class _Sneaky:
    def __reduce__(self):
        return (_mark, ("unpickled code ran",))


def test_inception_refuses_a_pickled_object(fake_fidelity, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.bias": torch.zeros(2), "payload": _Sneaky()}, path)
    with pytest.raises(EvaluationError, match=r"weights_only=True") as info:
        InceptionV3Features(path)
    assert "\n" not in str(info.value)
    assert UNPICKLED == []
    assert fake_fidelity == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"fc.bias": torch.zeros(2), "meta": {"epoch": 3}}, "entry 'meta' is a dict"),
        ([torch.zeros(2)], "holds a list"),
    ],
)
def test_inception_refuses_files_that_are_not_flat_tensor_dicts(
    fake_fidelity, tmp_path, content, message
):
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(EvaluationError, match=message) as info:
        InceptionV3Features(path)
    assert "\n" not in str(info.value)
    assert fake_fidelity == []


def test_inception_wrong_weights_give_one_line_error(fake_fidelity, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(2)}, str(path))
    with pytest.raises(EvaluationError, match="does not hold torch-fidelity's") as info:
        InceptionV3Features(path)
    assert "\n" not in str(info.value) and "Missing key(s)" not in str(info.value)


@pytest.mark.parametrize("weights", ["", "missing.pth"])
def test_inception_missing_weights_say_how_to_get_them(monkeypatch, tmp_path, weights):
    # The file is checked before torch-fidelity is imported: its message comes first.
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    path = str(tmp_path / weights) if weights else ""
    with pytest.raises(FileNotFoundError) as info:
        InceptionV3Features(path)
    message = str(info.value)
    assert INCEPTION_WEIGHTS_URL in message and "eval.inception_weights=PATH" in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert "\n" not in message


class _BrokenTorchvision(types.ModuleType):
    def __getattr__(self, name):
        raise RuntimeError("operator torchvision::nms does not exist")


@pytest.mark.parametrize("failure", ["absent", "broken torchvision"])
def test_inception_without_torch_fidelity_says_what_to_install(monkeypatch, tmp_path, failure):
    path = tmp_path / "w.safetensors"
    save_file(_weights(), str(path))
    if failure == "absent":
        monkeypatch.setitem(sys.modules, "torch_fidelity", None)
        monkeypatch.delitem(sys.modules, INCEPTION_MODULE, raising=False)
    else:
        monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
        monkeypatch.setitem(sys.modules, INCEPTION_MODULE, _BrokenTorchvision(INCEPTION_MODULE))
    with pytest.raises(MissingDependencyError) as info:
        InceptionV3Features(path)
    message = str(info.value)
    assert message.startswith(
        "FID/IS/KID with Inception-v3 need torch-fidelity and a torchvision matching your torch: "
        'pip install "scoresde[fid]"'
    )
    assert "\n" not in message
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)


def test_inception_quantises_to_uint8_and_repeats_grey(fake_fidelity, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_weights(), path)
    extractor = InceptionV3Features(path)
    (network,) = fake_fidelity
    values = [-0.1, 0.0, 0.2 / 255, 0.6 / 255, 0.5, 254.4 / 255, 1.0, 1.2]
    images = torch.tensor(values).reshape(1, 1, 2, 4).repeat(1, 3, 1, 1)
    images[:, 1] = 1 - images[:, 1]
    expected = torch.tensor([0, 0, 0, 1, 128, 254, 255, 255], dtype=torch.uint8).reshape(2, 4)
    out = extractor(images)
    sent = network.inputs[-1]
    assert sent.dtype == torch.uint8 and sent.shape == (1, 3, 2, 4)
    assert torch.equal(sent[0, 0], expected) and torch.equal(sent[0, 2], expected)
    assert torch.equal(sent[0, 1], torch.tensor([255, 255, 255, 254, 128, 1, 0, 0]).reshape(2, 4))
    assert out["features"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
    assert out["features"].dtype == torch.float32
    assert out["features"][0, 0].item() == pytest.approx(expected.float().mean().item())

    grey = torch.tensor([[0.0, 0.25], [0.75, 1.0]]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    out = extractor(grey)
    sent = network.inputs[-1]
    assert sent.shape == (2, 3, 2, 2)
    for c in range(3):
        assert torch.equal(sent[:, c], torch.tensor([[0, 64], [191, 255]]).repeat(2, 1, 1))
    assert out["features"][:, :3].tolist() == [[127.5] * 3] * 2

    via_batches = extract_features(extractor, _images(5, h=3, w=3), batch_size=2)
    assert via_batches["features"].shape == (5, 2048) and via_batches["logits"].shape == (5, 1008)


def test_to_uint8_rgb_rejects_bad_images():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_uint8_rgb(torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="float"):
        to_uint8_rgb(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_rgb(torch.full((1, 3, 2, 2), float("nan")))


def _real_inception_module():
    """torch-fidelity's Inception module; skip if absent or broken by a mismatched torchvision."""
    try:
        return importlib.import_module(INCEPTION_MODULE)
    except Exception as exc:  # a torchvision built for another torch raises RuntimeError
        pytest.skip(
            f"torch-fidelity (the 'fid' extra) cannot be imported here ({type(exc).__name__}); "
            'pip install "scoresde[fid]" to run this test'
        )


def test_inception_with_the_real_torch_fidelity_and_random_weights(monkeypatch, tmp_path):
    fidelity = _real_inception_module()
    network_class = fidelity.FeatureExtractorInceptionV3
    with monkeypatch.context() as patch:  # build it without weights, to get the real key set
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(network_class, "load_state_dict", lambda self, state: None)
        reference = network_class("inception-v3-compat", ["2048", "logits_unbiased"])
    weights = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / "random-inception.safetensors"
    save_file(weights, str(path))
    extractor = InceptionV3Features(path)
    images = _images(2, h=16, w=16)
    out = extractor(images)
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    with torch.no_grad():
        features, logits = reference((images * 255).round().to(torch.uint8))
    torch.testing.assert_close(out["features"], features)
    torch.testing.assert_close(out["logits"], logits)


# ---- reference statistics -----------------------------------------------------------------


def test_load_reference_mu_sigma_npz(tmp_path):
    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    path = tmp_path / "fid_stats.npz"
    np.savez(path, mu=mu, sigma=sigma)
    ref = load_reference(path, TinyFeatures(num_features=3))
    assert ref.features is None and ref.stats.num == 0
    assert ref.stats.mu.tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(ref.stats.sigma, torch.from_numpy(sigma))
    assert ref.stats.mu.dtype == torch.float64
    assert str(path) in ref.source and "mu, sigma" in ref.source


@pytest.mark.parametrize("key", ["pool_3", "features"])
def test_load_reference_activations_npz(tmp_path, key):
    rng = np.random.default_rng(0)
    activations = rng.standard_normal((20, 6)).astype(np.float32)
    path = tmp_path / "cifar10_stats.npz"
    np.savez(path, **{key: activations, "logits": rng.standard_normal((20, 10))})
    ref = load_reference(path, TinyFeatures(num_features=6))
    assert ref.features is not None and torch.equal(ref.features, torch.from_numpy(activations))
    expected = feature_statistics(torch.from_numpy(activations))
    assert torch.equal(ref.stats.mu, expected.mu) and torch.equal(ref.stats.sigma, expected.sigma)
    assert ref.stats.num == 20
    assert ref.source.endswith(f"[{key}]")


def test_load_reference_npz_errors(tmp_path):
    unknown = tmp_path / "unknown.npz"
    np.savez(unknown, arr_0=np.zeros(3), spatial=np.zeros((2, 2)))
    with pytest.raises(EvaluationError, match=r"holds \['arr_0', 'spatial'\]; expected 'mu'"):
        load_reference(unknown)

    wide = tmp_path / "wide.npz"
    np.savez(wide, pool_3=np.zeros((4, 6), dtype=np.float32))
    with pytest.raises(EvaluationError, match="6-dim features but extractor 'tiny' gives 4-dim"):
        load_reference(wide, TinyFeatures(num_features=4))

    objects = tmp_path / "objects.npz"
    np.savez(objects, mu=np.array([{"a": 1}], dtype=object), sigma=np.zeros((1, 1)))
    with pytest.raises(EvaluationError, match="cannot read reference"):
        load_reference(objects)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(EvaluationError, match=r"as an \.npz"):
        load_reference(garbage)

    with pytest.raises(FileNotFoundError, match=r"reference statistics .* not found") as info:
        load_reference(tmp_path / "absent.npz")
    assert "\n" not in str(info.value)


def _write_folder(folder: Path) -> torch.Tensor:
    """Four 5x4 images (one grey, one BMP) and a text file; returns the expected batch."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(3)]
    grey = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    Image.fromarray(rgb[0]).save(folder / "c.png")
    Image.fromarray(rgb[1]).save(folder / "a.png")
    Image.fromarray(rgb[2]).save(folder / "b.bmp")
    Image.fromarray(grey, mode="L").save(folder / "d.png")
    (folder / "notes.txt").write_text("not an image")
    ordered = [rgb[1], rgb[2], rgb[0], np.stack([grey] * 3, axis=-1)]  # a, b, c, d
    return torch.from_numpy(np.stack(ordered)).permute(0, 3, 1, 2).float() / 255


def test_load_reference_from_an_image_folder(tmp_path):
    expected_images = _write_folder(tmp_path / "real")
    tiny = TinyFeatures()
    ref = load_reference(tmp_path / "real", tiny, batch_size=3)
    assert tiny.batch_sizes == [3, 1]
    expected = extract_features(TinyFeatures(), expected_images)["features"]
    assert ref.features is not None
    torch.testing.assert_close(ref.features, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ref.stats.mu, feature_statistics(expected).mu, rtol=0, atol=1e-6)
    assert ref.stats.num == 4
    assert "4 images" in ref.source and "tiny" in ref.source


def test_load_reference_folder_errors(tmp_path):
    _write_folder(tmp_path / "real")
    with pytest.raises(EvaluationError, match="needs a feature extractor"):
        load_reference(tmp_path / "real")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(EvaluationError, match="holds no images"):
        load_reference(tmp_path / "empty", TinyFeatures())

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (4, 4)).save(mixed / "a.png")
    Image.new("RGB", (8, 4)).save(mixed / "b.png")
    with pytest.raises(EvaluationError, match=r"differ in size: a\.png is 4x4, b\.png is 8x4"):
        load_reference(mixed, TinyFeatures())


def test_save_and_load_reference_round_trip(tmp_path):
    features = extract_features(TinyFeatures(), _images(12))["features"]
    path = save_reference(tmp_path / "stats" / "ref.npz", features)
    assert path == tmp_path / "stats" / "ref.npz"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ref.npz"]
    with np.load(path) as archive:
        assert sorted(archive.files) == ["features", "mu", "sigma"]
        assert archive["mu"].dtype == np.float64 and archive["features"].dtype == np.float32
    ref = load_reference(path, TinyFeatures())
    expected = feature_statistics(features)
    assert torch.equal(ref.stats.mu, expected.mu) and torch.equal(ref.stats.sigma, expected.sigma)
    assert ref.features is not None and torch.equal(ref.features, features)
    assert ref.stats.num == 12


def test_save_reference_is_atomic(tmp_path, monkeypatch):
    path = save_reference(tmp_path / "ref.npz", torch.zeros(3, 2))
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        save_reference(path, torch.ones(3, 2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]
