"""The local Hub test server (tests/hub_server.py): what huggingface_hub and PEFT get back from olah."""

import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import (
    constants,
    file_exists,
    hf_hub_download,
    list_repo_files,
    model_info,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from safetensors.torch import load_file, save_file


def write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def test_points_huggingface_hub_at_the_server(local_hub):
    assert local_hub.endpoint.startswith("http://127.0.0.1:")
    assert constants.ENDPOINT == local_hub.endpoint
    assert constants.HF_HUB_CACHE == str(local_hub.hf_hub_cache)
    assert not constants.HF_HUB_OFFLINE


def test_published_file_comes_back_byte_identical(local_hub, tmp_path):
    files = {
        "config.json": b'{"r": 4}\n',
        "weights/blob.bin": bytes(range(256)) * 3 + b"\x00\r\n\xff",
        # 120 to 150 bytes: the size at which olah checks whether a blob is a git-lfs pointer.
        "sized_like_lfs_pointer.bin": b"version https://example.com\n" + bytes(range(100)),
    }
    sha = local_hub.publish("test-org/identical", write(tmp_path / "repo", files))

    for name, data in files.items():
        path = Path(hf_hub_download("test-org/identical", name))
        assert path.read_bytes() == data
        assert path.is_relative_to(local_hub.hf_hub_cache)
        assert sha in path.parts


def test_revision_selects_the_commit(local_hub, tmp_path):
    repo_id = "test-org/revisions"
    first = local_hub.publish(repo_id, write(tmp_path / "v1", {"a.txt": b"first", "gone.txt": b"only in v1"}), "v1")
    assert local_hub.tag(repo_id, "v1", first) == first
    assert local_hub.branch(repo_id, "stable", "v1") == first
    second = local_hub.publish(repo_id, write(tmp_path / "v2", {"a.txt": b"second"}), "v2")
    assert second != first

    assert Path(hf_hub_download(repo_id, "a.txt")).read_bytes() == b"second"
    assert Path(hf_hub_download(repo_id, "a.txt", revision="main")).read_bytes() == b"second"
    for revision in (first, "v1", "stable"):
        assert Path(hf_hub_download(repo_id, "a.txt", revision=revision)).read_bytes() == b"first"
        assert Path(hf_hub_download(repo_id, "gone.txt", revision=revision)).read_bytes() == b"only in v1"
    # The default revision is looked up again on each call, not taken from the cache.
    assert Path(hf_hub_download(repo_id, "a.txt")).read_bytes() == b"second"
    assert not file_exists(repo_id, "gone.txt")


def test_a_file_replaced_within_the_second_by_one_of_the_same_size_is_published(local_hub, tmp_path):
    """Git trusts a file whose size, whole-second times and inode match its index entry. Versions written before a
    second boundary and published right after it, the second reusing the first's inode, used to commit the first's
    bytes again (a Hub test read the wrong LU-KV profile about once in 35 runs)."""
    repo_id = "test-org/same-size"
    first, second = (write(tmp_path / name, {"weights.bin": bytes([i]) * 1000}) for i, name in enumerate("ab"))
    time.sleep(1.01 - time.time() % 1.0)
    local_hub.publish(repo_id, first)
    local_hub.publish(repo_id, second)
    assert Path(hf_hub_download(repo_id, "weights.bin")).read_bytes() == bytes([1]) * 1000


def test_snapshot_download_and_repo_info(local_hub, tmp_path):
    repo_id = "test-org/snapshot"
    first = local_hub.publish(repo_id, write(tmp_path / "v1", {"a.txt": b"a1", "sub/deeper/b.bin": b"b" * 300}))
    second = local_hub.publish(repo_id, write(tmp_path / "v2", {"a.txt": b"a2", "sub/c.txt": b"c"}))

    expected_files = {
        None: {"a.txt": b"a2", "sub/c.txt": b"c"},
        first: {"a.txt": b"a1", "sub/deeper/b.bin": b"b" * 300},
    }
    for revision, expected in expected_files.items():
        snapshot = Path(snapshot_download(repo_id, revision=revision))
        files = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
        assert files == expected
        assert sorted(list_repo_files(repo_id, revision=revision)) == sorted(expected)
    assert model_info(repo_id, revision="main").sha == second
    assert model_info(repo_id, revision=first).sha == first
    with pytest.raises(RepositoryNotFoundError):  # olah answers /api/models/<repo> without a revision with 401
        model_info(repo_id)


def test_multi_megabyte_safetensors_round_trip(local_hub, tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {"weight": torch.randn(3 * 1024 * 1024, generator=generator), "bias": torch.arange(7.0)}
    folder = tmp_path / "repo"
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    data = (folder / "model.safetensors").read_bytes()
    assert len(data) > 12 * 1024 * 1024
    local_hub.publish("test-org/big", folder)

    path = Path(hf_hub_download("test-org/big", "model.safetensors"))
    assert path.read_bytes() == data
    loaded = load_file(path)
    assert torch.equal(loaded["weight"], tensors["weight"]) and torch.equal(loaded["bias"], tensors["bias"])


def test_missing_file_errors(local_hub, tmp_path):
    sha = local_hub.publish("test-org/missing", write(tmp_path / "repo", {"a.txt": b"a"}))
    local_hub.tag("test-org/missing", "v1", sha)

    # At a full commit sha olah answers 404, as the Hub does.
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("test-org/missing", "nope.txt", revision=sha)
    # At a branch or tag, offline olah answers 401 RepoNotFound instead (the Hub: 404 EntryNotFound).
    for revision in (None, "main", "v1"):
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("test-org/missing", "nope.txt", revision=revision)
    # So does an unknown revision (the Hub: 404 RevisionNotFound) and an unknown repo (as on the Hub).
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/missing", "a.txt", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/no-such-repo", "a.txt")
    # file_exists, which PEFT uses to choose between safetensors and .bin, is False for every missing file.
    assert file_exists("test-org/missing", "a.txt")
    assert not file_exists("test-org/missing", "nope.txt")
    assert not file_exists("test-org/missing", "nope.txt", revision=sha)
    assert not file_exists("test-org/no-such-repo", "a.txt")


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.out(torch.relu(self.proj(x)))


def test_peft_loads_an_adapter_at_a_revision(local_hub, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    def base():
        torch.manual_seed(0)
        return TinyModel()

    repo_id = "test-org/adapter"
    lora_weights = {}
    shas = {}
    for version in ("v1", "v2"):
        model = base()
        torch.manual_seed({"v1": 1, "v2": 2}[version])  # different LoRA weights on the same base
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["proj"], init_lora_weights=False))
        peft_model.save_pretrained(tmp_path / version)
        lora_weights[version] = load_file(tmp_path / version / "adapter_model.safetensors")
        shas[version] = local_hub.publish(repo_id, tmp_path / version, version)
        local_hub.tag(repo_id, version, shas[version])
    name = next(key for key in lora_weights["v1"] if "lora_A" in key)
    assert not torch.equal(lora_weights["v1"][name], lora_weights["v2"][name])

    def loaded_lora_a(**kwargs):
        model = PeftModel.from_pretrained(base(), repo_id, **kwargs)
        return model.state_dict()[name.replace(".weight", ".default.weight")]

    assert torch.equal(loaded_lora_a(), lora_weights["v2"][name])
    assert torch.equal(loaded_lora_a(revision=shas["v1"]), lora_weights["v1"][name])
    assert torch.equal(loaded_lora_a(revision="v1"), lora_weights["v1"][name])
