"""A LU-KV head profile: per-head prune ratios for every global ratio, with what they were measured for."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..adapters.config import BaseModelSignature
from .solver import GLOBAL_RATIOS


def check_scope(scope: str) -> None:
    """Refuse a LU-KV budget scope other than the whole model's or each layer's (see `HeadProfile.keep_counts`)."""
    if scope not in ("model", "layer"):
        raise ValueError(f"lukv scope={scope!r} must be 'model' or 'layer'.")


def profile_names(scorer: str) -> tuple[str, str]:
    """File names (metadata JSON, safetensors table) of the profile for `scorer`, beside a lookahead adapter."""
    return f"lukv_profile_{scorer}.json", f"lukv_profile_{scorer}.safetensors"


@dataclass
class HeadProfile:
    """Per-head prune ratios of LU-KV for one model and scorer.

    Attributes:
        prune_ratios: `[99, layers, kv_heads]` share of the prompt each head evicts when 1 %, ..., 99 % of all
            prompt tokens of all compressed layers are evicted; averaged over calibration prompts.
        scorer: The scorer whose ranking the loss curves followed.
        sink: First prompt tokens never evicted during profiling (and by the cache).
        window: Last prompt tokens never evicted.
        layers: Model layer index of each profiled (compressed) layer.
        base_model: The model profiled.
        calibration: How the calibration data was made (prompts, lengths, sampling, seed, hash).
        scorer_settings: The scorer's arguments (e.g. its pooling kernel), which change its ranking; empty in
            profiles saved before they were recorded.
    """

    prune_ratios: torch.Tensor
    scorer: str
    sink: int
    window: int
    layers: list[int]
    base_model: BaseModelSignature
    calibration: dict[str, Any] = field(default_factory=dict)
    scorer_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        expected = (len(GLOBAL_RATIOS), len(self.layers))
        if self.prune_ratios.dim() != 3 or tuple(self.prune_ratios.shape[:2]) != expected:
            raise ValueError(
                f"prune_ratios has shape {tuple(self.prune_ratios.shape)}; a profile of {len(self.layers)} layers "
                f"needs [{expected[0]}, {expected[1]}, kv_heads]."
            )

    def keep_counts(
        self, prompt_length: int, kept_per_head: int, floor: int, scope: Literal["model", "layer"] = "model"
    ) -> torch.Tensor:
        """`[layers, kv_heads]` tokens each head keeps so that, together, they keep `kept_per_head` on average.

        The global prune ratio `1 - kept_per_head / prompt_length` selects the profile's row (interpolated between
        whole percents); each head keeps `(1 - r_h) * prompt_length` tokens, scaled to the exact total, never fewer
        than `floor` (sink and window) nor more than the prompt, with largest-remainder rounding. The total is the
        whole model's (`scope="model"`: layers keep different totals, as the profile's global solution has them) or
        each layer's (`scope="layer"`: every layer keeps `kept_per_head` per head on average, shared among its heads
        as the profile says, as kvpress's per-layer presses do).
        """
        layers, heads = self.prune_ratios.shape[1:]
        floor = min(floor, prompt_length)
        if kept_per_head >= prompt_length:
            return torch.full((layers, heads), prompt_length, dtype=torch.long)
        position = (1 - kept_per_head / prompt_length) * 100 - 1
        low = min(max(int(position), 0), len(GLOBAL_RATIOS) - 1)
        high = min(low + 1, len(GLOBAL_RATIOS) - 1)
        weight = min(max(position - low, 0.0), 1.0)
        ratios = (1 - weight) * self.prune_ratios[low].double() + weight * self.prune_ratios[high].double()
        check_scope(scope)
        wanted = ((1 - ratios) * prompt_length - floor).clamp(min=0)
        if scope == "model":
            wanted = wanted.flatten()[None]
        extra_total = (kept_per_head - floor) * wanted.shape[-1]
        counts = [
            floor + _largest_remainder(_water_fill(row, extra_total, cap=prompt_length - floor), extra_total)
            for row in wanted
        ]
        return torch.stack(counts).view(layers, heads)

    def fingerprint(self) -> str:
        """sha256 of the prune ratios and of what they apply to (scorer and its settings, sink, window, layers): what
        rows evaluated with this profile record, to tell them apart from another profile's."""
        digest = hashlib.sha256(self.prune_ratios.float().contiguous().cpu().numpy().tobytes())
        applies_to = [self.scorer, self.scorer_settings, self.sink, self.window, self.layers]
        digest.update(json.dumps(applies_to, sort_keys=True).encode())
        return digest.hexdigest()

    # ----- files --------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the profile's JSON metadata and safetensors table into `directory` (beside an adapter)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config_name, weights_name = profile_names(self.scorer)
        save_file({"prune_ratios": self.prune_ratios.float().contiguous()}, str(directory / weights_name))
        metadata = {
            "scorer": self.scorer,
            "scorer_settings": self.scorer_settings,
            "sink": self.sink,
            "window": self.window,
            "layers": self.layers,
            "global_ratios": list(GLOBAL_RATIOS),
            "base_model": asdict(self.base_model),
            "calibration": self.calibration,
        }
        (directory / config_name).write_text(json.dumps(metadata, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls, repo_or_dir: str | Path, scorer: str, *, revision: str | None = None, token: str | bool | None = None
    ) -> HeadProfile:
        """Load the profile for `scorer` from a local folder or a Hub repo (e.g. a lookahead adapter's)."""
        config_name, weights_name = profile_names(scorer)
        local = Path(repo_or_dir)
        if local.is_dir():
            paths = [local / config_name, local / weights_name]
            missing = [path.name for path in paths if not path.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{local} has no LU-KV profile for scorer {scorer!r} (missing {missing}); make one with "
                    f"`lookahead-cache profile --scorers {scorer} --out {local}`."
                )
        else:
            try:
                paths = [
                    Path(hf_hub_download(str(repo_or_dir), name, revision=revision, token=token))
                    for name in (config_name, weights_name)
                ]
            except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as error:
                raise FileNotFoundError(
                    f"{repo_or_dir!r} is neither a local folder nor a Hub repo with a LU-KV profile for scorer "
                    f"{scorer!r} "
                    f"({config_name}, {weights_name}): {error}"
                ) from error
            except HfHubHTTPError as error:
                raise OSError(f"Downloading the LU-KV profile from {repo_or_dir!r} failed: {error}") from error
        try:
            metadata = json.loads(paths[0].read_text())
            prune_ratios = load_file(str(paths[1]))["prune_ratios"]
        except (json.JSONDecodeError, SafetensorError, KeyError) as error:
            raise ValueError(
                f"The LU-KV profile in {repo_or_dir} is corrupted ({error}); profile the model again."
            ) from error
        if metadata.get("scorer") != scorer:
            raise ValueError(f"{paths[0]} profiles scorer {metadata.get('scorer')!r}, not {scorer!r}.")
        return cls(
            prune_ratios=prune_ratios,
            scorer=metadata["scorer"],
            sink=metadata["sink"],
            window=metadata["window"],
            layers=list(metadata["layers"]),
            base_model=BaseModelSignature(**metadata["base_model"]),
            calibration=metadata.get("calibration", {}),
            scorer_settings=metadata.get("scorer_settings", {}),
        )

    def plot(self, path: str | Path, global_ratio: float = 0.9) -> None:
        """A heatmap of the share of the prompt each (layer, KV head) keeps at `global_ratio` pruned."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        row = min(max(round(global_ratio * 100) - 1, 0), len(GLOBAL_RATIOS) - 1)
        kept = (1 - self.prune_ratios[row]).T.numpy()
        figure, axis = plt.subplots(figsize=(max(6, 0.3 * len(self.layers)), 1.2 + 0.4 * kept.shape[0]))
        image = axis.imshow(kept, aspect="auto", cmap="viridis", vmin=0, vmax=kept.max())
        axis.set_xlabel("layer")
        axis.set_ylabel("KV head")
        axis.set_xticks(range(len(self.layers)), [str(layer) for layer in self.layers], fontsize=7)
        axis.set_title(
            f"LU-KV share of the prompt kept per head, {self.scorer}, {round(global_ratio * 100)}% pruned overall"
        )
        figure.colorbar(image, ax=axis)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


def _water_fill(wanted: torch.Tensor, total: float, cap: float) -> torch.Tensor:
    """`wanted` scaled to add up to `total`, no entry above `cap`: what a capped entry cannot take, the others do."""
    result = torch.zeros_like(wanted)
    free = torch.ones_like(wanted, dtype=torch.bool)
    remaining = float(total)
    while remaining > 1e-9 and bool(free.any()):
        weights = wanted * free
        share = weights / weights.sum() if float(weights.sum()) > 0 else free.double() / float(free.sum())
        proposal = result + share * remaining
        over = free & (proposal > cap)
        if not bool(over.any()):
            return proposal
        remaining -= float((cap - result[over]).sum())
        result[over] = cap
        free &= ~over
    return result


def _largest_remainder(values: torch.Tensor, total: int) -> torch.Tensor:
    """Integers that add up to `total`, each `values` rounded down or up: the largest remainders round up."""
    base = values.floor()
    missing = int(round(total - float(base.sum())))
    result = base.long()
    if missing > 0:
        result[(values - base).argsort(descending=True, stable=True)[:missing]] += 1
    return result
