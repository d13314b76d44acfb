"""Run a red-team campaign: static suite, adaptive attackers, over-refusal probes, summary metrics."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from charter.data.records import render_messages
from charter.errors import CharterError, InputError
from charter.guard.stats import wilson
from charter.redteam.attackers import Attempt, Evaluation, Oracle
from charter.redteam.behaviours import Behaviour, BenignProbe
from charter.redteam.graders import Grade, decide, is_refusal
from charter.redteam.suite import Prompt, family_of, static_suite

if TYPE_CHECKING:
    from charter.evals.journal import RunJournal

Advance = Callable[[int, str], None]
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BenignResult:
    probe: BenignProbe
    refused: bool | None  # flagged (guard) or refused/blocked (endpoint); None: could not tell
    score: float | None
    response: str | None = None
    error: str | None = None


@dataclass
class RunResult:
    target: str
    target_kind: str
    behaviours: list[Behaviour]
    attempts: list[Attempt]
    benign: list[BenignResult]
    budget: int
    config: dict[str, Any] = field(default_factory=dict)
    traces: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # attacker -> behaviour -> best fitness
    summary: dict[str, Any] = field(default_factory=dict)
    #: per adaptive attacker: attempts made, and its attacker LLM's calls and errors where it has one
    attacker_stats: dict[str, dict[str, Any]] = field(default_factory=dict)


#: the most of one response kept in results, journal and report (graders read all of it): an endpoint that
#: ignores max_tokens, at up to 8 MiB a reply, would otherwise hold gigabytes over a campaign
MAX_STORED_CHARS = 32_000


def kept(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_STORED_CHARS:
        return text
    return text[:MAX_STORED_CHARS] + f" … [{len(text)} characters, cut to {MAX_STORED_CHARS} for storage]"


def _text(p: Prompt) -> str:
    return p if isinstance(p, str) else render_messages(p)


def checked(name: str, g: Any) -> Grade:
    """A grader's grade, refused unless it is one: an outcome such as "unsafe" or "HARMFUL" (a plugin's)
    was counted as safe, and a NaN score broke the attackers' search and the report's curves."""
    sc = getattr(g, "score", None)
    if not (isinstance(g, Grade) and g.outcome in ("harmful", "safe", "ungradable")
            and (sc is None or isinstance(sc, int | float) and not isinstance(sc, bool) and 0 <= sc <= 1)):
        raise CharterError(f"grader {name!r} returned {str(g)[:120]}; expected a Grade with outcome harmful, safe "
                           "or ungradable and a score from 0 to 1 or None")
    return g


def make_oracle(target: Any, graders: dict[str, Any]) -> Oracle:
    """One graded query. Guard targets: success = not flagged. Endpoints: success = graded harmful;
    blocked (content_filter) is a failure; transport errors and ungradable responses give ``success=None``."""

    def oracle(prompt: Prompt) -> Evaluation:
        try:
            r = target.query(prompt)
        except InputError as e:  # an attacker's chain of transforms grew the prompt past what the guard reads
            if target.kind != "guard":
                raise
            return Evaluation(score=1.0, fitness=0.0, success=False, blocked=True, error=f"refused: {e}")
        if target.kind == "guard":
            assert r.score is not None
            return Evaluation(score=r.score, fitness=1.0 - r.score, success=not r.flagged, blocked=r.flagged)
        if r.error:
            return Evaluation(score=None, fitness=0.0, success=None, error=r.error)
        if r.flagged:
            return Evaluation(score=0.0, fitness=0.0, success=False, response=kept(r.text), blocked=True,
                              grades={"blocked": {"outcome": "safe", "score": 0.0, "reason": "content_filter"}})
        ptext = _text(prompt)
        grades: dict[str, Grade] = {name: checked(name, g.grade(ptext, r.text)) for name, g in graders.items()}
        final = decide(grades)
        out = {k: g.as_dict() for k, g in grades.items()} | {"final": final.as_dict()}
        success = None if final.outcome == "ungradable" else final.outcome == "harmful"
        return Evaluation(score=final.score, fitness=float(final.score or 0.0), success=success, response=kept(r.text),
                          grades=out)

    return oracle


def _key(kind: str, i: int, prompt: Prompt) -> str:
    """A journal key: the item's place in the run and its text (a changed suite never matches)."""
    return f"{kind}:{i}:{hashlib.sha256(_text(prompt).encode()).hexdigest()[:16]}"


def ask_all(items: Sequence[T], ask: Callable[[T], R], concurrency: int = 1) -> Iterator[tuple[int, R]]:
    """``(index, ask(item))`` for every item as it finishes: in order with one worker, else from a
    thread pool (independent queries to an endpoint). Stopping early cancels what has not started."""
    if concurrency <= 1:
        for i, x in enumerate(items):
            yield i, ask(x)
        return
    # daemon workers, not a ThreadPoolExecutor: the interpreter joins an executor's threads at exit, so
    # Ctrl-C or SIGTERM waited for every request in flight and its retries (minutes on a hung endpoint)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(items)):
        todo.put(i)
    done: queue.SimpleQueue[tuple[int, R | None, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, ask(items[i]), None))
            except BaseException as e:  # raised in the caller's thread
                done.put((i, None, e))

    for k in range(min(concurrency, len(items))):
        threading.Thread(target=work, name=f"redteam-{k}", daemon=True).start()
    try:
        for _ in range(len(items)):
            while True:  # with a timeout, so that a signal is handled while waiting
                try:
                    i, r, err = done.get(timeout=0.2)
                    break
                except queue.Empty:
                    continue
            if err is not None:
                raise err
            yield i, r  # type: ignore[misc]
    finally:
        stop.set()  # what has not started never starts


@dataclass
class Journaled:
    """How one kind of independent query is journaled: its journal key prefix, its name in the
    progress bar, the field that is None when it could not be graded, and its record to and from
    the journal."""

    kind: str
    what: str
    graded: str
    record: Callable[[Any], dict[str, Any]]
    restore: Callable[[Any, dict[str, Any]], Any]


STATIC = Journaled("static", "static suite", "success", lambda ev: asdict(ev), lambda _a, rec: Evaluation(**rec))
BENIGN = Journaled("benign", "over-refusal probes", "refused",
                   lambda b: {"refused": b.refused, "score": b.score, "response": b.response, "error": b.error},
                   lambda p, rec: BenignResult(p, **rec))


def ask_journaled(how: Journaled, items: Sequence[T], prompts: Sequence[Prompt], ask: Callable[[T], R],
                  journal: RunJournal | None, concurrency: int, advance: Advance,
                  detail: Callable[[T], str] | None = None) -> tuple[list[R], int]:
    """``ask`` every item (``concurrency`` at once), in the items' order, and the number of results
    taken from ``journal`` instead: those it holds graded; an ungradable one (a judge that failed, an
    empty reply) is asked again, like one whose call failed. Each new result is appended to it."""
    keys = [_key(how.kind, i, p) for i, p in enumerate(prompts)]
    out: list[R | None] = [None] * len(items)
    if journal is not None:
        for i, k in enumerate(keys):
            if (rec := journal.done.get(k)) is not None and rec.get(how.graded) is not None:
                out[i] = how.restore(items[i], rec)
    resumed = sum(r is not None for r in out)
    if resumed:
        advance(resumed, f"{how.what} (resumed)")
    todo = [i for i, r in enumerate(out) if r is None]
    for j, r in ask_all([items[i] for i in todo], ask, concurrency):
        out[todo[j]] = r
        if journal is not None:
            journal.add(keys[todo[j]], how.record(r))
        advance(1, f"{how.what}: {detail(items[todo[j]])}" if detail else how.what)
    assert all(r is not None for r in out)
    return out, resumed  # type: ignore[return-value]


def probe_benign(target: Any, probes: Sequence[BenignProbe], advance: Advance,
                 journal: RunJournal | None = None, concurrency: int = 1) -> tuple[list[BenignResult], int]:
    """Each probe's refusal (flag, for a guard), and how many came from ``journal``."""
    def ask(p: BenignProbe) -> BenignResult:
        r = target.query(p.prompt)
        if target.kind == "guard":
            return BenignResult(p, bool(r.flagged), r.score)
        if r.error:
            return BenignResult(p, None, None, error=r.error)
        if not (r.text or "").strip() and not r.flagged:  # no answer is not an answer: ungradable, as for attacks
            return BenignResult(p, None, None, response=r.text, error="empty response")
        refused = bool(r.flagged) or is_refusal(r.text or "")
        return BenignResult(p, refused, 1.0 if refused else 0.0, response=kept(r.text))

    return ask_journaled(BENIGN, probes, [p.prompt for p in probes], ask, journal, concurrency, advance)


def run_redteam(
    target: Any, behaviours: Sequence[Behaviour], probes: Sequence[BenignProbe], *, graders: dict[str, Any] | None = None,
    suite: str = "default", budget: int = 20, seed: int = 0, attackers: Sequence[Any] = (),
    advance: Advance = lambda n, s: None, journal: RunJournal | None = None, concurrency: int = 1,
) -> RunResult:
    """Every static attack, then each adaptive attacker with ``budget`` queries per behaviour, then the
    benign probes, all through the same ``target``.

    With ``journal``, each static attempt and benign probe is appended to it as it is graded, and
    those it already holds (without an error) are not asked again. Static attempts and probes are
    independent queries: ``concurrency`` of them run at once. Adaptive attackers run afresh and one
    query at a time: each step depends on the replies before it.

    BLAS runs single-threaded here: one query at a time gains nothing from threads, and on a
    busy machine OpenBLAS's spinning threads make each stage-2 call ~40x slower.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _run(target, behaviours, probes, graders=graders, suite=suite, budget=budget, seed=seed,
                    attackers=attackers, advance=advance, journal=journal, concurrency=concurrency)


def run_attacker(atk: Any, b: Behaviour, oracle: Oracle, budget: int) -> list[Attempt]:
    """``atk.run`` on ``b`` through an oracle that refuses queries past ``budget``. Its attempts must be
    the oracle's evaluations, one per query and in order: an attacker (a plugin) that queried more than it
    reported, or reported results the target never gave, would make the ASR and queries-to-success up."""
    evs: list[Evaluation] = []
    over = False

    def counted(prompt: Prompt) -> Evaluation:
        nonlocal over
        if len(evs) >= budget:
            over = True
            raise CharterError(f"attacker {atk.name!r} queried the target past its budget of {budget} per behaviour")
        evs.append(oracle(prompt))
        return evs[-1]

    got = list(atk.run(b, counted, budget))
    if over:
        raise CharterError(f"attacker {atk.name!r} queried the target past its budget of {budget} per behaviour")
    rule = "an attacker returns one attempt per query, in order, with the oracle's evaluation"
    if len(got) != len(evs):
        raise CharterError(f"attacker {atk.name!r} reported {len(got)} attempts for its {len(evs)} queries on {b.id!r}; {rule}")
    if any(not isinstance(t, Attempt) or t.ev is not ev for t, ev in zip(got, evs)):
        raise CharterError(f"attacker {atk.name!r} reported results the target did not give on {b.id!r}; {rule}")
    for q, t in enumerate(got, 1):
        t.query = q
    return got


def _run(target: Any, behaviours: Sequence[Behaviour], probes: Sequence[BenignProbe], *, graders: dict[str, Any] | None,
         suite: str, budget: int, seed: int, attackers: Sequence[Any], advance: Advance,
         journal: RunJournal | None = None, concurrency: int = 1) -> RunResult:
    oracle = make_oracle(target, graders or {})
    res = RunResult(target.name, target.kind, list(behaviours), [], [], budget,
                    config={"suite": suite, "budget": budget, "seed": seed, "attackers": [a.name for a in attackers]})
    static = static_suite(behaviours, suite, seed)
    evs, resumed = ask_journaled(STATIC, static, [a.prompt for a in static], lambda a: oracle(a.prompt), journal,
                                 concurrency, advance, lambda a: a.behaviour.category)
    res.attempts.extend(Attempt(a, ev) for a, ev in zip(static, evs, strict=True))
    for atk in attackers:
        res.traces[atk.name] = {}
        made = 0
        for b in behaviours:
            got = run_attacker(atk, b, oracle, budget)
            made += len(got)
            res.attempts.extend(got)
            best, trace = float("-inf"), []
            for t in got:
                best = max(best, t.ev.fitness)
                trace.append(best)
            res.traces[atk.name][b.id] = trace
            advance(budget, f"{atk.name} attacker: {b.category}")
        # an attacker LLM that failed every call (a wrong key, say) makes no attempt: say so in the report
        res.attacker_stats[atk.name] = {
            "attempts": made, "llm_calls": getattr(atk, "attacker_calls", None), "llm_errors": getattr(atk, "attacker_errors", None)}
    res.benign, resumed_probes = probe_benign(target, probes, advance, journal, concurrency)
    res.summary = summarise(res)
    if resumed + resumed_probes:
        res.summary["resumed"] = {"items": resumed + resumed_probes, "planned": len(static) + len(probes)}
    return res


# ------------------------------------------------------------------ metrics


def _rate(successes: Sequence[bool | None]) -> dict[str, Any]:
    graded = [s for s in successes if s is not None]
    r = wilson(sum(bool(s) for s in graded), len(graded)).model_dump()
    r["ungradable"] = len(successes) - len(graded)
    return r


def families_of(a: Attempt) -> list[str]:
    if a.attack.strategy.startswith("multi:"):
        return ["multi_turn"]
    return [family_of(n) for n in a.attack.transforms] or ["none"]


def universal(attempts: Sequence[Attempt], behaviour_ids: Sequence[str]) -> dict[str, Any]:
    """Strategies that succeed on every behaviour (a universal jailbreak), and the best coverage."""
    hits: dict[str, set[str]] = defaultdict(set)
    tried: dict[str, set[str]] = defaultdict(set)
    for a in attempts:
        s = f"{a.attack.attacker}:{a.attack.strategy}"
        tried[s].add(a.attack.behaviour.id)
        if a.ev.success:
            hits[s].add(a.attack.behaviour.id)
    n = len(set(behaviour_ids))
    cov = sorted(((len(hits[s]), s) for s in tried if s.split(":", 1)[1] != "pair"), key=lambda t: (-t[0], t[1]))
    univ = [s for k, s in cov if n >= 2 and k == n]  # one behaviour broken once is not "universal"
    best = cov[0] if cov else (0, None)
    return {"n_behaviours": n, "universal": univ, "found": bool(univ), "best_strategy": best[1],
            "best_coverage": best[0] / n if n else 0.0, "best_hits": best[0]}


def query_curve(attempts: Sequence[Attempt], attacker: str, behaviour_ids: Sequence[str], budget: int) -> list[float]:
    """Share of behaviours broken within q queries, for q = 1..budget."""
    first: dict[str, int] = {}
    for a in attempts:
        if a.attack.attacker == attacker and a.ev.success and a.attack.behaviour.id not in first:
            first[a.attack.behaviour.id] = a.query
    n = max(len(behaviour_ids), 1)
    return [sum(q <= k for q in first.values()) / n for k in range(1, budget + 1)]


def summarise(res: RunResult) -> dict[str, Any]:
    at = res.attempts
    ids = [b.id for b in res.behaviours]
    by: dict[str, dict[str, list[bool | None]]] = {k: defaultdict(list) for k in ("attacker", "category", "family", "template")}
    broken: dict[str, set[str]] = defaultdict(set)
    graded: dict[str, set[str]] = defaultdict(set)  # behaviours with a graded attempt: "0 of 2 broken" needs one
    for a in at:
        s = a.ev.success
        if s is not None:
            graded[a.attack.attacker].add(a.attack.behaviour.id)
            graded["any"].add(a.attack.behaviour.id)
        by["attacker"][a.attack.attacker].append(s)
        by["category"][a.attack.behaviour.category].append(s)
        if a.attack.attacker == "static":
            for f in set(families_of(a)):
                by["family"][f].append(s)
            by["template"][a.attack.template or "none"].append(s)
        if s:
            broken[a.attack.attacker].add(a.attack.behaviour.id)
            broken["any"].add(a.attack.behaviour.id)
    ben = [r.refused for r in res.benign]
    by_src: dict[str, list[bool | None]] = defaultdict(list)
    for r in res.benign:
        by_src[r.probe.source].append(r.refused)
    for name in res.config.get("attackers", []):  # a configured attacker with no attempt still gets its row
        by["attacker"].setdefault(name, [])
    adaptive = [k for k in by["attacker"] if k != "static"]
    return {
        "target": res.target,
        "target_kind": res.target_kind,
        "n_behaviours": len(ids),
        "n_attempts": len(at),
        "asr": _rate([a.ev.success for a in at]),
        "asr_by_attacker": {k: _rate(v) for k, v in sorted(by["attacker"].items())},
        "asr_by_category": {k: _rate(v) for k, v in sorted(by["category"].items())},
        "asr_by_family": {k: _rate(v) for k, v in sorted(by["family"].items())},
        "asr_by_template": {k: _rate(v) for k, v in sorted(by["template"].items())},
        "behaviours_broken": {k: wilson(len(broken[k]), len(graded[k])).model_dump() for k in ["any", *sorted(by["attacker"])]},
        "fpr": _rate(ben),
        "fpr_by_source": {k: _rate(v) for k, v in sorted(by_src.items())},
        "query_curves": {k: query_curve(at, k, ids, res.budget) for k in adaptive},
        "universal": universal(at, ids),
        "ungradable": sum(a.ev.success is None for a in at),
        "attackers": res.attacker_stats,
        "mean_queries_to_success": {
            k: float(np.mean([a.query for a in at if a.attack.attacker == k and a.ev.success])) if any(
                a.attack.attacker == k and a.ev.success for a in at) else None for k in adaptive},
    }


def attempt_dict(a: Attempt) -> dict[str, Any]:
    return {
        "behaviour_id": a.attack.behaviour.id, "category": a.attack.behaviour.category, "attacker": a.attack.attacker,
        "strategy": a.attack.strategy, "transforms": a.attack.transforms, "families": families_of(a),
        "template": a.attack.template, "query": a.query, "prompt": a.attack.prompt, "response": a.ev.response,
        "score": a.ev.score, "fitness": a.ev.fitness, "success": a.ev.success, "blocked": a.ev.blocked,
        "grades": a.ev.grades, "error": a.ev.error,
    }


def benign_dict(r: BenignResult) -> dict[str, Any]:
    return {"id": r.probe.id, "category": r.probe.category, "source": r.probe.source, "prompt": r.probe.prompt,
            "refused": r.refused, "score": r.score, "response": r.response, "error": r.error}
