"""LU-KV: the offline solver, the profile files, and the `lukv` allocation in the cache."""

import itertools

import pytest
import torch
from conftest import prompt_ids, synthetic_profile, tiny_model

from lookahead_cache import LookaheadCache, LookaheadCacheConfig
from lookahead_cache.adapters.config import BaseModelSignature
from lookahead_cache.allocation import LUKVAllocator
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.profiling import HeadProfile
from lookahead_cache.profiling.solver import GLOBAL_RATIOS, cumulative_losses, hull_marginal_costs, prune_ratios
from lookahead_cache.scorers import LookaheadScorer, SnapKVScorer, scorer_settings


def test_hull_costs_are_the_lower_convex_hull():
    cumulative = torch.tensor([0.0, 5.0, 6.0, 6.5, 20.0, 21.0])
    costs = hull_marginal_costs(cumulative)
    assert bool((costs[1:] >= costs[:-1]).all())
    torch.testing.assert_close(costs.sum(), torch.tensor(21.0, dtype=torch.float64))
    hull = torch.cat([torch.zeros(1, dtype=torch.float64), costs.cumsum(0)])
    assert bool((hull <= cumulative.double() + 1e-12).all())  # below every point
    assert hull[3] == 6.5 and hull[5] == 21.0  # and through the hull's corners


def test_greedy_matches_the_best_split_found_by_brute_force():
    # With convex costs the greedy is optimal: no split of the same number of evictions loses less.
    generator = torch.Generator().manual_seed(0)
    length, heads = 8, 3
    utility = torch.rand(heads, length, generator=generator) ** 3
    scores = torch.rand(heads, length, generator=generator)
    evictable = torch.ones(length, dtype=torch.bool)
    curves = cumulative_losses(utility, scores, evictable)
    costs = [hull_marginal_costs(curve) for curve in curves]
    ratios = tuple(n / (length * heads) for n in range(1, length * heads))
    table = prune_ratios(costs, length, max_evictions=length, ratios=ratios)
    hulls = [torch.cat([torch.zeros(1, dtype=torch.float64), c.cumsum(0)]) for c in costs]
    for row, evictions in enumerate(range(1, length * heads)):
        chosen = (table[row] * length).round().long().tolist()
        assert sum(chosen) == evictions
        best = min(
            sum(float(hulls[h][n]) for h, n in enumerate(split))
            for split in itertools.product(range(length + 1), repeat=heads)
            if sum(split) == evictions
        )
        assert sum(float(hulls[h][n]) for h, n in enumerate(chosen)) == pytest.approx(best)


def test_cumulative_losses_follow_the_scorers_order_and_skip_protected_tokens():
    utility = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.0]])
    evictable = torch.tensor([False, True, True, True, False])
    (curve,) = cumulative_losses(utility, scores, evictable)
    assert curve.tolist() == [0.0, 3.0, 7.0, 9.0]  # evicts position 2, then 3, then 1


@pytest.mark.parametrize("prompt_length, budget", [(64, 20), (1000, 100), (100, 99), (50, 80), (64, 6)])
def test_keep_counts_hold_the_budget_and_the_floor(prompt_length, budget):
    profile = synthetic_profile()
    counts = profile.keep_counts(prompt_length, budget, floor=6)
    assert counts.shape == (3, 2)
    assert int(counts.sum()) == min(budget, prompt_length) * 6
    assert bool((counts >= min(6, prompt_length)).all()) and bool((counts <= prompt_length).all())
    per_layer = profile.keep_counts(prompt_length, budget, floor=6, scope="layer")
    assert per_layer.sum(1).tolist() == [min(budget, prompt_length) * 2] * 3
    assert bool((per_layer >= min(6, prompt_length)).all()) and bool((per_layer <= prompt_length).all())


def test_lukv_layer_scope_keeps_each_layers_total_and_follows_the_profile_within_it():
    profile = synthetic_profile()
    model_scope, layer_scope = (profile.keep_counts(1000, 100, floor=6, scope=scope) for scope in ("model", "layer"))
    # The profile moves budget between layers; the layer scope only between the heads of a layer, in the same order.
    assert len(set(model_scope.sum(1).tolist())) > 1
    model_gap, layer_gap = (counts[:, 0] - counts[:, 1] for counts in (model_scope, layer_scope))
    assert bool((model_gap * layer_gap >= 0).all())
    cache = LookaheadCache(
        budget=20, scorer="snapkv", allocation=LUKVAllocator(profile, scope="layer"), sink=2, window=4
    )
    with torch.no_grad():
        tiny_model()(prompt_ids(64), **{CACHE_ARGUMENT: cache})
    assert torch.equal(cache.kept_tokens()[:, 0], profile.keep_counts(64, 20, floor=6, scope="layer"))
    with pytest.raises(ValueError, match="scope='heads' must be 'model' or 'layer'"):
        LUKVAllocator(profile, scope="heads")


def test_profile_round_trips_through_its_files(tmp_path):
    profile = synthetic_profile()
    profile.scorer_settings = {"window": 32, "kernel_size": 7, "pooling": "max"}
    profile.save_pretrained(tmp_path)
    profile.plot(tmp_path / "heatmap.png")
    loaded = HeadProfile.from_pretrained(tmp_path, "snapkv")
    assert torch.equal(loaded.prune_ratios, profile.prune_ratios) and loaded.base_model == profile.base_model
    assert (loaded.sink, loaded.window, loaded.layers, loaded.calibration) == (2, 4, [0, 1, 2], profile.calibration)
    assert loaded.scorer_settings == profile.scorer_settings
    with pytest.raises(FileNotFoundError, match="no LU-KV profile for scorer 'lookahead'.*lookahead-cache profile"):
        HeadProfile.from_pretrained(tmp_path, "lookahead")
    (tmp_path / "lukv_profile_snapkv.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="corrupted"):
        HeadProfile.from_pretrained(tmp_path, "snapkv")


def test_lukv_cache_keeps_the_profiled_counts_per_head(tmp_path):
    model = tiny_model()
    profile = synthetic_profile()
    profile.save_pretrained(tmp_path)
    cache = LookaheadCache(
        budget=20, scorer="snapkv", allocation="lukv", sink=2, window=4, allocation_kwargs={"profile": str(tmp_path)}
    )
    with torch.no_grad():
        model(prompt_ids(64), **{CACHE_ARGUMENT: cache})
    kept = cache.kept_tokens()[:, 0]
    assert torch.equal(kept, profile.keep_counts(64, 20, floor=6))
    assert int(kept.sum()) == 20 * kept.numel()
    assert cache.nbytes() > 0


def test_lukv_finds_the_profile_of_a_configured_scorer_instance(tmp_path):
    # A scorer passed as an instance is profiled under its registered name, like the same scorer named.
    model = tiny_model()
    profile = synthetic_profile()
    profile.save_pretrained(tmp_path)
    cache = LookaheadCache(
        budget=20,
        scorer=SnapKVScorer(kernel_size=3),
        allocation="lukv",
        sink=2,
        window=4,
        allocation_kwargs={"profile": str(tmp_path)},
    )
    with torch.no_grad():
        model(prompt_ids(64), **{CACHE_ARGUMENT: cache})
    assert torch.equal(cache.kept_tokens()[:, 0], profile.keep_counts(64, 20, floor=6))


def test_lukv_refuses_a_profile_of_another_scorer_or_model(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        wrong_scorer = LookaheadCache(
            budget=20,
            scorer="knorm",
            allocation="lukv",
            sink=2,
            window=4,
            allocation_kwargs={"profile": synthetic_profile()},
        )
        with pytest.raises(ValueError, match="made for scorer 'snapkv'.*scores with 'knorm'"):
            model(prompt_ids(64), **{CACHE_ARGUMENT: wrong_scorer})
        other = synthetic_profile()
        other.base_model = BaseModelSignature("llama", 4, 64, 4, 2, 128)
        wrong_model = LookaheadCache(
            budget=20, scorer="snapkv", allocation="lukv", sink=2, window=4, allocation_kwargs={"profile": other}
        )
        with pytest.raises(ValueError, match="another model.*num_hidden_layers"):
            model(prompt_ids(64), **{CACHE_ARGUMENT: wrong_model})
        no_profile = LookaheadCache(budget=20, scorer="snapkv", allocation="lukv", sink=2, window=4)
        with pytest.raises(ValueError, match="needs a LU-KV profile"):
            model(prompt_ids(64), **{CACHE_ARGUMENT: no_profile})


def test_lukv_refuses_a_profile_made_with_other_scorer_settings():
    model = tiny_model()
    profile = synthetic_profile()
    profile.scorer_settings = scorer_settings(SnapKVScorer())
    with torch.no_grad():
        matching = LookaheadCache(budget=20, scorer=SnapKVScorer(), allocation=LUKVAllocator(profile), sink=2, window=4)
        model(prompt_ids(64), **{CACHE_ARGUMENT: matching})
        assert torch.equal(matching.kept_tokens()[:, 0], profile.keep_counts(64, 20, floor=6))
        other_kernel = LookaheadCache(
            budget=20, scorer=SnapKVScorer(kernel_size=1), allocation=LUKVAllocator(profile), sink=2, window=4
        )
        with pytest.raises(ValueError, match="made with snapkv settings .*'kernel_size': 7.*'kernel_size': 1"):
            model(prompt_ids(64), **{CACHE_ARGUMENT: other_kernel})


def test_a_scorer_setting_added_after_a_profile_counts_as_its_default_then():
    """Profiles record the scorer's settings as they were; the shipped ones predate the lookahead scorer's `shift`."""
    attention = tiny_model().model.layers[0].self_attn
    profile = synthetic_profile()
    profile.scorer, profile.scorer_settings = "lookahead", {"kernel_size": 9, "pooling": "max"}
    settings = LookaheadCacheConfig(budget=20, sink=2, window=4)
    LUKVAllocator(profile).bind(attention, LookaheadScorer(), settings)
    with pytest.raises(ValueError, match="made with lookahead settings .*'shift': 2"):
        LUKVAllocator(profile).bind(attention, LookaheadScorer(shift=2), settings)


@pytest.mark.slow
def test_profiling_a_model_gives_ratios_that_add_up_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lookahead_cache.adapters import LookaheadConfig, add_lookahead, get_lookahead, load_lookahead
    from lookahead_cache.profiling import profiler

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    untrained = add_lookahead(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LookaheadConfig(num_tokens=4))
    get_lookahead(untrained).save_pretrained(tmp_path / "adapter")
    model = load_lookahead(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval(), tmp_path / "adapter"
    )
    settings = dict(context_length=500, questions=3, answer_tokens=6, sink=2, window=4)
    profiles = profiler.profile_model(model, tokenizer, ["snapkv", "lookahead"], tmp_path / "adapter", **settings)

    for profile in profiles.values():
        ratios = profile.prune_ratios.double()
        assert ratios.shape == (99, 2, 2) and bool((ratios[1:] >= ratios[:-1] - 1e-6).all())
        # Every prompt's greedy evicts exactly the global share over the heads, until the floors bind.
        means = ratios.mean((1, 2))
        torch.testing.assert_close(means[:90], torch.tensor(GLOBAL_RATIOS[:90], dtype=torch.float64), atol=2e-3, rtol=0)
        assert (tmp_path / "adapter" / f"lukv_profile_{profile.scorer}.png").stat().st_size > 0
    assert not torch.equal(profiles["snapkv"].prune_ratios, profiles["lookahead"].prune_ratios)
    assert profiles["lookahead"].scorer_settings == scorer_settings(LookaheadScorer())

    # Resumed: nothing is recomputed, the same profiles come back.
    monkeypatch.setattr(profiler, "record_prefill", lambda *args: pytest.fail("recomputed a finished prompt"))
    again = profiler.profile_model(model, tokenizer, ["snapkv", "lookahead"], tmp_path / "adapter", **settings)
    assert torch.equal(again["lookahead"].prune_ratios, profiles["lookahead"].prune_ratios)
    # Tables of a scorer with other settings are not reused.
    with pytest.raises(pytest.fail.Exception, match="recomputed a finished prompt"):
        profiler.profile_model(model, tokenizer, [LookaheadScorer(kernel_size=1)], tmp_path / "adapter", **settings)
    with pytest.raises(ValueError, match="holds a profiling run with answer_tokens 6; this call has answer_tokens 8"):
        profiler.profile_model(model, tokenizer, ["snapkv"], tmp_path / "adapter", **{**settings, "answer_tokens": 8})
    # Tables scored by another adapter are not reused.
    with torch.no_grad():
        get_lookahead(model).embeddings.add_(1.0)
    with pytest.raises(ValueError, match="holds a profiling run with lookahead_adapter_sha256 [0-9a-f]{64}; this call"):
        profiler.profile_model(model, tokenizer, ["lookahead"], tmp_path / "adapter", **settings)
    with torch.no_grad():
        get_lookahead(model).embeddings.sub_(1.0)

    # The cache finds the profile shipped beside the loaded adapter, for the scorer it uses.
    cache = LookaheadCache(budget=40, scorer="lookahead", allocation="lukv", sink=2, window=4)
    prompt = profiler.calibration_prompts(tokenizer, 500, questions=1)[0][0]
    with torch.no_grad():
        model(prompt, **{CACHE_ARGUMENT: cache})
    kept = cache.kept_tokens()[:, 0]
    assert torch.equal(kept, profiles["lookahead"].keep_counts(prompt.shape[-1], 40, floor=6))


def test_lukv_reads_the_profile_of_the_adapters_hub_revision(tmp_path, local_hub):
    from lookahead_cache.adapters import LookaheadConfig, add_lookahead, get_lookahead, load_lookahead

    untrained = add_lookahead(tiny_model(), LookaheadConfig(num_tokens=4))
    for version, seed in (("v1", 0), ("v2", 1)):
        get_lookahead(untrained).save_pretrained(tmp_path / version)
        synthetic_profile(seed=seed).save_pretrained(tmp_path / version)
    first = local_hub.publish("lukv-org/tiny", tmp_path / "v1")
    second = local_hub.publish("lukv-org/tiny", tmp_path / "v2")
    # The two revisions' profiles give different budgets, so the test sees which one was read.
    assert not torch.equal(
        synthetic_profile(seed=0).keep_counts(64, 20, 6), synthetic_profile(seed=1).keep_counts(64, 20, 6)
    )

    for revision, seed in ((first, 0), (None, 1)):
        model = load_lookahead(tiny_model(), "lukv-org/tiny", revision=revision)
        cache = LookaheadCache(budget=20, scorer="snapkv", allocation="lukv", sink=2, window=4)
        with torch.no_grad():
            model(prompt_ids(64), **{CACHE_ARGUMENT: cache})
        kept = cache.kept_tokens()[:, 0]
        assert torch.equal(kept, synthetic_profile(seed=seed).keep_counts(64, 20, floor=6)), _served_revisions(
            "lukv-org/tiny", first, second, kept
        )
    with pytest.raises(FileNotFoundError, match="no LU-KV profile|LU-KV profile for scorer 'knorm'"):
        HeadProfile.from_pretrained("lukv-org/tiny", "knorm")


def _served_revisions(repo_id: str, first: str, second: str, kept: torch.Tensor) -> str:
    """What the Hub server and the local HF cache answer for each revision, for a failure message (it showed `main`
    serving the first revision's blob: `LocalHub.publish` had committed a stale file, since fixed there)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    name = "lukv_profile_snapkv.safetensors"
    lines = [f"kept {kept.tolist()}; published {first} then {second}"]
    for revision in (first, "main"):
        metadata = get_hf_file_metadata(hf_hub_url(repo_id, name, revision=revision))
        counts = HeadProfile.from_pretrained(repo_id, "snapkv", revision=revision).keep_counts(64, 20, floor=6)
        lines.append(
            f"{revision}: served commit {metadata.commit_hash}, etag {metadata.etag}, counts {counts.tolist()}"
        )
    return "\n".join(lines)
