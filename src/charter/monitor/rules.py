"""Rolling-window misuse rules over the event store, and the engine that runs them.

Each rule reads the recent events (one bounded query per evaluation, shared by all rules) and
returns :class:`~charter.monitor.alerts.Alert` s. The engine stores them de-duplicated
(``store.upsert_alert`` by the alert's stable key; an evaluation that finds no new evidence
changes nothing) and hands the new ones to the sinks (log, webhook). Built-in rules:

``repeated_flags``  one user sends many flagged or near-threshold requests in one category;
``probing``         one user tries many obfuscation views (base64, rot13, leet, ...) on one category;
``escalation``      a conversation's scores rise turn over turn up to (near) the threshold;
``decomposition``   individually permitted requests that are restricted when read together;
``block_rate_spike`` the global block rate jumps above its baseline.

Settings live under ``monitor:`` in charter.yaml (or a file for ``charter monitor alerts
--config``)::

    monitor:
      interval_s: 60
      rules:
        repeated_flags: {min_count: 8}
        probing: {enabled: false}
      sinks: [{type: log}, {type: store}, {type: webhook, url_env: ALERT_WEBHOOK_URL}]

Third-party rules register in the entry-point group ``charter.monitor_rules`` (a :class:`Rule`
subclass; ``name = "pkg.module:MyRule"``); their settings validate against their ``Settings``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from charter.monitor.alerts import (
    Alert,
    AlertSink,
    LogSinkSettings,
    Severity,
    SinkSettings,
    StoreSinkSettings,
    build_sinks,
    sink_name,
)
from charter.monitor.content import last_user_text
from charter.registry import Registry

if TYPE_CHECKING:
    from charter.guard import Guard
    from charter.monitor.store import EventStore, StoredEvent

log = logging.getLogger("charter.monitor")

BLOCKED = ("blocked_input", "blocked_output")
#: alerts kept per sink for redelivery after a failure; beyond it the oldest are dropped (logged)
MAX_PENDING_ALERTS = 1000
#: without a store sink: a key notified again for new evidence once its last notice is this old (s)
RENOTIFY_S = 86_400.0
MAX_REMEMBERED = 100_000  # dedupe keys remembered without a store (oldest notice dropped first)
MAX_EVIDENCE_IDS = 1000
#: turn scores (escalation) and views (probing) an alert lists: a conversation of thousands of turns, or
#: an attacker's thousands of transform chains, put every one in the stored alert and each webhook post
MAX_LISTED_SCORES = 50
#: characters of each event's last user message that rules read (decomposition joins at most 20,000)
MAX_RULE_TEXT = 20_000
_SEVERITY = {"low": 1, "medium": 2, "high": 3}
#: views that are not obfuscations: the text as sent, and the guard's per-turn views of a transcript
#: or a conversation (as a prefix, "last_turn+leet", they say where the obfuscation sat)
PLAIN_VIEWS = frozenset({"original", "last_turn", "asker_turns", "last_user", "folded"})
#: the transform family behind a normalisation view (for evidence; rules count distinct views)
VIEW_FAMILIES = {
    "base64": "encoding", "hex": "encoding", "url": "encoding", "rot13": "cipher", "caesar": "cipher",
    "atbash": "cipher", "reverse": "cipher", "morse": "cipher", "pseudo_language": "cipher", "leet": "leetspeak",
    "confusables": "homoglyph", "invisible_stripped": "invisible", "tag_payload": "invisible",
    "spacing": "spacing", "keyword_legend": "substitution", "payload_split": "structural",
    "unscrambled": "noise", "segments": "cipher",
}  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleSettings(_Strict):
    """What every rule accepts; rules subclass it with their own thresholds."""

    enabled: bool = True
    #: the rolling window the rule reads, in seconds
    window_s: float = Field(3600.0, gt=0, le=30 * 86400)
    #: force this severity instead of the rule's own grading
    severity: Severity | None = None


# ---------------------------------------------------------------------------- context


@dataclass
class RuleContext:
    """What a rule sees: the store, the evaluation time, the recent events and (maybe) a guard."""

    store: EventStore
    now: float
    settings: MonitorSettings
    recent: list[StoredEvent]
    guard_provider: Callable[[], Guard | None] = lambda: None
    rescore_cache: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def events(self, window_s: float) -> list[StoredEvent]:
        """Events of the last ``window_s`` seconds, oldest first (bounded by ``monitor.max_events``)."""
        cut = self.now - window_s
        return [e for e in self.recent if e.ts >= cut]

    def guard(self) -> Guard | None:
        return self.guard_provider()

    def evidence(self, events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
        """Evidence entries for ``events``: the newest ``monitor.max_evidence``, oldest first."""
        evs = sorted(events, key=lambda e: e.ts)[-self.settings.max_evidence:]
        return [evidence_entry(e) for e in evs]


def evidence_entry(e: StoredEvent) -> dict[str, Any]:
    """One event as alert evidence: ids, time, decision, score, category, view (never message text)."""
    top = dict(sorted((e.scores or {}).items(), key=lambda kv: -kv[1])[:3])
    return {"kind": "event", "request_id": e.request_id, "time": e.ts, "user_id": e.user_id,
            "conversation_id": e.conversation_id, "decision": e.decision, "flagged": e.flagged,
            "score": e.score, "threshold": e.threshold, "category": e.category, "view": e.view, "scores": top}


def is_near(e: StoredEvent, fraction: float) -> bool:
    """Flagged, or scored at least ``fraction`` of its own threshold."""
    if e.flagged:
        return True
    return e.score is not None and bool(e.threshold) and e.score >= fraction * float(e.threshold or 0)


def obfuscation_view(view: str | None) -> str | None:
    """The obfuscation a view names ('caesar7@1' -> 'caesar'), or None for plain views."""
    if not view:
        return None
    parts = view.split("@", 1)[0].split("+")
    while parts and parts[0] in PLAIN_VIEWS:  # "last_turn+leet": leetspeak, wherever it sat
        parts = parts[1:]
    if not parts:
        return None
    if parts[0].startswith("caesar"):
        parts[0] = "caesar"
    return "+".join(parts)


def view_family(view: str) -> str:
    head = view.split("+", 1)[0]
    return "translation" if head.startswith("translation_") else VIEW_FAMILIES.get(head, head)


def _rounded(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(float(x), n)


# ---------------------------------------------------------------------------- rules


class Rule(ABC):
    """A misuse rule: ``evaluate(ctx)`` returns alerts for the events in its window."""

    name: ClassVar[str]
    #: the rule's settings model (``enabled``, ``window_s``, ``severity`` and its thresholds)
    Settings: ClassVar[type[RuleSettings]] = RuleSettings
    #: True when the rule reads events' stored text (``StoredEvent.text``): only then does an evaluation
    #: load the conversations, which can be large (user rules that read text must set it)
    needs_text: ClassVar[bool] = False

    def __init__(self, settings: RuleSettings) -> None:
        self.settings = settings

    def severity(self, graded: Severity) -> Severity:
        return self.settings.severity or graded

    @abstractmethod
    def evaluate(self, ctx: RuleContext) -> list[Alert]: ...


def _rule_problem(cls: type) -> str | None:
    """What keeps a plugin class from working as a monitoring rule, or None."""
    if not issubclass(cls, Rule):
        return "is not a subclass of charter.monitor.rules.Rule"
    if inspect.isabstract(cls):
        return f"is abstract (it does not implement {', '.join(sorted(cls.__abstractmethods__))})"
    if not (isinstance(cls.Settings, type) and issubclass(cls.Settings, RuleSettings)):
        return "has a Settings that is not a charter.monitor.rules.RuleSettings subclass"
    return None


RULES: Registry[type[Rule]] = Registry("charter.monitor_rules", builtins="charter.monitor.rules", check=_rule_problem)


def _by(events: Iterable[StoredEvent], key: Callable[[StoredEvent], Any]) -> dict[Any, list[StoredEvent]]:
    out: dict[Any, list[StoredEvent]] = defaultdict(list)
    for e in events:
        k = key(e)
        if k is not None:
            out[k].append(e)
    return out


@RULES.register()
class RepeatedFlags(Rule):
    """One user, many flagged or near-threshold requests in one category (subject: the user).

    Defaults: 5 requests within an hour, each flagged or scoring at least 0.8 of its threshold.
    On the packaged guard everyday questions stay below ~0.7 of the threshold, and its ~1-2%
    false-positive rate makes five hits in an hour from one benign user very unlikely.
    """

    name = "repeated_flags"

    class Settings(RuleSettings):
        #: an unflagged request counts as near when its score is at least this fraction of its
        #: threshold; 0.8 sits above the default guard's benign single requests (at most ~0.7 on
        #: everyday questions) while catching rephrasings just under the line
        near_fraction: float = Field(0.8, gt=0, le=1)
        #: requests in the window before it fires: a handful of borderline requests is noise
        #: (the guard's ~1-2% false-positive rate), five in an hour in one category is a pattern
        min_count: int = Field(5, ge=1)

    def evaluate(self, ctx: RuleContext) -> list[Alert]:
        s = self.settings
        assert isinstance(s, RepeatedFlags.Settings)
        hits = [e for e in ctx.events(s.window_s) if is_near(e, s.near_fraction)]
        out = []
        for (user, cat), evs in _by(hits, lambda e: (e.user_id, e.category or "unknown")).items():
            if len(evs) < s.min_count:
                continue
            nf = sum(e.flagged for e in evs)
            out.append(Alert(
                rule=self.name, subject_kind="user", subject_id=user, category=cat,
                severity=self.severity("high" if len(evs) >= 2 * s.min_count else "medium"),
                summary=f"{len(evs)} flagged or near-threshold requests in {cat} ({nf} flagged) "
                        f"within {s.window_s:g} s",
                events=ctx.evidence(evs), first_seen=evs[0].ts, last_seen=evs[-1].ts,
                stats={"count": len(evs), "flagged": nf, "near_fraction": s.near_fraction, "min_count": s.min_count,
                       "window_s": s.window_s, "max_score": _rounded(max((e.score or 0) for e in evs))}))
        return out


@RULES.register()
class Probing(Rule):
    """One user trying many obfuscations (event ``view``) on one category (subject: the user).

    Defaults: 3 distinct obfuscation views within an hour, on requests flagged or at least 0.8
    of the threshold. Plain views (original, per-turn) do not count, caesar shifts count once.
    """

    name = "probing"

    class Settings(RuleSettings):
        #: only requests at least this fraction of their threshold (or flagged) count as aimed at a category
        near_fraction: float = Field(0.8, gt=0, le=1)
        #: distinct obfuscation views (base64, rot13, leet, confusables, ...) before it fires:
        #: benign users rarely send encoded text at all, and one or two encodings can be
        #: curiosity; three different ones at the same restricted category is a search
        min_views: int = Field(3, ge=2)

    def evaluate(self, ctx: RuleContext) -> list[Alert]:
        s = self.settings
        assert isinstance(s, Probing.Settings)
        hits = [e for e in ctx.events(s.window_s) if obfuscation_view(e.view) and is_near(e, s.near_fraction)]
        out = []
        for (user, cat), evs in _by(hits, lambda e: (e.user_id, e.category or "unknown")).items():
            views = sorted({obfuscation_view(e.view) or "" for e in evs})
            if len(views) < s.min_views:
                continue
            fams = sorted({view_family(v) for v in views})
            # an attacker's transform chains can each be a new view: list a bounded number of them
            shown = ", ".join(views[:10]) + (f", and {len(views) - 10} more" if len(views) > 10 else "")
            out.append(Alert(
                rule=self.name, subject_kind="user", subject_id=user, category=cat,
                severity=self.severity("high" if len(views) >= 2 * s.min_views or any(e.flagged for e in evs) else "medium"),
                summary=f"{len(views)} obfuscations ({shown}) aimed at {cat} in {len(evs)} requests",
                events=ctx.evidence(evs), first_seen=evs[0].ts, last_seen=evs[-1].ts,
                stats={"views": views[:MAX_LISTED_SCORES], "distinct_views": len(views),
                       "families": fams[:MAX_LISTED_SCORES], "requests": len(evs), "min_views": s.min_views,
                       "window_s": s.window_s}))
        return out


@RULES.register()
class UserRotation(Rule):
    """One client key whose end users each send one or two requests, most of them flagged or near the
    threshold in one category (subject: the key). A key holder who sets a fresh ``user`` on every
    request is a new user to the per-user rules each time; this reads the key instead.

    Defaults: at least 5 such users within an hour, and at least a quarter of the key's users with that
    few requests being such users. A busy application's key has many one-request users, but with the
    packaged guard's ~1-2% false-positive rate only a few of them come near the threshold.
    """

    name = "user_rotation"

    class Settings(RuleSettings):
        near_fraction: float = Field(0.8, gt=0, le=1)
        #: users with at most this many requests in the window count as one-off
        max_requests: int = Field(2, ge=1)
        #: one-off users whose every request is flagged or near, in one category, before it fires
        min_users: int = Field(5, ge=2)
        #: ...and their share of the key's one-off users
        min_share: float = Field(0.25, gt=0, le=1)

    def evaluate(self, ctx: RuleContext) -> list[Alert]:
        s = self.settings
        assert isinstance(s, UserRotation.Settings)
        out = []
        for key, evs in _by(ctx.events(s.window_s), lambda e: e.key_id if e.user_id != e.key_id else None).items():
            users = {u: ues for u, ues in _by(evs, lambda e: e.user_id).items() if len(ues) <= s.max_requests}
            hits = _by([ues[-1] for ues in users.values() if all(is_near(e, s.near_fraction) for e in ues)],
                       lambda e: e.category or "unknown")
            for cat, last in hits.items():
                if len(last) < s.min_users or len(last) < s.min_share * len(users):
                    continue
                used = sorted((e for x in last for e in users[x.user_id]), key=lambda e: e.ts)
                nf = sum(e.flagged for e in used)
                out.append(Alert(
                    rule=self.name, subject_kind="key", subject_id=key, category=cat,
                    severity=self.severity("high" if len(last) >= 2 * s.min_users else "medium"),
                    summary=f"{len(last)} end users with {s.max_requests} or fewer requests each, all flagged or "
                            f"near-threshold in {cat} ({nf} flagged), of {len(users)} such users of this key",
                    events=ctx.evidence(used), first_seen=used[0].ts, last_seen=used[-1].ts,
                    stats={"users": len(last), "one_off_users": len(users), "flagged": nf, "min_users": s.min_users,
                           "min_share": s.min_share, "window_s": s.window_s}))
        return out


@RULES.register()
class Escalation(Rule):
    """A conversation whose scores rise turn over turn up to (near) the threshold (subject: it).

    The sequence is read up to its peak. Defaults: at least 4 turns to the peak, the peak at
    0.9 of its threshold or flagged, 0.3 gained from the lowest earlier turn, and at least 60%
    of the steps going up. Benign chats on the packaged guard wander by 0.3-0.5 within two or
    three turns, which is why a trend needs four.
    """

    name = "escalation"

    class Settings(RuleSettings):
        #: turns up to and including the peak: on the default guard, benign multi-turn chats
        #: wander up and down by 0.3-0.5 over two or three turns, so a trend needs four
        min_turns: int = Field(4, ge=2)
        #: the peak must reach this fraction of its threshold (or be flagged): a rise that ends
        #: well below the line is topic drift, not escalation
        peak_fraction: float = Field(0.9, gt=0, le=1)
        #: score gained from the lowest earlier turn to the peak
        min_rise: float = Field(0.3, gt=0, le=1)
        #: share of turn-over-turn steps up to the peak that go up (one retreat in four is allowed)
        min_rising_share: float = Field(0.6, gt=0, le=1)

    def evaluate(self, ctx: RuleContext) -> list[Alert]:
        s = self.settings
        assert isinstance(s, Escalation.Settings)
        convs = _by(ctx.events(s.window_s), lambda e: (e.user_id, e.conversation_id) if e.conversation_id else None)
        out = []
        for (user, cid), evs in convs.items():
            turns = [e for e in evs if e.score is not None]
            if len(turns) < s.min_turns:
                continue
            scores = [float(e.score or 0) for e in turns]
            k = max(range(len(scores)), key=scores.__getitem__)  # the first turn at the peak
            prefix, peak = scores[: k + 1], turns[k]
            if len(prefix) < s.min_turns or not is_near(peak, s.peak_fraction):
                continue
            rise = prefix[-1] - min(prefix[:-1])
            steps = [b > a for a, b in pairwise(prefix)]
            share = sum(steps) / len(steps)
            if rise < s.min_rise or share < s.min_rising_share:
                continue
            cat = peak.category or "unknown"
            out.append(Alert(
                rule=self.name, subject_kind="conversation", subject_id=cid, category=cat,
                key=f"{self.name}:conversation:{user}/{cid}",
                severity=self.severity("high" if peak.flagged else "medium"),
                summary=f"scores rose over {len(prefix)} turns from {min(prefix[:-1]):.2f} to {prefix[-1]:.2f} "
                        f"({'flagged' if peak.flagged else 'near threshold'}, {cat})",
                events=ctx.evidence(turns[: k + 1]), first_seen=turns[0].ts, last_seen=peak.ts,
                stats={"user_id": user, "turns": len(prefix),
                       "scores": [round(x, 4) for x in prefix[-MAX_LISTED_SCORES:]],
                       "rise": round(rise, 4), "rising_share": round(share, 3), "peak_threshold": peak.threshold,
                       "window_s": s.window_s}))
        return out


@RULES.register()
class Decomposition(Rule):
    """Individually permitted requests that are restricted when read together.

    Subjects: each conversation, then each user (not repeated for a category a conversation
    already raised). Where the content policy kept text and a guard is at hand, windows of 5
    consecutive permitted requests (of the last 20, 3 at least) are joined and re-scored; the
    alert needs the whole flagged while no part was. Otherwise the stored per-category scores
    decide: at least 4 parts sharing a top category whose probabilities sum to 1.0 or more.
    """

    name = "decomposition"
    needs_text = True

    class Settings(RuleSettings):
        #: permitted requests needed before their union is read as one
        min_parts: int = Field(3, ge=2)
        #: consecutive requests read together (a sliding window over the last ``max_parts``)
        window_parts: int = Field(5, ge=2, le=50)
        max_parts: int = Field(20, ge=2, le=200)
        #: the joined text is cut to its last this many characters
        max_chars: int = Field(4000, ge=200, le=20_000)
        #: guard calls per evaluation across all subjects (each joined window is scored once, then cached)
        max_rescores: int = Field(64, ge=1, le=10_000)
        #: without text (content policy none/hash): parts that each put at least this much on one category...
        fallback_min_part_score: float = Field(0.05, gt=0, lt=1)
        #: ...at least this many of them...
        fallback_min_parts: int = Field(4, ge=2)
        #: ...whose probability on it sums to at least this much: about the category mass of one
        #: clearly restricted request, spread over permitted ones. The default guard puts under 0.05 on
        #: a benign request's categories and 0.06-0.34 on a decomposed attack's fragments: the test
        #: suite's seven-part nerve-agent decomposition carries 0.81 over five parts, its benign user
        #: no part over 0.05. A fragment's top category wobbles between guards ("would lab glassware
        #: be enough?" leans self-harm in one, chem in another), so a part counts for every category
        #: it carries, not only its top one
        fallback_min_mass: float = Field(0.7, gt=0)

    def evaluate(self, ctx: RuleContext) -> list[Alert]:
        s = self.settings
        assert isinstance(s, Decomposition.Settings)
        parts = [e for e in ctx.events(s.window_s) if not e.flagged and e.decision == "allowed"]
        guard = ctx.guard() if any(e.text for e in parts) else None
        budget = [s.max_rescores]
        out: list[Alert] = []
        fired: set[tuple[str, str]] = set()
        groups = [("conversation", k, v) for k, v in _by(parts, lambda e: (e.user_id, e.conversation_id)
                                                         if e.conversation_id else None).items()]
        groups += [("user", (k, None), v) for k, v in _by(parts, lambda e: e.user_id).items()]
        for kind, (user, cid), evs in groups:
            evs = evs[-s.max_parts:]
            if len(evs) < s.min_parts:
                continue
            texts = [e for e in evs if e.text]
            found = (self._rescored(ctx, guard, texts, budget) if guard is not None and len(texts) >= s.min_parts
                     else self._mass(evs))
            if found is None:
                continue
            cat, used, stats = found
            if kind == "user" and (user, cat) in fired:
                continue  # already raised for one of this user's conversations
            fired.add((user, cat))
            subject = cid if kind == "conversation" else user
            out.append(Alert(
                rule=self.name, subject_kind=kind, subject_id=subject, category=cat,  # type: ignore[arg-type]
                key=f"{self.name}:{kind}:{user}/{cid}:{cat}" if cid else None,
                severity=self.severity("high" if stats["method"] == "rescore" else "medium"),
                summary=(f"{len(used)} permitted requests read together are {cat}: "
                         + (f"joined score {stats['joined_score']:.2f} >= {stats['threshold']:.2f}, "
                            f"no part above {stats['max_part_score']:.2f}" if stats["method"] == "rescore"
                            else f"category mass {stats['mass']:.2f} over {stats['parts']} parts")),
                events=ctx.evidence(used), first_seen=used[0].ts, last_seen=used[-1].ts,
                stats={**stats, "user_id": user, "window_s": s.window_s}))
        return out

    def _rescored(self, ctx: RuleContext, guard: Guard, evs: list[StoredEvent],
                  budget: list[int]) -> tuple[str, list[StoredEvent], dict[str, Any]] | None:
        """The highest-scoring window of consecutive parts that the guard flags as a whole."""
        s = self.settings
        assert isinstance(s, Decomposition.Settings)
        n, w = len(evs), min(s.window_parts, len(evs))
        step = max(1, w // 2)
        starts = sorted({*range(n - w, -1, -step), 0})
        best: tuple[float, Any, list[StoredEvent]] | None = None
        for i in reversed(starts):  # newest windows first, so the budget goes to current activity
            win = evs[i : i + w]
            key = tuple(e.request_id for e in win)
            v = ctx.rescore_cache.get(key)
            if v is None:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
                v = guard.check_input("\n".join(e.text or "" for e in win)[-s.max_chars:])
                if len(ctx.rescore_cache) > 4096:
                    ctx.rescore_cache.clear()
                ctx.rescore_cache[key] = v
            if v.flagged and (best is None or v.score > best[0]):
                best = (v.score, v, win)
        if best is None:
            return None
        _, v, win = best
        th = guard.input_threshold
        return (v.category or "unknown", win, {
            "method": "rescore", "joined_score": round(v.score, 4), "threshold": th, "parts": len(win),
            "max_part_score": round(max(float(e.score or 0) for e in win), 4), "view": v.view})

    def _mass(self, evs: list[StoredEvent]) -> tuple[str, list[StoredEvent], dict[str, Any]] | None:
        """The category on which the parts that carry some of it carry the most probability mass."""
        s = self.settings
        assert isinstance(s, Decomposition.Settings)
        by_cat: dict[str, list[StoredEvent]] = defaultdict(list)
        for e in evs:
            for cat, x in (e.scores or {}).items():
                if float(x) >= s.fallback_min_part_score:
                    by_cat[cat].append(e)
        best = None
        for cat, ps in by_cat.items():
            mass = sum(float(e.scores[cat]) for e in ps)
            if len(ps) >= s.fallback_min_parts and mass >= s.fallback_min_mass and (best is None or mass > best[0]):
                best = (mass, cat, ps)
        if best is None:
            return None
        mass, cat, ps = best
        return (cat, ps, {"method": "mass", "mass": round(mass, 4), "parts": len(ps),
                          "min_mass": s.fallback_min_mass, "min_part_score": s.fallback_min_part_score,
                          "max_part_score": round(max(float(e.score or 0) for e in ps), 4)})


@RULES.register()
class BlockRateSpike(Rule):
    """The global block rate of the last 5 minutes jumps above that of the hour before.

    Defaults: at least 20 requests and 5 blocks in the recent window, a rate at least 3 times
    the baseline's and 10 points above it. The baseline is smoothed toward a 2% prior worth 20
    requests, so a fresh deployment compares against the guard's expected block rate.
    """

    name = "block_rate_spike"

    class Settings(RuleSettings):
        #: the recent window compared with the baseline
        window_s: float = Field(300.0, gt=0, le=86400)
        #: the baseline: the period just before the recent window
        baseline_s: float = Field(3600.0, gt=0, le=30 * 86400)
        #: requests and blocks the recent window needs before a rate means anything
        min_events: int = Field(20, ge=1)
        min_blocked: int = Field(5, ge=1)
        #: the recent rate must be this many times the baseline rate...
        ratio: float = Field(3.0, ge=1)
        #: ...and this much above it in absolute terms (so 1% -> 3% is no spike)
        min_increase: float = Field(0.1, ge=0, le=1)
        #: the baseline is smoothed toward this prior rate, weighted as this many requests, so a
        #: new deployment with no history compares against the guard's expected block rate (~2%
        #: false positives) instead of zero
        prior_rate: float = Field(0.02, ge=0, le=1)
        prior_weight: float = Field(20.0, ge=0)

    def evaluate(self, ctx: RuleContext) -> list[Alert]:
        s = self.settings
        assert isinstance(s, BlockRateSpike.Settings)
        recent_start = ctx.now - s.window_s
        everything = ctx.store.summary(since=recent_start - s.baseline_s)
        recent = ctx.store.summary(since=recent_start)
        n_r, b_r = recent["events"], recent["blocked"]
        n_b, b_b = everything["events"] - n_r, everything["blocked"] - b_r
        base = (b_b + s.prior_rate * s.prior_weight) / (n_b + s.prior_weight) if n_b + s.prior_weight else 0.0
        rate = b_r / n_r if n_r else 0.0
        if n_r < s.min_events or b_r < s.min_blocked or rate < s.ratio * base or rate - base < s.min_increase:
            return []
        blocked = [e for e in ctx.events(s.window_s) if e.decision in BLOCKED]
        cats: dict[str, int] = defaultdict(int)
        for e in blocked:
            cats[e.category or "unknown"] += 1
        return [Alert(
            rule=self.name, subject_kind="global", subject_id="all",
            severity=self.severity("high" if base == 0 or rate >= 2 * s.ratio * base else "medium"),
            summary=f"block rate {rate:.1%} over the last {s.window_s:g} s ({b_r}/{n_r}) vs baseline {base:.1%}",
            events=ctx.evidence(blocked), first_seen=blocked[0].ts if blocked else recent_start,
            last_seen=blocked[-1].ts if blocked else ctx.now,
            stats={"recent_rate": round(rate, 4), "baseline_rate": round(base, 4), "recent_events": n_r,
                   "recent_blocked": b_r, "baseline_events": n_b, "baseline_blocked": b_b,
                   "by_category": dict(cats), "window_s": s.window_s, "baseline_s": s.baseline_s})]


# ---------------------------------------------------------------------------- settings


def _default_sinks() -> list[Any]:
    return [LogSinkSettings(), StoreSinkSettings()]


class MonitorSettings(_Strict):
    """The ``monitor:`` section: how often the proxy runs the rules, their settings, the sinks."""

    #: seconds between background evaluations in the proxy (0: never; needs ``events.db``)
    interval_s: float = Field(60.0, ge=0)
    #: the most events one evaluation reads (the newest), whatever the windows
    max_events: int = Field(50_000, ge=100, le=2_000_000)
    #: evidence events kept per alert
    max_evidence: int = Field(25, ge=1, le=200)
    #: rule name -> its settings; rules left out run with their defaults
    rules: dict[str, SerializeAsAny[RuleSettings]] = Field(default_factory=dict)
    sinks: list[SinkSettings] = Field(default_factory=_default_sinks)

    @field_validator("rules", mode="before")
    @classmethod
    def _rule_settings(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic reports the type error
        out: dict[str, RuleSettings] = {}
        errors: list[InitErrorDetails] = []
        for name, conf in v.items():
            name = str(name)
            if name not in RULES:
                errors.append({"type": PydanticCustomError("unknown_rule", "unknown rule (known: {known})",
                                                           {"known": ", ".join(RULES.names())}),
                               "loc": (name,), "input": conf})
                continue
            try:
                out[name] = RULES.get(name).Settings.model_validate(conf if conf is not None else {})
            except ValidationError as e:
                errors.extend({"type": err["type"], "loc": (name, *err["loc"]), "input": err["input"],
                               **({"ctx": err["ctx"]} if "ctx" in err else {})}  # type: ignore[typeddict-item]
                              for err in e.errors())
        if errors:
            raise ValidationError.from_exception_data("MonitorSettings", errors)
        return out

    def rule_settings(self, name: str) -> RuleSettings:
        s = self.rules.get(name)
        return s if s is not None else RULES.get(name).Settings()


def load_monitor_settings(path: str | Path) -> MonitorSettings:
    """Monitor settings from a YAML file: a charter.yaml (its ``monitor:`` key) or the section alone."""
    from charter.server.config import ConfigError, ServerConfig, read_config_yaml
    from charter.yamlsource import problems_of, report

    name = str(path)
    root, data = read_config_yaml(path)
    prefix: tuple[str, ...] = ()
    if "monitor" in data or set(data) & (set(ServerConfig.model_fields) - set(MonitorSettings.model_fields)):
        # a charter.yaml, with or without a monitor: section (its other sections are the server's business)
        data, prefix = data.get("monitor") or {}, ("monitor",)
    try:
        return MonitorSettings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(report(name, root, [((*prefix, *loc), msg) for loc, msg in problems_of(e)])) from None


# ---------------------------------------------------------------------------- engine


@dataclass
class RunResult:
    alerts: list[Alert]
    #: alerts raised for the first time (or reopened): these went to the sinks
    new: list[Alert]
    #: what failed this run (logged; the rest still ran): rule name, ``store:RULE`` or ``sink:NAME`` -> error
    errors: dict[str, str]
    #: what the rules could not see (logged): e.g. a window holding more than ``monitor.max_events``
    warnings: list[str] = field(default_factory=list)
    #: sink name -> alerts it failed to take this run (retried ones, and those held back once it failed, included)
    sink_failures: dict[str, int] = field(default_factory=dict)
    #: sink name -> alerts waiting for that sink's next attempt (at the next evaluation)
    undelivered: dict[str, int] = field(default_factory=dict)


class RuleEngine:
    """Runs the enabled rules over a store, stores alerts de-duplicated, notifies the sinks of new ones.

    ``guard`` (a Guard, or a callable returning one, called at most once and only when some
    permitted events kept their text) lets the decomposition rule re-score joined requests.
    """

    def __init__(self, store: EventStore, settings: MonitorSettings | None = None, *,
                 guard: Guard | Callable[[], Guard | None] | None = None, sinks: list[AlertSink] | None = None,
                 registry: Registry[type[Rule]] = RULES) -> None:
        self.store = store
        self.settings = settings or MonitorSettings()
        self.registry = registry
        self._guard_src = guard
        self._guard: Guard | None = None
        self.sinks = build_sinks(self.settings.sinks) if sinks is None else sinks
        self.store_alerts = any(isinstance(s, StoreSinkSettings) for s in self.settings.sinks)
        #: without a store sink, what was last notified per dedupe key: (severity rank, when, request ids)
        self._seen: dict[str, tuple[int, float, frozenset[Any]]] = {}
        self._cache: dict[tuple[str, ...], Any] = {}
        #: sink index -> alerts it failed to take, retried at the next run (kept in the store too, with a
        #: store sink, so that a restart offers them again)
        self._pending: dict[int, list[Alert]] = {}

    @classmethod
    def open(cls, url: str, settings: MonitorSettings | None = None, **kw: Any) -> RuleEngine:
        from charter.monitor.store import EventStore

        store = EventStore.open(url)
        try:
            return cls(store, settings, **kw)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        for s in self.sinks:
            with contextlib.suppress(Exception):
                s.close()
        self.store.close()

    def _guard_provider(self) -> Guard | None:
        if self._guard is None and self._guard_src is not None:
            src = self._guard_src
            self._guard = src() if callable(src) and not hasattr(src, "check_input") else src  # type: ignore[assignment]
            self._guard_src = None
        return self._guard

    def rules(self, errors: dict[str, str] | None = None) -> list[Rule]:
        """The enabled rules; one that cannot be built is left out, its error in ``errors`` (one broken
        plugin must not stop the built-in rules)."""
        out = []
        for name, cls in self.registry:
            try:
                s = self.settings.rules.get(name) or cls.Settings()
                if s.enabled:
                    r = cls(s)
                    r.name = name  # type: ignore[misc]
                    out.append(r)
            except Exception as e:
                if errors is None:
                    raise
                errors[name] = f"{type(e).__name__}: {e}"
                log.exception("monitor rule %r could not be built", name)
        return out

    def evaluate(self, now: float | None = None) -> RunResult:
        """The alerts the enabled rules raise now (not stored; ``new`` stays empty), the rules that
        failed, and a warning when the windows hold more events than one evaluation reads."""
        now = time.time() if now is None else now
        errors: dict[str, str] = {}
        rules = self.rules(errors)
        span = max((r.settings.window_s for r in rules), default=0.0)
        needs_text = any(r.needs_text for r in rules)
        recent = []
        for e in self.store.iter_events(since=now - span, until=None, limit=self.settings.max_events, newest_first=True,
                                        content=needs_text, batch=200 if needs_text else 5000):
            if e.content is not None:
                # rules read the last user message: keeping each stored conversation whole held up to
                # max_events of them at once (about 4 GB for 50,000 long conversations)
                text = last_user_text(e.content)
                e.content = {"messages": [{"role": "user", "content": text[-MAX_RULE_TEXT:]}]} if isinstance(text, str) else None
            recent.append(e)
        recent.reverse()
        warnings = []
        if len(recent) >= self.settings.max_events:
            # the oldest part of the window went unread: counts over it are undercounts
            warnings.append(f"the rule windows hold more than monitor.max_events={self.settings.max_events} events; "
                            f"rules read only the newest ones, reaching back {now - recent[0].ts:.0f} s of the {span:.0f} s "
                            "window: raise monitor.max_events or shorten the windows")
            log.warning("monitor: %s", warnings[-1])
        ctx = RuleContext(self.store, now, self.settings, recent, self._guard_provider, self._cache)
        alerts: list[Alert] = []
        for r in rules:
            try:
                alerts.extend(r.evaluate(ctx))
            except Exception as e:  # one broken rule must not silence the others
                errors[r.name] = f"{type(e).__name__}: {e}"
                log.exception("monitor rule %r failed", r.name)
        return RunResult(alerts, [], errors, warnings)

    def run_once(self, now: float | None = None) -> RunResult:
        now = time.time() if now is None else now
        res = self.evaluate(now)
        alerts, errors = res.alerts, res.errors
        new = []
        for a in alerts:
            try:
                is_new = self._persist(a) if self.store_alerts else self._remember(a, now)
            except Exception as e:
                errors[f"store:{a.rule}"] = f"{type(e).__name__}: {e}"
                log.exception("storing alert %s failed", a.dedupe_key)
                continue
            if is_new:
                new.append(a)
        failures: dict[str, int] = {}
        undelivered: dict[str, int] = {}
        for i, sink in enumerate(self.sinks):
            name = sink_name(sink)
            # alerts this sink failed to take on earlier runs go first, then the new ones (a reopened
            # alert replaces its own waiting copy: one delivery, with the newest evidence). With a store
            # they wait there, claimed by the replica delivering them: replicas sharing the store deliver
            # each alert once, and one restarted or killed part-way loses none.
            waiting = self._claim_undelivered(name, new, errors) if self.store_alerts else self._pending.get(i, [])
            todo = list({a.dedupe_key: a for a in [*waiting, *new]}.values())
            self._pending[i] = []
            first_error, n_failed = "", 0
            sent: list[Alert] = []
            refused: list[Alert] = []  # final failures (a receiver's 4xx): owed no more
            for j, a in enumerate(todo):
                try:
                    sink.emit(a)
                    sent.append(a)
                except Exception as e:  # one failing sink must not stop the others
                    n_failed += 1
                    first_error = first_error or f"{type(e).__name__}: {e}"
                    if not getattr(e, "retry", True):
                        refused.append(a)
                    else:
                        # the sink is down (its own retries are spent): the rest wait for the next run too,
                        # rather than each waiting out its retries and timeouts while the rules do not run
                        self._pending[i] += todo[j:]
                        n_failed += len(todo) - j - 1
                        break
            if dropped := (0 if self.store_alerts else max(0, len(self._pending[i]) - MAX_PENDING_ALERTS)):
                del self._pending[i][:dropped]
                log.error("alert sink %s: %d undelivered alert(s) dropped (more than %d waiting); the store "
                          "still holds them if a store sink is configured", name, dropped, MAX_PENDING_ALERTS)
            if n_failed:  # one line per failing sink and run, not a traceback per alert
                failures[name] = n_failed
                errors[f"sink:{name}"] = first_error
                log.warning("alert sink %s failed on %d alert(s) (%d waiting for the next evaluation); the other "
                            "sinks got them: %s", name, n_failed, len(self._pending[i]), first_error)
            if self._pending[i]:
                undelivered[name] = len(self._pending[i])
            if self.store_alerts:
                try:
                    # a refused alert left owed was claimed again, and posted again, every lease period
                    self.store.delivered(name, [a.id for a in [*sent, *refused] if a.id is not None])
                    self.store.hold_undelivered(name, [a.id for a in self._pending[i] if a.id is not None],
                                                claimed=False, error=first_error)  # free for any replica's next run
                except Exception as e:
                    errors[f"store:undelivered:{name}"] = f"{type(e).__name__}: {e}"
                    log.exception("recording the alerts sink %s has yet to take failed", name)
                self._pending[i] = []  # the store holds them
        return RunResult(alerts, new, errors, res.warnings, failures, undelivered)

    def _claim_undelivered(self, name: str, new: list[Alert], errors: dict[str, str]) -> list[Alert]:
        """The stored alerts ``name`` has yet to take that no other replica is delivering, claimed by
        this one; the new alerts are recorded as owed first, held by this replica, so that a crash before
        they are delivered leaves them for the next run of any replica."""
        try:
            self.store.hold_undelivered(name, [a.id for a in new if a.id is not None], claimed=True)
            new_ids = {a.id for a in new}
            return [Alert.from_record(r) for r in self.store.claim_undelivered(name, MAX_PENDING_ALERTS)
                    if r.id not in new_ids]
        except Exception as e:
            errors[f"store:undelivered:{name}"] = f"{type(e).__name__}: {e}"
            log.exception("reading the alerts sink %s has yet to take failed", name)
            return []

    def _remember(self, a: Alert, now: float) -> bool:
        """Without a store: is ``a`` worth notifying? Its key's first alert is; later ones when the
        severity rises, or when they bring evidence not yet notified and the last notice is a day old
        (a key notified once per process lifetime stayed silent about the next day's incident)."""
        sev = _SEVERITY.get(a.severity, 0)
        ids = frozenset(e.get("request_id") for e in a.events)
        prev = self._seen.get(a.dedupe_key)
        new = prev is None or sev > prev[0] or (bool(ids - prev[2]) and now - prev[1] >= RENOTIFY_S)
        if new:
            self._seen.pop(a.dedupe_key, None)
            self._seen[a.dedupe_key] = (sev, now, ids)
            while len(self._seen) > MAX_REMEMBERED:
                del self._seen[next(iter(self._seen))]  # the longest-unnotified key
        else:
            assert prev is not None
            self._seen[a.dedupe_key] = (prev[0], prev[1], frozenset(list(prev[2] | ids)[:MAX_EVIDENCE_IDS]))
        return new

    def _persist(self, a: Alert) -> bool:
        """Upsert ``a`` unless the stored alert already holds all its evidence; True when new (or reopened)."""
        key = a.dedupe_key
        old = next((r for r in self.store.alerts(status=None, subject_kind=a.subject_kind,
                                                 subject_id=a.subject_id[:200], limit=1000)
                    if r.dedupe_key == key), None)
        if old is not None:
            have = {e.get("request_id") for e in old.evidence}
            if all(e.get("request_id") in have for e in a.events):
                a.id, a.status, a.count = old.id, old.status, old.count
                return False  # nothing new: no write, no notification (a resolved alert stays resolved)
        rec, is_new = self.store.upsert_alert(a.record())
        a.id, a.status, a.count = rec.id, rec.status, rec.count
        return is_new


def _close_opened(f: Any) -> None:
    if not f.cancelled() and f.exception() is None:
        f.result().close()


class LoopMetrics(Protocol):
    """What the background loop reports to (the proxy's :class:`charter.server.metrics.Metrics`)."""

    def monitor_run(self, result: RunResult | None) -> None: ...


async def monitor_loop(url: str, settings: MonitorSettings, guard: Guard | None = None,
                       metrics: LoopMetrics | None = None) -> None:
    """Run the rules every ``settings.interval_s`` seconds until cancelled; failures are logged, not raised.

    The store is opened (and migrated) at once, so that a database problem shows at startup rather
    than one interval later; if it fails, each run tries again.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    import anyio

    # the store is opened in a thread that a cancel cannot stop: whatever it opens gets closed,
    # now or (if the loop is stopped meanwhile) when the thread finishes
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charter-monitor-open")
    opening: Future[RuleEngine] | None = None

    async def open_engine() -> RuleEngine:
        nonlocal opening
        opening = pool.submit(RuleEngine.open, url, settings, guard=guard)
        e = await asyncio.wrap_future(opening)
        opening = None
        return e

    engine: RuleEngine | None = None
    failing = False
    try:
        try:
            engine = await open_engine()
        except Exception:
            log.exception("monitor: the event store could not be opened; trying again every %g s", settings.interval_s)
            failing = True
            if metrics is not None:
                metrics.monitor_run(None)
        while True:
            await asyncio.sleep(settings.interval_s)
            try:
                if engine is None:
                    engine = await open_engine()
                res = await anyio.to_thread.run_sync(engine.run_once)
                if metrics is not None:
                    metrics.monitor_run(res)
                if res.new:
                    log.info("monitor: %d new alert(s)", len(res.new))
                failing = False
            except Exception as e:
                if metrics is not None:
                    metrics.monitor_run(None)
                if not failing:
                    log.exception("monitor evaluation failed")
                else:
                    log.warning("monitor evaluation still failing (%s)", type(e).__name__)
                failing = True
    finally:
        if engine is not None:
            engine.close()
        if opening is not None:
            opening.add_done_callback(_close_opened)
        pool.shutdown(wait=False)


def start_monitor(db: str | None, settings: MonitorSettings, guard: Guard | None,
                  metrics: LoopMetrics | None = None) -> asyncio.Task[None] | None:
    """The proxy's background evaluation task (None without a store or with ``interval_s: 0``)."""
    if not db or settings.interval_s <= 0:
        return None
    return asyncio.create_task(monitor_loop(db, settings, guard, metrics), name="charter-monitor")


async def stop_monitor(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
