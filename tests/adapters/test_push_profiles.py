"""`LookaheadAdapter.push_to_hub` uploads the LU-KV profiles shipped with the adapter, where `allocation="lukv"`
finds them after `load_lookahead(model, repo_id)`.

The loopback Hub (tests/hub_server.py) serves repos but takes no uploads: `create_repo` and `upload_folder` are
replaced by publishing the folder that would be uploaded, and everything after (listing, downloading, loading) goes
through the server.
"""

import pytest
import torch
from conftest import prompt_ids, synthetic_profile, tiny_lookahead_model, tiny_model
from huggingface_hub import HfApi

from lookahead_cache import LookaheadCache
from lookahead_cache.adapters import get_lookahead, load_lookahead
from lookahead_cache.prefill import CACHE_ARGUMENT

PROFILE_FILES = {"lukv_profile_snapkv.json", "lukv_profile_snapkv.safetensors", "lukv_profile_snapkv.png"}


@pytest.fixture
def uploads(local_hub, monkeypatch):
    """`HfApi.create_repo` / `upload_folder` publish to the loopback Hub; returns the repo ids created."""
    created = []

    def create_repo(self, repo_id, **kwargs):
        created.append(repo_id)

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message="", **kwargs):
        assert revision is None
        return local_hub.publish(repo_id, folder_path, message=commit_message)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return created


def files_of(local_hub, repo_id):
    return {path.name for path in local_hub.repo_path(repo_id).iterdir() if path.name != ".git"}


def kept_by_lukv(model):
    cache = LookaheadCache(budget=20, scorer="snapkv", allocation="lukv", sink=2, window=4)
    with torch.no_grad():
        model(prompt_ids(64), **{CACHE_ARGUMENT: cache})
    return cache.kept_tokens()[:, 0]


def test_push_to_hub_uploads_the_profiles_beside_the_adapter(uploads, local_hub, tmp_path):
    folder = tmp_path / "adapter"
    trained = tiny_lookahead_model()
    get_lookahead(trained).save_pretrained(folder)
    profile = synthetic_profile()
    profile.save_pretrained(folder)
    profile.plot(folder / "lukv_profile_snapkv.png")
    loaded = load_lookahead(tiny_model(), folder)
    get_lookahead(loaded).push_to_hub("lookahead-org/with-profiles")
    assert files_of(local_hub, "lookahead-org/with-profiles") >= PROFILE_FILES | {"adapter_config.json", "README.md"}
    # Loaded from the repo, the adapter's lukv allocation finds the profile there.
    from_hub = load_lookahead(tiny_model(), "lookahead-org/with-profiles")
    assert torch.equal(kept_by_lukv(from_hub), profile.keep_counts(64, 20, floor=6))
    # An adapter loaded from a Hub repo takes that repo's profiles along to another.
    get_lookahead(from_hub).push_to_hub("lookahead-org/pushed-on")
    assert files_of(local_hub, "lookahead-org/pushed-on") >= PROFILE_FILES
    again = load_lookahead(tiny_model(), "lookahead-org/pushed-on")
    assert torch.equal(kept_by_lukv(again), profile.keep_counts(64, 20, floor=6))


def test_push_to_hub_takes_the_profiles_of_a_folder_or_none(uploads, local_hub, tmp_path):
    model = tiny_lookahead_model()
    adapter = get_lookahead(model)
    # A new adapter ships no profile: the repo holds the adapter and its card alone.
    adapter.push_to_hub("lookahead-org/no-profiles")
    assert not any(name.startswith("lukv_profile_") for name in files_of(local_hub, "lookahead-org/no-profiles"))
    profiles = tmp_path / "profiled"
    profile = synthetic_profile(seed=3)
    profile.save_pretrained(profiles)
    adapter.push_to_hub("lookahead-org/from-folder", profiles_from=profiles)
    assert files_of(local_hub, "lookahead-org/from-folder") >= PROFILE_FILES - {"lukv_profile_snapkv.png"}
    from_hub = load_lookahead(tiny_model(), "lookahead-org/from-folder")
    assert torch.equal(kept_by_lukv(from_hub), profile.keep_counts(64, 20, floor=6))
    # profiles_from=False leaves out even the profiles of the repo it was loaded from.
    get_lookahead(from_hub).push_to_hub("lookahead-org/left-out", profiles_from=False)
    assert not any(name.startswith("lukv_profile_") for name in files_of(local_hub, "lookahead-org/left-out"))
    # A folder without a profile is refused before the repo is created.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a local folder holding a LU-KV profile.*lookahead-cache profile"):
        adapter.push_to_hub("lookahead-org/refused", profiles_from=tmp_path / "empty")
    assert "lookahead-org/refused" not in uploads
