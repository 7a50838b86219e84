"""Properties of the set-of-sources attention: order invariance, duplicate sources, the
inspection maps, spatial reduction, and exportability of the per-frame path."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from iwarp import ExplicitFlowBaseline, ExplicitFlowConfig, ImplicitWarping, ImplicitWarpingConfig
from iwarp.explicit_flow import FlowSourceCache
from iwarp.implicit_warping import SourceCache

torch.set_num_threads(1)  # a shared 2-core CI box: 2 OpenMP threads under contention run 10-20x slower


def model(**overrides) -> ImplicitWarping:
    torch.manual_seed(0)
    return ImplicitWarping(ImplicitWarpingConfig.tiny(**overrides)).eval()


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("extra_kv", [True, False])
def test_permuting_sources_leaves_output_unchanged(extra_kv: bool) -> None:
    m = model(extra_kv=extra_kv)
    sources, driving = rand(2, 4, 3, 64, 64), rand(2, 3, 64, 64, seed=1)
    with torch.no_grad():
        ref = m(sources, driving).prediction
        for perm in ([3, 1, 0, 2], [1, 2, 3, 0]):
            torch.testing.assert_close(m(sources[:, perm], driving).prediction, ref, atol=1e-5, rtol=1e-5)
        # a different source set really changes the output (the test is not vacuous)
        other = m(rand(2, 4, 3, 64, 64, seed=5), driving).prediction
    assert (other - ref).abs().max() > 1e-3


def test_permutation_invariance_holds_in_training_mode_without_dropout() -> None:
    """GroupNorm (not BatchNorm) keeps sources independent even with batch statistics on."""
    m = model().train()
    sources, driving = rand(1, 3, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    torch.testing.assert_close(
        m(sources[:, [2, 0, 1]], driving).prediction, m(sources, driving).prediction, atol=1e-5, rtol=1e-5
    )


def test_duplicate_source_equals_single_source_without_extra_kv() -> None:
    m = model(extra_kv=False, attention_dropout=0.0)
    src, driving = rand(2, 1, 3, 64, 64), rand(2, 3, 64, 64, seed=1)
    with torch.no_grad():
        once = m(src, driving).prediction
        twice = m(src.repeat(1, 2, 1, 1, 1), driving).prediction
        thrice = m(src.repeat(1, 3, 1, 1, 1), driving).prediction
    torch.testing.assert_close(twice, once, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(thrice, once, atol=1e-5, rtol=1e-5)


def test_duplicate_source_differs_with_extra_kv() -> None:
    """With extra tokens a duplicated source takes more mass from them: the property is specific
    to extra K/V being off, as the paper's set formulation predicts."""
    m = model(extra_kv=True)
    src, driving = rand(1, 1, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    with torch.no_grad():
        once, twice = m(src, driving).prediction, m(src.repeat(1, 2, 1, 1, 1), driving).prediction
        a1 = m.source_attention(src, driving)[:, -1].mean()
        a2 = m.source_attention(src.repeat(1, 2, 1, 1, 1), driving)[:, -1].mean()
    assert (once - twice).abs().max() > 1e-6
    assert a2 < a1  # less attention left for the extra tokens


def test_attention_dropout_only_in_training() -> None:
    m = model(attention_dropout=0.5)
    src, driving = rand(1, 2, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    m.train()
    a, b = m(src, driving).prediction, m(src, driving).prediction
    assert (a - b).abs().max() > 1e-6  # dropout on the attention weights is active
    m.eval()
    torch.testing.assert_close(m(src, driving).prediction, m(src, driving).prediction)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("extra_kv", [True, False])
def test_source_attention_sums_to_one(k: int, extra_kv: bool) -> None:
    m = model(extra_kv=extra_kv)
    maps = m.source_attention(rand(2, k, 3, 64, 64), rand(2, 3, 64, 64, seed=1), chunk_size=7)
    assert maps.shape == (2, k + 1, 8, 8)
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 8, 8))
    assert (maps >= 0).all()
    if not extra_kv:
        assert maps[:, -1].abs().max() == 0


def test_source_attention_matches_explicit_attention() -> None:
    """The chunked inspection path computes the same weights the fused call uses: re-weighting
    the values with the chunked maps reproduces per-source attention sums."""
    m = model(extra_kv=False)
    sources, driving = rand(1, 2, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    cache = m.encode_sources(sources)
    _, q = m._queries(m.detect_keypoints(driving))
    logits = q @ cache.keys.transpose(1, 2) / m.config.qk_dim**0.5
    full = torch.softmax(logits, -1).reshape(1, 64, 2, 64).sum(-1)  # (B, L, k)
    maps = m.source_attention(sources, driving, chunk_size=10)
    torch.testing.assert_close(maps[:, :2].flatten(2).transpose(1, 2), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("spatial_reduction", [1, 2])
def test_source_mass_from_the_cache_equals_source_attention(k: int, spatial_reduction: int) -> None:
    """The per-frame `source_mass` (what serving exports) sums the attention per source through
    the cache's one-hot token places; it must equal the chunked inspection path."""
    m = model(extra_kv=True, spatial_reduction=spatial_reduction)
    sources, driving = rand(2, k, 3, 64, 64), rand(2, 3, 64, 64, seed=1)
    with torch.no_grad():
        mass = m.source_mass(m.encode_sources(sources), m.detect_keypoints(driving))
    torch.testing.assert_close(mass, m.source_attention(sources, driving, chunk_size=7), atol=1e-5, rtol=1e-5)


def test_source_attention_at_256_in_chunks() -> None:
    m = ImplicitWarping(ImplicitWarpingConfig.tiny(image_size=256)).eval()
    maps = m.source_attention(rand(1, 4, 3, 256, 256), rand(1, 3, 256, 256, seed=1), chunk_size=128)
    assert maps.shape == (1, 5, 32, 32)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, 32, 32))


def test_source_attention_channels_follow_source_order() -> None:
    """Channel i of the maps belongs to source i: swapping two sources swaps their maps."""
    m = model(extra_kv=False)
    driving = rand(1, 3, 64, 64, seed=1)
    maps = m.source_attention(torch.stack([driving, torch.zeros_like(driving)], 1), driving)
    swapped = m.source_attention(torch.stack([torch.zeros_like(driving), driving], 1), driving)
    torch.testing.assert_close(maps[:, 0], swapped[:, 1], atol=1e-5, rtol=1e-5)


def test_baseline_source_attention_sums_to_one() -> None:
    torch.manual_seed(0)
    m = ExplicitFlowBaseline(ExplicitFlowConfig.tiny()).eval()
    maps = m.source_attention(rand(2, 3, 3, 64, 64), rand(2, 3, 64, 64, seed=1))
    assert maps.shape == (2, 4, 16, 16)
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 16, 16))
    assert (maps >= 0).all()


def test_normal_path_uses_a_fused_kernel() -> None:
    """Eval-mode attention never takes PyTorch's math path (which materialises q x k)."""
    from torch.profiler import profile

    for cfg in (
        ImplicitWarpingConfig.tiny(),
        ImplicitWarpingConfig.tiny(residual=False, value_channels=[8, 16, 16, 40]),
    ):
        m = ImplicitWarping(cfg).eval()
        cache = m.encode_sources(rand(1, 3, 3, 64, 64))
        with torch.no_grad(), profile() as prof:
            m.animate(cache, rand(1, 3, 64, 64, seed=1))
        names = {e.key for e in prof.key_averages()}
        assert "aten::scaled_dot_product_attention" in names
        assert "aten::_scaled_dot_product_attention_math" not in names, names


def test_spatial_reduction_shrinks_the_cache_and_still_runs() -> None:
    full, reduced = model(), model(spatial_reduction=2)
    src, driving = rand(1, 2, 3, 64, 64), rand(1, 3, 64, 64, seed=1)
    c_full, c_red = full.encode_sources(src), reduced.encode_sources(src)
    extra = full.attention.num_extra  # the learned tokens sit at the end of the cache
    assert (c_red.keys.shape[1] - extra) * 4 == c_full.keys.shape[1] - extra == 2 * 64
    assert reduced.animate(c_red, driving).prediction.shape == (1, 3, 64, 64)
    maps = reduced.source_attention(src, driving)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, 8, 8))


def test_residual_and_extra_kv_switches_change_the_network() -> None:
    with_all, no_res = model(), model(residual=False)
    assert with_all.residual_mlp is not None and no_res.residual_mlp is None
    assert no_res.encode_sources(rand(1, 1, 3, 64, 64)).values.shape[-1] == no_res.value_dim
    assert model(extra_kv=False).attention.extra_keys is None


def _forced_attention(targets: torch.Tensor) -> tuple[ImplicitWarping, torch.Tensor, torch.Tensor]:
    """A one-source model whose query token i attends only to source token targets[i], with the
    decoder's mask at 1 (the output is the pixel output alone). Returns (model, source, output)."""
    m = model(extra_kv=False, qk_dim=64).eval()  # 8x8 tokens: one-hot keys need 64 channels
    one_hot = torch.eye(m.grid_size**2)[None]
    src = rand(1, 1, 3, 64, 64)
    cache = m.encode_sources(src)._replace(keys=one_hot)  # source token j has key e_j
    m._queries = lambda kp: (one_hot, one_hot[:, targets] * 1e3)  # query i matches key targets[i]
    torch.nn.init.zeros_(m.decoder.mask_head.weight)
    torch.nn.init.constant_(m.decoder.mask_head.bias, 1e4)
    with torch.no_grad():
        return m, src[:, 0], m.animate(cache, src[:, 0]).prediction


def test_pixel_output_copies_the_source_when_every_query_attends_to_its_own_place() -> None:
    _, src, out = _forced_attention(torch.arange(64))
    torch.testing.assert_close(out, src, atol=1e-5, rtol=0)


def test_pixel_output_moves_the_source_where_the_attention_points() -> None:
    """Each query attends one token (8 px) to its right: the output is the source moved 8 px left."""
    idx = torch.arange(64).reshape(8, 8)
    targets = torch.where(idx % 8 < 7, idx + 1, idx).flatten()  # the last column keeps its own token
    _, src, out = _forced_attention(targets)
    torch.testing.assert_close(out[..., :48], src[..., 8:56], atol=1e-5, rtol=0)
    assert (out[..., :48] - src[..., :48]).abs().mean() > 0.1  # not a copy


def test_region_selection_takes_each_half_from_one_source() -> None:
    """Two sources with noisy per-token attention mass, source 0 ahead on the left half and source
    1 on the right: per token ("token") the sources are mixed everywhere, per region each half
    comes from one source (the cure for ghosting, bench/ghosting.py)."""
    mass = 0.5 + 0.3 * (rand(1, 2, 8, 8, seed=7) - 0.5)
    mass[:, 0, :, :4] += 0.1
    mass[:, 1, :, 4:] += 0.1

    def weights(selection: str) -> torch.Tensor:
        m = model(source_selection=selection, selection_window=0.6)
        gain = m.config.selection_gain if selection == "region" else 1.0
        return torch.softmax(4.0 * gain * m.selection_scores(mass, (8, 8)), dim=1)

    region, token = weights("region"), weights("token")
    assert region[0, 0, :, :2].min() > 0.95 and region[0, 1, :, 6:].min() > 0.95  # away from the seam
    assert token[0, 0, :, :2].min() < 0.6 and token[0, 1, :, 6:].min() < 0.6  # mixed per token


def test_mode_sampling_picks_one_place_when_the_attention_is_split() -> None:
    """A query attending half to token 0 and half to token 7 of a row: the mean lands between the
    two (the issue's hypothesis for ghosts), the mode window keeps one of them."""
    m = model(mode_window=1)
    weights = torch.zeros(1, 1, m.grid_size**2 + m.attention.num_extra)
    weights[0, 0, [0, 7]] = 0.5
    _, centre = m._mode_centres(weights, 1)
    torch.testing.assert_close(centre[0, 0, 0], m.key_xy[0])
    mean = (weights[0, 0, :64, None] * m.key_xy).sum(0)
    assert abs(float(mean[0])) < 1e-6  # halfway across the row


def test_pixel_output_off_is_the_decoder_alone() -> None:
    m = model(pixel_output=False)
    assert m.decoder.mask_head is None and "pixel" not in " ".join(n for n, _ in m.named_parameters())


class _Encode(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, sources):
        return self.m.encode_sources(sources)


class _Animate(_Encode):
    def forward(self, cache, driving):
        return self.m.animate(cache, driving).prediction


@pytest.mark.parametrize("kind", ["implicit", "implicit-region", "baseline"])
def test_torch_export_with_dynamic_batch_and_sources(kind: str) -> None:
    """encode_sources / animate have no data-dependent control flow: one export serves any B, k."""
    torch.manual_seed(0)
    if kind.startswith("implicit"):
        selection = "region" if kind.endswith("region") else "token"
        m = ImplicitWarping(ImplicitWarpingConfig.tiny(source_selection=selection)).eval()
    else:
        m = ExplicitFlowBaseline(ExplicitFlowConfig.tiny()).eval()
    B, K, S = Dim("B", min=1, max=64), Dim("k", min=1, max=32), Dim("S", min=2, max=1 << 20)
    enc = export(_Encode(m), (rand(2, 3, 3, 64, 64),), dynamic_shapes=({0: B, 1: K},)).module()
    if kind.startswith("implicit"):
        spec = SourceCache({0: B, 1: S}, {0: B, 1: S}, {0: B, 1: K}, {0: B, 1: K}, {0: B, 1: K}, {0: B, 1: S, 2: K})
    else:
        spec = FlowSourceCache({0: B, 1: K}, {0: B, 1: K}, {0: B, 1: K}, {0: B, 1: K}, {0: B, 1: K})
    # clones, as serving/export.py does: views of the B*k batch would make export relate B*k to B
    example = type(spec)(*(t.clone() for t in m.encode_sources(rand(2, 3, 3, 64, 64))))
    anim = export(_Animate(m), (example, rand(2, 3, 64, 64)), dynamic_shapes=(spec, {0: B})).module()
    sources, driving = rand(3, 5, 3, 64, 64, seed=3), rand(3, 3, 64, 64, seed=4)
    with torch.no_grad():
        expected = m(sources, driving).prediction
    cache = enc(sources)
    torch.testing.assert_close(anim(type(cache)(*cache), driving), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # one source: no specialisation on the k = 2 example may break it
        expected_1 = m(sources[:, :1], driving).prediction
    torch.testing.assert_close(anim(type(cache)(*enc(sources[:, :1])), driving), expected_1, atol=1e-5, rtol=1e-5)
