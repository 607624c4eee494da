"""Config lookup: the value of one setting, named by its full path, in a long generated configuration file."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily

CATEGORIES = ("services", "databases", "queues", "caches", "workers", "gateways", "schedulers", "storage")
COMPONENTS = (
    "accounts", "analytics", "archive", "audit", "auth", "billing", "catalog", "checkout", "search", "chat",
    "content", "coupons", "delivery", "documents", "email", "events", "exports", "feedback", "geo", "imports",
    "inventory", "invoices", "ledger", "loyalty", "media", "metrics", "notifications", "orders", "payments",
    "pricing", "profiles", "ranking", "recommendations", "refunds", "reports", "reviews", "sessions", "shipping",
    "sms", "subscriptions", "support", "tax", "thumbnails", "tracking", "translations", "uploads", "users",
    "vouchers", "warehouse", "webhooks",
)  # fmt: skip
ZONES = ("eu-west", "eu-north", "us-east", "us-west", "ap-south", "ap-east", "sa-east")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Each setting: how to draw a value for a component, and whether to ask it. Booleans and log levels are never
# asked: a guess gets them right too often.
Setting = tuple[Callable[[random.Random, str], str], bool]
SETTINGS: dict[str, Setting] = {
    "host": (lambda rng, component: f"{component}-{rng.randint(1, 40)}.{rng.choice(ZONES)}.internal", True),
    "port": (lambda rng, component: str(rng.randint(1025, 65535)), True),
    "timeout_seconds": (lambda rng, component: str(rng.randint(2, 600)), True),
    "retry_limit": (lambda rng, component: str(rng.randint(2, 40)), True),
    "max_connections": (lambda rng, component: str(rng.randint(8, 4096)), True),
    "pool_size": (lambda rng, component: str(rng.randint(2, 256)), True),
    "replicas": (lambda rng, component: str(rng.randint(2, 64)), True),
    "cache_ttl_seconds": (lambda rng, component: str(rng.randint(30, 86400)), True),
    "batch_size": (lambda rng, component: str(rng.randint(10, 5000)), True),
    "region": (lambda rng, component: f"{rng.choice(ZONES)}-{rng.randint(1, 9)}", True),
    "owner_team": (lambda rng, component: f"team-{rng.choice(COMPONENTS)}", True),
    "log_level": (lambda rng, component: rng.choice(LOG_LEVELS), False),
    "enabled": (lambda rng, component: rng.choice(("true", "false")), False),
    "tls": (lambda rng, component: rng.choice(("true", "false")), False),
}
ASKABLE = tuple(key for key, (_, askable) in SETTINGS.items() if askable)
SETTINGS_PER_SECTION = (4, 8)
QUESTIONS = (
    "What is the value of `{path}` in the configuration above?",
    "What is `{path}` set to in this configuration?",
    "According to the configuration, what is the value of the setting `{path}`?",
)
QUESTION_SUFFIX = " Answer with the value only."


def header(section: str, toml: bool) -> str:
    return f"[{section}]" if toml else f"{section}:"


def setting_line(key: str, value: str, toml: bool) -> str:
    return f"{key} = {value}" if toml else f"  {key}: {value}"


class ConfigLookup(TaskFamily):
    """A generated configuration file, TOML-like (`[services.billing]`, `retry_limit = 5`) or YAML-like, of many
    sections `<category>.<component>` drawing their settings from one pool of names; the question asks for one
    setting by its full path `<category>.<component>.<setting>`.

    The path is unique (sections are distinct, a setting appears once per section) and only the full path settles
    it: the asked component also has a twin section in another category, and many sections have the asked setting,
    always with other values (never containing the answer, which string matching would otherwise credit). The
    asked section and its twin sit at RULER's depths between the sections of the lines kept, so the answer is
    always in the context; the context grows line by line, the last section possibly cut.
    """

    name = "config_lookup"
    metric = "string_match"
    max_new_tokens = 24
    description = "Value of one setting, named by its full dotted path, in a long generated configuration file."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        toml = rng.random() < 0.5
        key = rng.choice(ASKABLE)
        pairs = list(itertools.product(CATEGORIES, COMPONENTS))
        # A section takes 30 tokens or more; past the sections available the base class says the length is too long.
        target, *others = map(".".join, rng.sample(pairs, min(slot.context_length // 24 + 2, len(pairs))))
        category, component = target.split(".")
        twin = f"{rng.choice([name for name in CATEGORIES if name != category])}.{component}"
        others = [section for section in others if section != twin]
        answer = ""
        # One character would string-match inside almost any prediction.
        while len(answer) < 2:
            answer = SETTINGS[key][0](rng, component)

        def section_lines(section: str, has_key: bool, value: str | None = None) -> list[str]:
            """The section's header and settings: the asked one too if `has_key`, set to `value` or to a value
            that does not contain the answer."""
            component = section.split(".")[1]
            names = rng.sample(list(SETTINGS), rng.randint(*SETTINGS_PER_SECTION))
            if has_key and key not in names:
                names[rng.randrange(len(names))] = key
            lines = [header(section, toml)]
            for name in names:
                draw = SETTINGS[name][0]
                if name == key and value is not None:
                    lines.append(setting_line(name, value, toml))
                    continue
                drawn = draw(rng, component)
                while name == key and answer in drawn:
                    drawn = draw(rng, component)
                lines.append(setting_line(name, drawn, toml))
            return lines

        inserts = ["\n".join(section_lines(target, True, answer)), "\n".join(section_lines(twin, True))]
        depths = rng.sample(DEPTHS, 2)
        # Numbered by section, so that the lines kept regroup into their sections.
        lines = [(i, line) for i, section in enumerate(others) for line in section_lines(section, rng.random() < 0.3)]
        intro = f"Below is the configuration file of a deployment, in {'TOML' if toml else 'YAML'}-like syntax.\n\n"
        question = rng.choice(QUESTIONS).format(path=f"{target}.{key}") + QUESTION_SUFFIX

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            groups = itertools.groupby(lines[:size], key=lambda numbered: numbered[0])
            blocks = ["\n".join(line for _, line in group) for _, group in groups]
            return intro + "\n\n".join(insert_at_depths(blocks, inserts, depths)), question, (answer,)

        yield Draft(render, max_size=len(lines))
