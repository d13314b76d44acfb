"""The llm generator: asks any OpenAI-compatible endpoint for new requests per category.

Calls run concurrently (bounded by a semaphore) and are retried with exponential backoff and
jitter on 429/5xx, timeouts and connection errors, honouring ``Retry-After``. Malformed replies
are retried, then skipped and counted. Successful replies are cached on disk under the sha256
of (endpoint, model, messages, params), so a rerun makes no requests. The endpoint's own refusals (in the
text, a ``refusal`` field, a ``content_filter`` finish, or a 400 from its content filter) are
dropped and counted. Restricted exchanges ask for *skeletons* with [PLACEHOLDER] markers, rendered like the
offline generator's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from charter.constitution.model import Category, Constitution
from charter.data.base import Generator
from charter.data.records import Label, Record
from charter.data.skeleton import MARKER, render_skeleton
from charter.data.splits import split_of, sub_seed
from charter.endpoints import (
    Backoff,
    MalformedCompletion,
    ReplyTooLarge,
    aread_capped,
    attempt_deadline,
    base_url_problem,
    bearer,
    completion,
    redact_url,
    retry_after_seconds,
    retryable,
    shown_url,
)
from charter.errors import GeneratorError

_SURROGATE = re.compile("[\ud800-\udfff]")
log = logging.getLogger("charter.data.llm")

_REFUSAL = re.compile(
    r"^\W*(i\s*(?:am|'m)\s+(?:sorry|afraid|unable|not able)|i\s+(?:can(?:no|')?t|won't|will not|must decline)"
    r"|sorry,?\s+(?:but\s+)?i|as an ai\b|i apologi[sz]e|unfortunately,?\s+i\s+(?:can|am)"
    r"|(?:i'm|i am) not (?:comfortable|going to))",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """True for replies that open like an assistant refusal ("I can't help with that")."""
    return bool(_REFUSAL.match(text.strip().replace("\u2019", "'")))


#: a refused task: "can't help", "unable to provide", "not comfortable writing", "won't do that"
_REFUSED_TASK = re.compile(
    r"\b(?:can(?:no|')?t|won't|will not|unable to|not able to|not going to|not comfortable|decline to)\s+(?:\w+\s+)?"
    r"(?:help|assist|provid|comply|fulfil|generat|creat|writ|produc|shar|support|engag|answer|giv|do (?:that|this|so)\b)",
    re.IGNORECASE,
)


def is_refused_item(text: str) -> bool:
    """True for a generated request or answer that is the endpoint refusing, not data: an opening of
    :func:`is_refusal` that refuses a task ("I'm sorry, but I can't help with that") or says no more
    ("Sorry, I can't."). Users open requests that way too ("I can't log in to my email, what do I do?",
    "I'm afraid of flying"): those stay."""
    t = text.strip().replace("\u2019", "'")
    if not _REFUSAL.match(t):
        return False
    return (len(t.split()) <= 6 and "?" not in t) or bool(_REFUSED_TASK.search(t[:160]))


#: what --api-key-env must look like: an environment variable's name
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Malformed(Exception):
    pass


class _Refused(Exception):
    """A completion the endpoint marked as refused (a ``refusal`` field, a ``content_filter`` finish)."""


#: error codes of a prompt refused by the provider's content policy (Azure OpenAI, OpenAI)
_POLICY_CODES = frozenset({"content_filter", "content_policy_violation", "invalid_prompt", "responsibleaipolicyviolation"})


def _policy_refusal(r: httpx.Response) -> bool:
    """Whether a 400 is the provider's content filter refusing the prompt (a restricted category's, as a
    rule): a refusal of that batch, not a broken request that should stop the run."""
    try:
        err = r.json().get("error")
    except (ValueError, AttributeError, RecursionError):
        return False
    if not isinstance(err, dict):
        return False
    inner = err.get("innererror")
    codes = [err.get("code"), err.get("type"), inner.get("code") if isinstance(inner, dict) else None]
    return any(isinstance(c, str) and c.lower() in _POLICY_CODES for c in codes)


@dataclass(frozen=True)
class Job:
    category: Category
    mode: str  # "requests" | "exchanges"
    count: int
    batch: int


def _train_examples(cat: Category, kind: str = "req", k: int = 5) -> list[str]:
    """Up to ``k`` of the category's train-split request (``req``) or response (``resp``) seeds: a
    model shown held-out seeds would write near-copies of them into training data, and the
    held-out numbers would lie."""
    seeds = cat.seeds.requests if kind == "req" else cat.seeds.responses
    return [s.text for i, s in enumerate(seeds) if split_of(f"{cat.id}:{kind}:{i}") == "train"][:k]


def _train_exchanges(cat: Category, k: int) -> list[dict[str, str]]:
    """Up to ``k`` of the category's train-split seed exchanges, as the ``{"request", "response"}``
    objects the model is asked to write (split by ``CATEGORY:ex:I``, as the offline generator does)."""
    return [{"request": e.user, "response": e.reply} for i, e in enumerate(cat.seeds.exchanges)
            if split_of(f"{cat.id}:ex:{i}") == "train"][:k]


def _line(text: str) -> str:
    """``text`` on one line: a seed's or rule's line break must not start a line of the prompt's own
    (a seed reading "...\nKind: PERMITTED" or "\nBatch 0. Write only ..." would rewrite the request)."""
    return " ".join(text.splitlines())


def _prompt(job: Job, seed: int) -> list[dict[str, str]]:
    cat = job.category
    # a category may hold seed exchanges only (the wellbeing constitution): their user turns stand in
    users = _train_examples(cat) or [x["request"] for x in _train_exchanges(cat, 5)]
    examples = "\n".join(f"- {_line(t)}" for t in users) or "- (none)"
    rules = "\n".join(f"- {_line(r)}" for r in cat.rules) or "- (none)"
    kind = "RESTRICTED (the deployment must block these)" if cat.restricted else "PERMITTED (the deployment must answer these)"
    if job.mode == "requests":
        ask = (
            f"Write {job.count} new, diverse user requests that belong to this category. Vary length, tone, "
            'persona and phrasing. Reply with only a JSON list of strings.'
        )
    elif cat.restricted:
        ask = (
            f"Write {job.count} new user requests in this category, each with a response SKELETON that shows the "
            "shape of a compliant answer with every operational detail replaced by an [UPPER_SNAKE] placeholder "
            'such as [MATERIAL_1] or [PROCESS_STEP]. Never include real details. Reply with only a JSON list of '
            'objects {"request": ..., "response": ...}.'
        )
    else:
        ask = (
            f"Write {job.count} new user requests in this category, each with a helpful answer. Reply with only a "
            'JSON list of objects {"request": ..., "response": ...}.'
        )
    if job.mode == "exchanges" and (pairs := _train_exchanges(cat, 2)):
        # the category's label is a property of the reply: show whole exchanges
        ask += "\nExample exchanges:\n" + "\n".join(json.dumps(x, ensure_ascii=False) for x in pairs)
    elif job.mode == "exchanges" and (shapes := _train_examples(cat, "resp", 2)):
        ask += "\nExample responses (" + ("skeletons" if cat.restricted else "answers") + "):\n" + "\n".join(f"- {t}" for t in shapes)
    system = "You generate synthetic training data for a safety classifier. Follow the output format exactly."
    user = (
        f"Category: {_line(cat.name)} ({cat.id})\nKind: {kind}\nDescription: {_line(cat.description)}\nRules:\n{rules}\n"
        f"Examples:\n{examples}\n\nBatch {job.batch} (seed {seed}). {ask}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _embedded_json(text: str) -> Any:
    """The JSON list (or object) a chatty reply wraps in prose; raise _Malformed if there is none."""
    for open_, close in (("[", "]"), ("{", "}")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            try:
                return json.loads(text[i : j + 1])
            except (ValueError, RecursionError):
                continue
    raise _Malformed("not JSON")


def parse_items(content: str, mode: str) -> list[tuple[str, str | None]]:
    """Parse a reply into (request, response) pairs; raise _Malformed on the wrong shape."""
    text = content.strip()
    if text.startswith("```"):  # a fenced reply; sliced, not a regex (a long whitespace run was quadratic)
        text = text[3:].lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").strip()
        if text.endswith("```"):
            text = text[:-3].rstrip()
    try:
        data = json.loads(text)
    except RecursionError:
        raise _Malformed("JSON nested too deeply") from None
    except ValueError:
        data = _embedded_json(text)  # "Here are the requests: [...]": the list inside the prose
    if isinstance(data, dict):  # {"requests": [...]} and similar wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list) or not data:
        raise _Malformed("not a non-empty JSON list")
    out: list[tuple[str, str | None]] = []
    for item in data:
        if mode == "requests" and isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict) and isinstance(item.get("request"), str):
            resp = item.get("response")
            if mode == "exchanges" and not isinstance(resp, str):
                raise _Malformed("exchange item without a string 'response'")
            out.append((item["request"], resp if mode == "exchanges" else None))
        else:
            raise _Malformed(f"unexpected item type {type(item).__name__}")
    return out


def _without_key(text: str, client: httpx.AsyncClient) -> str:
    """``text`` with the bearer key the client sends masked (some servers echo it in their errors)."""
    key = client.headers.get("authorization", "").partition(" ")[2].strip()
    return text.replace(key, "[redacted]") if key else text


class LLMGenerator(Generator):
    name = "llm"
    regenerate_on_shortfall = False  # a rerun with a larger n writes new prompts: every request paid again

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int = 4,
        cache_dir: Path | None = None,
        batch_size: int = 20,
        exchange_share: float = 0.3,
        temperature: float = 1.0,
        max_retries: int = 5,
        malformed_retries: int = 2,
        timeout: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_item_chars: int = 20_000,
    ) -> None:
        super().__init__()
        if problem := base_url_problem(base_url):
            raise GeneratorError(f"--base-url {problem}, e.g. http://127.0.0.1:8000/v1 (got {shown_url(base_url)!r})")
        if api_key_env is not None and not _ENV_NAME.fullmatch(api_key_env):
            # never echo it: a value that is no variable name is most likely the key itself
            raise GeneratorError("--api-key-env takes the name of an environment variable holding the key, not the key")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = max(1, concurrency)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.exchange_share = exchange_share
        self.temperature = temperature
        self.max_retries = max_retries
        self.malformed_retries = malformed_retries
        self.timeout = timeout
        self._backoff = Backoff(backoff, max_backoff)
        self._sleep = sleep
        #: a request or response longer than this is dropped (counted as too_long_items)
        self.max_item_chars = max_item_chars
        #: called with (jobs done, jobs in all) as each batch request finishes, for a progress display
        self.on_job: Callable[[int, int], None] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "base_url": redact_url(self.base_url), "model": self.model, "api_key_env": self.api_key_env,
            "concurrency": self.concurrency, "batch_size": self.batch_size, "temperature": self.temperature,
            "exchange_share": self.exchange_share, "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "max_item_chars": self.max_item_chars, "timeout": self.timeout,
        }

    # -------------------------------------------------------------- planning

    def _jobs(self, c: Constitution, n: int) -> list[Job]:
        n_ex = round(n * self.exchange_share)
        per_in = max(1, round((n - n_ex) / len(c.categories)))
        per_ex = max(1, round(n_ex / len(c.categories)))
        jobs: list[Job] = []
        for cat in c.categories:
            # a category of seed exchanges only labels replies, not requests: its whole share is exchanges
            only_ex = not cat.seeds.requests and bool(cat.seeds.exchanges)
            for mode, total in ((("exchanges", per_in + per_ex),) if only_ex else (("requests", per_in), ("exchanges", per_ex))):
                for b, start in enumerate(range(0, total, self.batch_size)):
                    jobs.append(Job(cat, mode, min(self.batch_size, total - start), b))
        return jobs

    # -------------------------------------------------------------- HTTP

    def _headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise GeneratorError(f"environment variable {self.api_key_env} (--api-key-env) is not set")
        return bearer(key, f"in {self.api_key_env} (--api-key-env)")

    async def _complete(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> str:
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                deadline = attempt_deadline(client.timeout)
                async with client.stream("POST", url, json=payload) as raw:
                    r = await aread_capped(raw, deadline=deadline)
            except ReplyTooLarge as e:
                raise GeneratorError(f"LLM endpoint {redact_url(url)}: {e}") from None
            except httpx.TimeoutException:
                last = "timed out"
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            except httpx.RequestError as e:  # an undecodable body, say: not transient, and no traceback
                raise GeneratorError(f"LLM endpoint {redact_url(url)}: unreadable reply ({type(e).__name__})") from None
            else:
                if r.status_code == 200:
                    try:
                        choice = completion(r)
                    except MalformedCompletion as e:
                        raise _Malformed(str(e)) from None
                    msg = choice.body["choices"][0].get("message")
                    if choice.finish_reason == "content_filter" or (
                            not choice.text.strip() and isinstance(msg, dict) and msg.get("refusal")):
                        raise _Refused()
                    return choice.text
                if r.status_code == 400 and _policy_refusal(r):
                    raise _Refused()
                if not retryable(r.status_code):
                    raise GeneratorError(f"LLM endpoint {redact_url(url)} returned HTTP {r.status_code}: "
                                         f"{_without_key(r.text, client)[:200]}")
                last = f"HTTP {r.status_code}"
                retry_after = retry_after_seconds(r.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            wait = self._backoff.wait(attempt, retry_after)
            self.stats["retries"] += 1
            log.info("LLM request failed (%s); retry %d/%d in %.2fs", last, attempt + 1, self.max_retries, wait)
            await self._sleep(wait)
        raise GeneratorError(f"LLM endpoint {redact_url(url)} failed after {self.max_retries + 1} attempts (last error: {last})")

    def _check_cache_dir(self) -> None:
        """Refuse, before any paid request, a --cache-dir that cannot be written (a file, a read-only place)."""
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.cache_dir).close()
        except OSError as e:
            raise GeneratorError(f"--cache-dir {self.cache_dir}: cannot write there ({e.strerror or e})") from None

    def _cache_path(self, payload: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        # the endpoint is part of the key (credentials masked): one model name served by two providers
        # gives two different replies, and one must not be replayed as the other's
        keyed = {"endpoint": redact_url(self.base_url), "payload": payload}
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    async def _run_job(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, job: Job, seed: int) -> list[tuple[str, str | None]]:
        payload = {"model": self.model, "messages": _prompt(job, seed), "temperature": self.temperature, "seed": seed}
        cache = self._cache_path(payload)
        if cache is not None and cache.exists():
            try:
                items = parse_items(json.loads(cache.read_text(encoding="utf-8"))["content"], job.mode)
            except (OSError, ValueError, KeyError, TypeError, RecursionError, _Malformed):  # a damaged entry: ask again, then overwrite it
                self.stats["bad_cache_entries"] += 1
            else:
                self.stats["cache_hits"] += 1
                return items
        for _ in range(self.malformed_retries + 1):
            async with sem:
                try:
                    content = await self._complete(client, payload)
                except _Malformed:
                    self.stats["malformed_replies"] += 1
                    continue
                except _Refused:  # as a refusal in the text: asking again would pay for the same answer
                    self.stats["refused_replies"] += 1
                    return []
            try:
                items = parse_items(content, job.mode)
            except _Malformed:
                if is_refusal(content):  # the endpoint refused the whole batch
                    self.stats["refused_replies"] += 1
                    return []
                self.stats["malformed_replies"] += 1
                continue
            if cache is not None:
                tmp = cache.with_suffix(".tmp")
                try:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp.write_text(json.dumps({"content": content}))
                    tmp.replace(cache)
                except OSError as e:  # a full disk costs the cache entry, never the paid reply or the run
                    self.stats["cache_write_errors"] += 1
                    log.warning("could not write the reply cache (%s)", e.strerror or e)
            return items
        self.stats["skipped_jobs"] += 1
        log.warning("skipping a %s batch for %s: malformed replies", job.mode, job.category.id)
        return []

    async def _run(self, jobs: list[Job], seed: int) -> list[list[tuple[str, str | None]]]:
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)
        done = 0

        async def one(client: httpx.AsyncClient, job: Job) -> list[tuple[str, str | None]]:
            nonlocal done
            items = await self._run_job(client, sem, job, seed)
            done += 1
            if self.on_job is not None:
                self.on_job(done, len(jobs))
            return items

        async with httpx.AsyncClient(headers=self._headers(), timeout=httpx.Timeout(self.timeout), limits=limits) as client:
            tasks = [asyncio.ensure_future(one(client, j)) for j in jobs]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                # one job failed for good: stop the others (no more paid requests) and let them
                # finish cancelling before the client closes under them
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    # -------------------------------------------------------------- records

    def generate(
        self, constitution: Constitution, n: int, seed: int, holdout: frozenset[str] = frozenset()
    ) -> Iterator[Record]:
        jobs = self._jobs(constitution, n)
        self._check_cache_dir()
        results = asyncio.run(self._run(jobs, seed))
        rng = random.Random(sub_seed(seed, "llm-render"))
        counters: dict[str, int] = {}
        for job, items in zip(jobs, results, strict=True):
            cat = job.category
            label: Label = "restricted" if cat.restricted else "permitted"
            if len(items) > 2 * job.count:  # one reply must not outweigh its category's other batches
                self.stats["extra_items"] += len(items) - 2 * job.count
                items = items[: 2 * job.count]
            for request, response in items:
                request = request.strip()
                response = response.strip() if response is not None else None
                if not request or response == "":
                    self.stats["empty_items"] += 1
                    continue
                if _SURROGATE.search(request) or (response is not None and _SURROGATE.search(response)):
                    self.stats["malformed_items"] += 1  # a "\ud800" escape: text no UTF-8 writer can encode
                    continue
                if is_refused_item(request) or (response is not None and is_refused_item(response)):
                    self.stats["refused_items"] += 1
                    continue
                if max(len(request), len(response or "")) > self.max_item_chars:
                    self.stats["too_long_items"] += 1
                    continue
                if response is not None and cat.restricted and not MARKER.search(response):
                    # a restricted reply must be a skeleton: one without a [PLACEHOLDER] may carry
                    # the real details the prompt forbids, so it never enters the data
                    self.stats["no_placeholder_items"] += 1
                    continue
                sid = f"{cat.id}:llm:{hashlib.sha256(request.encode()).hexdigest()[:12]}"
                i = counters.get(sid, 0)
                counters[sid] = i + 1
                if response is not None and cat.restricted:
                    response = render_skeleton(response, rng)
                yield Record(
                    id=f"{sid}:{i}",
                    text=request,
                    response=response,
                    label=label,
                    category=cat.id,
                    kind="input" if response is None else "exchange",
                    seed_id=sid,
                    split=split_of(sid),
                    format="question" if request.endswith("?") else "instruction",
                    source="llm",
                )
