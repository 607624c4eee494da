"""LU-KV's global budget solver: per-head loss curves, their lower convex hulls, one greedy over all heads.

For one calibration prompt, each (layer, KV head) evicts its tokens in the scorer's order, lowest score first;
evicting the first n of them loses the summed oracle utility of those n tokens. Replacing each such curve by
its lower convex hull makes the marginal cost of every next eviction non-decreasing, and then one greedy that
always evicts the globally cheapest next token, a min-heap over all (layer, head), solves the relaxed problem
exactly. Reading off how much each head has evicted when a global ratio of all tokens is reached gives its
prune ratio at that ratio.
"""

from __future__ import annotations

import heapq
import itertools

import torch

# Global prune ratios of a profile: 1 %, 2 %, ..., 99 % of all prompt tokens of all heads.
GLOBAL_RATIOS = tuple(percent / 100 for percent in range(1, 100))


def cumulative_losses(utility: torch.Tensor, scores: torch.Tensor, evictable: torch.Tensor) -> list[torch.Tensor]:
    """Per head, the utility lost by evicting its n lowest-scored evictable tokens, for n = 0 .. #evictable.

    Args:
        utility: `[heads, prompt_len]` oracle utility of each token for each head (heads: layers x KV heads).
        scores: `[heads, prompt_len]` the scorer's scores; lower is evicted first.
        evictable: `[prompt_len]` bool, False on sink and window tokens, which are never evicted.
    """
    order = scores[:, evictable].double().argsort(dim=-1, stable=True)
    lost = utility[:, evictable].double().gather(-1, order)
    zero = lost.new_zeros(lost.shape[0], 1)
    return list(torch.cat([zero, lost.cumsum(-1)], dim=-1))


def hull_marginal_costs(cumulative: torch.Tensor) -> torch.Tensor:
    """Per-token marginal costs `[n]` of the lower convex hull of the points (i, cumulative[i]), i = 0 .. n.

    The costs are non-decreasing, and they add up to `cumulative[-1]`.
    """
    values = cumulative.tolist()
    hull = [0]
    for i in range(1, len(values)):
        # Pop while the last hull point lies on or above the segment from its predecessor to point i.
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (values[b] - values[a]) * (i - a) >= (values[i] - values[a]) * (b - a):
                hull.pop()
            else:
                break
        hull.append(i)
    costs = torch.empty(len(values) - 1, dtype=torch.float64)
    for a, b in itertools.pairwise(hull):
        costs[a:b] = (values[b] - values[a]) / (b - a)
    return costs


def prune_ratios(
    costs: list[torch.Tensor], prompt_length: int, max_evictions: int, ratios: tuple[float, ...] = GLOBAL_RATIOS
) -> torch.Tensor:
    """`[len(ratios), heads]` share of its `prompt_length` tokens each head has evicted when the greedy has evicted
    `ratio` of all heads' tokens.

    Args:
        costs: Per head, non-decreasing marginal costs of its evictable tokens (`hull_marginal_costs`).
        prompt_length: Tokens of the prompt (every head holds all of them before eviction).
        max_evictions: Most tokens any head may evict: its floor (sink, window, a minimum share) stays.
    """
    heads = len(costs)
    streams = [
        zip(head_costs[:max_evictions].tolist(), itertools.repeat(head)) for head, head_costs in enumerate(costs)
    ]
    # heapq.merge keeps a min-heap of the next cost of every head: each step evicts the globally cheapest token.
    greedy = heapq.merge(*streams)
    evicted = torch.zeros(heads, dtype=torch.float64)
    table = torch.empty(len(ratios), heads, dtype=torch.float64)
    done = 0
    for row, ratio in enumerate(ratios):
        target = round(ratio * prompt_length * heads)
        for _, head in itertools.islice(greedy, max(target - done, 0)):
            evicted[head] += 1
            done += 1
        table[row] = evicted / prompt_length
    return table
