"""Log search: a detail of one request, or the time of the one fatal error, in a long generated server log."""

from __future__ import annotations

import datetime
import random
from collections.abc import Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import person_names

SERVICES = (
    "accounts", "billing", "catalog", "checkout", "inventory", "media", "orders", "reviews", "search", "shipping",
)  # fmt: skip
METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
# Status codes and the level their request is logged at.
STATUSES = {
    "200": "INFO", "201": "INFO", "204": "INFO", "301": "INFO", "304": "INFO", "400": "WARN", "401": "WARN",
    "403": "WARN", "404": "WARN", "409": "WARN", "429": "WARN", "500": "ERROR", "502": "ERROR", "503": "ERROR",
}  # fmt: skip
# Lines of the background jobs, `{n}` a number; none is FATAL, the level of the one line a question can ask the time of.
SYSTEM_LINES = (
    "INFO scheduler job {n} finished",
    "INFO health all checks passed",
    "DEBUG gc pause {n}ms",
    "WARN cache eviction rate high",
    "WARN db slow query took {n}ms",
    "ERROR mailer SMTP timeout",
    "INFO deploy config reloaded",
    "WARN queue backlog at {n} messages",
)
FATAL_LINES = (
    "FATAL storage disk /var/lib/data full, stopping writes",
    "FATAL db primary lost quorum, shutting down",
    "FATAL auth signing key missing, exiting",
    "FATAL queue broker unreachable, giving up",
)
# Time of day the log starts at the latest, so that it ends before midnight.
LATEST_START_SECONDS = 18 * 3600
# A log line takes 15 tokens or more.
LINES_PER_TOKEN = 1 / 12
# One system line per this many request lines.
REQUEST_LINES_PER_SYSTEM_LINE = 2
# Short system lines that end the log, up to this many per line kept (see LogSearch).
TAIL_LINES = 2


def client_ips(rng: random.Random, count: int) -> list[str]:
    """Distinct private IPv4 addresses, short (digits cost a token each), whose last byte has three digits, so that
    none is part of another."""
    numbers = rng.sample(range(10 * 10 * 155), count)
    return [f"10.{number // 1550}.{number // 155 % 10}.{100 + number % 155}" for number in numbers]


def system_line(rng: random.Random) -> str:
    return rng.choice(SYSTEM_LINES).format(n=rng.randint(2, 999))


@dataclass(frozen=True)
class Request:
    request_id: str
    method: str
    service: str
    ip: str
    user: str
    status: str

    @property
    def arrival(self) -> str:
        """The gateway's line, the time left out."""
        return f"INFO gateway {self.request_id} {self.method} /{self.service} from {self.ip}"

    @property
    def handled(self) -> str:
        """The service's line, the time left out."""
        return f"{STATUSES[self.status]} {self.service} {self.request_id} user={self.user} status={self.status}"


class LogSearch(TaskFamily):
    """A generated server log of one day: the gateway logs each request as it arrives (request ID, method, path,
    client IP), the service handling it logs it a few lines later (level from its status, user, status), and
    background jobs log short lines among them. The question asks, of one request named by its unique ID, the
    user, the client IP, the status or the time its service logged it; or the time of the single FATAL line (no
    other line is FATAL). The asked request's two lines and the FATAL line sit at RULER's depths among the lines
    kept, and times are given to lines by position, so they increase down the log whatever its length.

    A request line takes up to 36 tokens, more than the 5 % of a 512-token prompt that the length fit may leave
    unfilled, so the log grows by short system lines (20 tokens at most) too: size `(TAIL_LINES + 1) * n + m` keeps
    `n` lines and then `m` system lines of its own, and one more unit of size adds at most one system line.
    """

    name = "log_search"
    metric = "string_match"
    max_new_tokens = 16
    description = "A detail of one request (user, IP, status, time), or the time of the one fatal error, in a long log."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        num_requests = int(slot.context_length * LINES_PER_TOKEN) // 2 + 1
        request_ids = [f"{number:06x}" for number in rng.sample(range(16**5, 16**6), num_requests)]
        users = [f"{first[0]}{last}".lower() for first, last in map(str.split, person_names(rng, 40))]
        ips = client_ips(rng, 30)
        target, *others = [
            Request(
                request_id,
                rng.choice(METHODS),
                rng.choice(SERVICES),
                rng.choice(ips),
                rng.choice(users),
                rng.choice(list(STATUSES)),
            )
            for request_id in request_ids
        ]
        fatal = rng.choice(FATAL_LINES)

        # Keyed by position: gateway lines 2 apart, each service line up to 4 requests after its gateway line.
        keyed = [
            (2 * i + delay, line)
            for i, request in enumerate(others)
            for delay, line in [(0, request.arrival), (rng.randint(1, 8), request.handled)]
        ]
        for _ in range(len(others) // REQUEST_LINES_PER_SYSTEM_LINE):
            keyed.append((rng.randrange(2 * len(others)), system_line(rng)))
        bodies = [body for _, body in sorted(keyed, key=lambda item: item[0])]
        tail = [system_line(rng) for _ in range(TAIL_LINES)]
        inserts = [target.arrival, target.handled, fatal]
        arrival_depth = rng.choice(DEPTHS[:-1])
        depths = [arrival_depth, min(100, arrival_depth + rng.randint(1, 5)), rng.choice(DEPTHS)]

        start = rng.randrange(LATEST_START_SECONDS)
        seconds = [
            start + offset
            for offset in sorted(rng.sample(range(4 * len(bodies)), len(bodies) + len(inserts) + TAIL_LINES))
        ]
        times = [str(datetime.timedelta(seconds=second)).zfill(8) for second in seconds]
        date = datetime.date(2021, 1, 1) + datetime.timedelta(days=rng.randrange(4 * 365))

        by_id = f"request {target.request_id}"
        questions = [
            (f"Which user sent {by_id}?", target.user),
            (f"From which IP address did {by_id} come?", target.ip),
            (f"Which HTTP status did the {target.service} service return for {by_id}?", target.status),
            (f"At what time did the {target.service} service log {by_id}?", target.handled),
            ("At what time was the only FATAL line logged?", fatal),
        ]
        kind = rng.randrange(len(questions))
        question, asked = questions[kind]
        # The last two ask for the time of a line, which its position gives it.
        asks_time = kind >= 3
        question += " Answer with the value only, as written in the log."
        intro = f"Below is the log of a web application's servers on {date.isoformat()}, one entry per line.\n\n"

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            kept, tail_kept = divmod(size, TAIL_LINES + 1)
            lines = insert_at_depths(bodies[:kept], inserts, depths) + tail[:tail_kept]
            text = "\n".join(f"{time} {body}" for time, body in zip(times[: len(lines)], lines, strict=True))
            return intro + text, question, (times[lines.index(asked)] if asks_time else asked,)

        yield Draft(render, max_size=(TAIL_LINES + 1) * len(bodies))
