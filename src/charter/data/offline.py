"""The offline generator: deterministic template expansion of the constitution's seeds.

Every seed (restricted request, hard negative, permitted request) is expanded through the same
machinery (paraphrase, persona and politeness framing, presentation formats, transform chains),
so wrappers and encodings appear on both labels and are never a label signal by themselves.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from charter.constitution.model import Category, Constitution, Seed
from charter.data import templates as T
from charter.data.base import Generator, host_category
from charter.data.records import Label, Message, Record
from charter.data.skeleton import render_skeleton
from charter.data.splits import split_of, sub_seed
from charter.transforms.base import TRANSFORMS, Transform


def registered_transforms() -> list[type[Transform]]:
    """Every transform in the registry but those that need the encoder wheel (a dataset must not depend
    on which extras are installed) and attack-only ones (``augments = False``). A library that fails to
    import raises: data generated without augmentation would look like a dataset and train a guard blind
    to obfuscation."""
    return [cls for _, cls in TRANSFORMS if not cls.needs_encoder and cls.augments]


# ---------------------------------------------------------------- paraphrase


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[:2] != s[:2].upper() else s


_HOW = re.compile(r"^how (?:do|can|would|could|should) (?:i|you|one|we) (.+?)[?.!]*$", re.I)
_WAY = re.compile(r"^(?:how to|(?:what(?:'s| is) the )?(?:best|easiest|fastest|quickest|simplest|safest) way to) (.+?)[?.!]*$", re.I)
_WH = re.compile(r"^(what|which|why|where|when|who|how) (.+?)[?.!]*$", re.I)
# a question written without its mark ("can i take ...", "whats the best ...") or a statement
# ("my friend works at a bank, ..."): neither is a command, so "Can you" or "Kindly" cannot lead it
_ASKS = re.compile(r"^(?:what|what's|whats|which|why|where|when|who|whose|how|is|are|am|was|were|do|does|did|"
                   r"can|could|would|will|should|may|might|has|have|any|anyone)\b", re.I)
_SAYS = re.compile(r"^(?:i|i'm|im|i've|i'd|my|we|we're|our|me|it|it's|there|this|that|they|he|she|someone|somebody)\b", re.I)


def is_command(text: str) -> bool:
    t = text.strip()
    return not t.endswith("?") and not _ASKS.match(t) and not _SAYS.match(t)


def rewrite_mode(text: str, rng: random.Random) -> str:
    """Question to instruction or back; how-to requests sometimes into the blunt task register."""
    t = text.strip()
    how = _HOW.match(t) or _WAY.match(t)
    if how and rng.random() < 0.5:
        return rng.choice(T.TASK_FRAMES).format(x=how.group(1))
    if _ASKS.match(t) and not t.endswith("?"):
        t = t.rstrip(".!") + "?"
    if t.endswith("?"):
        if m := _HOW.match(t):
            return f"{rng.choice(T.INSTRUCTION_VERBS)} how to {m.group(1)}."
        if m := _WH.match(t):
            return f"Tell me {m.group(1).lower()} {m.group(2)}."
        return f"{rng.choice(['I want to know:', 'Answer this:', 'Question:'])} {t}"
    if not is_command(t):
        return t
    return f"{rng.choice(T.QUESTION_OPENERS)} {_lower_first(t.rstrip('.!'))}?"


def typos(text: str, rng: random.Random, k: int = 2) -> str:
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    for i in rng.sample(idx, min(k, len(idx))):
        w = words[i]
        j = rng.randrange(1, len(w) - 2)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if rng.random() < 0.6 else w[:j] + w[j + 1 :]
    return " ".join(words)


def paraphrase(text: str, lang: str, rng: random.Random) -> str:
    t = text.strip()
    en = lang == "en"
    if en and rng.random() < 0.35:
        t = rewrite_mode(t, rng)
    urgency = rng.choice(T.URGENCY) if rng.random() < 0.15 else None
    want_polite = rng.random() < (0.35 if en else 0.15)
    persona = rng.choice(T.PERSONAS) if rng.random() < (0.35 if en else 0.1) else None
    polite = None
    if want_polite:  # "Kindly" leads a command, not a question or "I'm a nurse and ..."
        command = is_command(t) and (persona is None or is_command(persona))
        polite = rng.choice([p for p in T.POLITE if command or p not in T.POLITE_COMMAND_ONLY])
    lead = [x for x in (urgency, polite, persona) if x]
    if lead:
        joined = " ".join(lead)
        t = f"{joined} {_lower_first(t) if joined[-1].isalpha() or joined[-1] == ',' else t}"
    if rng.random() < 0.3:
        t = f"{t} {rng.choice(T.SUFFIXES)}"
    r = rng.random()
    if r < 0.1:
        t = t.lower()
    elif r < 0.2:
        t = typos(t, rng)
    if rng.random() < 0.08:
        t = t.rstrip("?.!")
    return t


# ---------------------------------------------------------------- formats


def as_email(req: str, rng: random.Random) -> str:
    a, b = rng.sample(T.NAMES, 2)
    body = f"Subject: {rng.choice(T.SUBJECTS)}\nFrom: {a}\nTo: {b}\n\nHi {b},\n\n{req}\n\n{rng.choice(['Best,', 'Thanks,', 'Cheers,', '-'])}\n{a}"
    return rng.choice(["", "Please draft a reply to this email:\n\n", "Answer the question in this email.\n\n"]) + body


def as_document(req: str, rng: random.Random) -> str:
    f1, f2 = rng.sample(T.DOC_FILLER, 2)
    title = rng.choice(T.DOC_TITLES)
    style = rng.randrange(3)
    if style == 0:
        doc = f"{title}\n\n{f1}\n{req}\n{f2}"
    elif style == 1:
        doc = f"# {title}\n\n- {f1}\n- Open question: {req}\n- {f2}"
    else:
        doc = f"{title}: {f1} {req} {f2}"
    return rng.choice(["", "Summarise this document and answer any question in it.\n---\n", "Read the text below.\n\n"]) + doc


def as_code(req: str, rng: random.Random) -> str:
    lang = rng.choice(T.CODE_LANGS)
    one = req.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if lang == "python":
        code = "\n".join(f"# {line}" for line in req.splitlines()) + "\ndef main():\n    pass"
    elif lang == "javascript":
        code = f'const prompt = "{one}";\nsendToModel(prompt);'
    elif lang == "bash":
        code = f'echo "{one}" | llm --model local'
    elif lang == "go":
        code = "\n".join(f"// {line}" for line in req.splitlines()) + "\nfunc main() {}"
    else:
        code = "\n".join(f"-- {line}" for line in req.splitlines()) + "\nSELECT id FROM notes;"
    return rng.choice(["", "Complete this code:\n", "What does this snippet do?\n", "Fix the bug here:\n"]) + f"```{lang}\n{code}\n```"


def system_prompt(split: str, rng: random.Random) -> Message:
    """An operator's system prompt for a request of ``split``: every seventh prompt of
    :data:`~charter.data.templates.SYSTEM_PROMPTS` is the test split's and every seventh after the
    fifth the calibration split's, so held-out requests come behind system prompts never trained on."""
    part = {"calib": 5, "test": 6}.get(split)
    pool = [p for i, p in enumerate(T.SYSTEM_PROMPTS) if (i % 7 == part if part is not None else i % 7 < 5)]
    return Message(role="system", content=rng.choice(pool))


def benign_prefix(rng: random.Random) -> list[Message]:
    out: list[Message] = []
    for q, a in rng.sample(T.BENIGN_TURNS, rng.randint(1, 3)):
        out += [Message(role="user", content=q), Message(role="assistant", content=a)]
    return out


# ---------------------------------------------------------------- responses


def response_pool(cat: Category, split: str) -> list[str]:
    """The category's response seeds assigned to ``split`` (none when that split has none: the
    callers fall back to generic replies, never to another split's seeds).

    Response seeds are split like request seeds, so the test split's replies are built from
    seeds the exchange classifier never saw: the early-stop metric measures unseen reply shapes.
    """
    texts = [s.text for s in cat.seeds.responses]
    return [t for i, t in enumerate(texts) if split_of(f"{cat.id}:resp:{i}") == split]


def _reply(parts: list[str], rng: random.Random, intros: list[str] = T.REPLY_INTROS) -> str:
    """Opener, optional preamble, body parts and closer: the frame is drawn from pools shared by both labels."""
    head = [rng.choice(intros)]
    if rng.random() < 0.12:
        head.append(rng.choice(T.REPLY_PREAMBLES))
    body = rng.choice(["\n\n", "\n", " "]).join(parts)
    return " ".join(x for x in (" ".join(h for h in head if h), body, rng.choice(T.ANSWER_OUTROS)) if x).strip()


def _n_parts(rng: random.Random, pool: list[str]) -> int:
    """One to three seeds a reply: real replies run from a sentence to several paragraphs."""
    return min(len(pool), rng.choices((1, 2, 3), (0.5, 0.35, 0.15))[0])


def skeleton_response(cat: Category, rng: random.Random, split: str = "train") -> str:
    pool = response_pool(cat, split) or T.GENERIC_SKELETONS
    return _reply([render_skeleton(p, rng) for p in rng.sample(pool, _n_parts(rng, pool))], rng)


def benign_response(cat: Category, rng: random.Random, topic: str | None = None,
                    intros: list[str] = T.REPLY_INTROS, split: str = "train") -> str:
    topic = topic or cat.name.lower()
    pool = response_pool(cat, split) if not cat.restricted else []
    r = rng.random()
    if r < 0.15:
        steps = rng.sample(T.GENERIC_BENIGN_STEPS, rng.randint(3, 5))
        style = rng.choice(["Step {i}: {s}", "{i}. {s}", "{i}) {s}"])
        sep = rng.choice(["\n", " "])
        parts = [sep.join(style.format(i=i + 1, s=s.format(topic=topic)) for i, s in enumerate(steps))]
    elif pool and r < 0.85:
        # benign seeds may hold [PLACEHOLDER]s for harmless specifics: rendered like skeletons,
        # so "the required ..." phrasing is no sign of harm
        parts = [render_skeleton(p, rng) for p in rng.sample(pool, _n_parts(rng, pool))]
    else:
        parts = [" ".join(g.format(topic=topic) for g in rng.sample(T.GENERIC_BENIGN, rng.randint(1, 2)))]
    return _reply(parts, rng, intros)


def exchange_reply(reply: str, rng: random.Random) -> str:
    """A variant of a seed exchange's reply: the same openers, closers and noise on both labels."""
    t = reply
    if rng.random() < 0.4:
        t = f"{rng.choice(T.REPLY_OPENERS)} {t}"
    if rng.random() < 0.3:
        t = f"{t} {rng.choice(T.REPLY_CLOSERS)}"
    r = rng.random()
    if r < 0.05:
        t = t.lower()
    elif r < 0.15:
        t = typos(t, rng)
    return t


# ---------------------------------------------------------------- the generator


@dataclass(frozen=True)
class SeedRef:
    seed_id: str
    seed: Seed
    category: Category  # the record's category (the host permitted category for hard negatives)
    label: Label
    source: str
    origin: Category  # the category whose seeds list holds it
    reply: str | None = None  # the assistant reply of a seed exchange


class OfflineGenerator(Generator):
    """Records from the constitution's seeds, with no model: paraphrased, put into formats
    (conversations, documents, emails, code), transformed, and answered with skeletons.

    ``system_prompts`` is the share of single-turn requests asked behind an operator's system prompt
    (conversations get one four times as often), as deployed models are asked; both labels alike.
    """

    name = "offline"

    def __init__(
        self,
        transform_rate: float = 0.35,
        exchange_share: float = 0.3,
        floor: int = 4,
        transforms: Sequence[type[Transform]] | None = None,
        system_prompts: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= system_prompts <= 0.5:
            raise ValueError(f"system_prompts: {system_prompts} is not a share between 0 and 0.5")
        self.transform_rate = transform_rate
        self.exchange_share = exchange_share
        self.floor = floor
        self.system_prompts = system_prompts
        classes = list(transforms) if transforms is not None else registered_transforms()
        self._by_family: dict[str, list[Transform]] = {}
        for cls in sorted(classes, key=lambda c: c.name):
            self._by_family.setdefault(cls.family, []).append(cls())

    @property
    def families(self) -> list[str]:
        return sorted(self._by_family)

    def transform_families(self) -> dict[str, str]:
        return {t.name: f for f, ts in self._by_family.items() for t in ts}

    def params(self) -> dict[str, Any]:
        return {
            "transform_rate": self.transform_rate,
            "exchange_share": self.exchange_share,
            "floor": self.floor,
            "transform_families": self.families,
            "transforms": sorted(t.name for ts in self._by_family.values() for t in ts),
            **({"system_prompts": self.system_prompts} if self.system_prompts else {}),
        }

    # -- transforms

    def _pick_chain(self, label: Label, split: str, holdout: frozenset[str], rng: random.Random) -> list[Transform]:
        allowed = [f for f in self.families if split == "test" or f not in holdout]
        if not allowed:
            return []
        held = [f for f in allowed if f in holdout]
        key = (label, tuple(allowed))
        if held and rng.random() < 0.5:
            first = rng.choice(held)
        else:  # round robin so every family shows up on both labels even in small datasets
            cursor = self._cursor.get(key, 0)
            self._cursor[key] = cursor + 1
            first = allowed[cursor % len(allowed)]
        chain = [rng.choice(self._by_family[first])]
        if rng.random() < 0.3:
            second = rng.choice(self._by_family[rng.choice(allowed)])
            if second.name != chain[0].name:
                chain.append(second)
        # a conversation-splitting transform must come last: it turns text into messages
        chain.sort(key=lambda t: hasattr(t, "apply_messages"))
        if sum(hasattr(t, "apply_messages") for t in chain) > 1:
            chain = chain[:1]
        return chain

    def _apply(self, chain: list[Transform], text: str, rng: random.Random) -> tuple[str | list[Message], list[str]]:
        done: list[str] = []
        out: str | list[Message] = text
        for t in chain:
            try:
                if hasattr(t, "apply_messages"):
                    out = [Message(**m) for m in t.apply_messages(text, rng)]  # type: ignore[attr-defined]
                else:
                    text = out = t.apply(text, rng)
            except Exception:  # a broken transform must not sink the run; it is counted
                self.stats[f"transform_error:{t.name}"] += 1
                continue
            done.append(t.name)
        return out, done

    # -- one request

    def _request(self, ref: SeedRef, holdout: frozenset[str], rng: random.Random) -> dict[str, Any]:
        split = split_of(ref.seed_id)
        lang = ref.seed.lang
        text = paraphrase(ref.seed.text, lang, rng)
        fmt = "question" if text.rstrip().endswith("?") else "instruction"
        names: list[str] = []
        body: str | list[Message] = text
        if self._by_family and rng.random() < self.transform_rate:
            chain = self._pick_chain(ref.label, split, holdout, rng)
            body, names = self._apply(chain, text, rng)
            for t in chain:
                if t.name in names and isinstance(tl := getattr(t, "lang", getattr(t, "target_lang", None)), str):
                    lang = tl
        if isinstance(body, list):
            return {"messages": body, "format": "conversation", "transforms": names, "lang": lang, "split": split}
        r = rng.random()
        if r < 0.12:
            msgs = benign_prefix(rng) + [Message(role="user", content=body)]
            if self.system_prompts and rng.random() < min(1.0, 4 * self.system_prompts):
                msgs.insert(0, system_prompt(split, rng))
            return {"messages": msgs, "format": "conversation", "transforms": names, "lang": lang, "split": split}
        if r >= 1.0 - self.system_prompts:  # one request behind an operator's system prompt (the guard reads both)
            msgs = [system_prompt(split, rng), Message(role="user", content=body)]
            return {"messages": msgs, "format": "system", "transforms": names, "lang": lang, "split": split}
        if r < 0.19:
            body, fmt = as_document(body, rng), "document"
        elif r < 0.26:
            body, fmt = as_email(body, rng), "email"
        elif r < 0.32:
            body, fmt = as_code(body, rng), "code"
        return {"text": body, "format": fmt, "transforms": names, "lang": lang, "split": split}

    # -- plan

    def _refs(self, c: Constitution) -> tuple[dict[str, list[SeedRef]], dict[str, list[SeedRef]]]:
        req: dict[str, list[SeedRef]] = {}
        hn: dict[str, list[SeedRef]] = {}
        for cat in c.categories:
            label: Label = "restricted" if cat.restricted else "permitted"
            req[cat.id] = [
                SeedRef(f"{cat.id}:req:{i}", s, cat, label, "seed", cat) for i, s in enumerate(cat.seeds.requests)
            ]
            if cat.hard_negatives:
                host = host_category(c, cat)
                hn[cat.id] = [
                    SeedRef(f"{cat.id}:hn:{i}", s, host, "permitted", "hard_negative", cat)
                    for i, s in enumerate(cat.hard_negatives)
                ]
        return req, hn

    @staticmethod
    def _exchange_refs(c: Constitution) -> dict[str, list[SeedRef]]:
        out: dict[str, list[SeedRef]] = {}
        for cat in c.categories:
            label: Label = "restricted" if cat.restricted else "permitted"
            out[cat.id] = [
                SeedRef(f"{cat.id}:ex:{i}", Seed(text=e.user, lang=e.lang), cat, label, "seed", cat, reply=e.reply)
                for i, e in enumerate(cat.seeds.exchanges)
            ]
        return out

    def generate(
        self, constitution: Constitution, n: int, seed: int, holdout: frozenset[str] = frozenset()
    ) -> Iterator[Record]:
        self._cursor: dict[tuple[Any, ...], int] = {}
        c = constitution
        req, hn = self._refs(c)
        R, P = c.restricted, c.permitted
        n_ex = round(n * self.exchange_share)
        n_in = n - n_ex
        hn_cats = [cat for cat in R if cat.id in hn]
        self._hosts = {cat.id: host_category(c, cat) for cat in R}

        def share(total: float, k: int) -> int:
            return max(self.floor, round(total / max(k, 1)))

        # (bucket name, category id, seed refs, count, kind)
        plan: list[tuple[str, str, list[SeedRef], int]] = []
        for cat in R:
            plan.append(("in", cat.id, req[cat.id], share(0.45 * n_in, len(R))))
            plan.append(("skeleton", cat.id, req[cat.id], share(0.40 * n_ex, len(R))))
            plan.append(("refusal", cat.id, req[cat.id], share(0.12 * n_ex, len(R))))
            # a restricted request answered safely (textbook or safety content, no refusal) is a
            # harmless exchange: the exchange label must come from the reply, not the request alone
            plan.append(("safe_answer", cat.id, req[cat.id], share(0.08 * n_ex, len(R))))
        for cat in hn_cats:
            plan.append(("in", cat.id, hn[cat.id], share(0.20 * n_in, len(hn_cats))))
            plan.append(("answer", cat.id, hn[cat.id], share(0.08 * n_ex, len(hn_cats))))
        p_in = 0.35 if hn_cats else 0.55
        for cat in P:
            plan.append(("in", cat.id, req[cat.id], share(p_in * n_in, len(P))))
            plan.append(("answer", cat.id, req[cat.id], share((0.25 if hn_cats else 0.33) * n_ex, len(P))))
            plan.append(("over_refusal", cat.id, req[cat.id], share(0.07 * n_ex, len(P))))
        # seed exchanges: half the exchange budget per label (all of n when no category has requests)
        ex = self._exchange_refs(c)
        ex_total = n_ex if any(req.values()) else n
        for cats in ([k for k in R if ex[k.id]], [k for k in P if ex[k.id]]):
            for cat in cats:
                plan.append(("exchange", cat.id, ex[cat.id], share(0.5 * ex_total, len(cats))))

        counters: dict[str, int] = {}
        for bucket, cid, refs, count in plan:
            if not refs:  # a category with seed exchanges only
                continue
            rng = random.Random(sub_seed(seed, bucket, cid, refs[0].source))
            for k in range(count):
                ref = refs[k % len(refs)]
                yield self._record(bucket, ref, holdout, rng, counters)

    def _record(
        self, bucket: str, ref: SeedRef, holdout: frozenset[str], rng: random.Random, counters: dict[str, int]
    ) -> Record:
        i = counters.get(ref.seed_id, 0)
        counters[ref.seed_id] = i + 1
        fields = self._request(ref, holdout, rng)
        label, source, response = ref.label, ref.source, None
        if bucket == "skeleton":
            response = skeleton_response(ref.origin, rng, fields["split"])
        elif bucket == "refusal":
            label, source, response = "permitted", "refusal", rng.choice(T.REFUSALS)
        elif bucket == "answer":
            response = benign_response(ref.category, rng, split=fields["split"])
        elif bucket == "safe_answer":
            host = self._hosts[ref.origin.id]
            body = benign_response(host, rng, intros=T.SAFE_ANSWER_INTROS, split=fields["split"])
            label, source, response = "permitted", "safe_answer", body
        elif bucket == "over_refusal":
            source, response = "over_refusal", rng.choice(T.OVER_REFUSALS)
        elif bucket == "exchange":
            assert ref.reply is not None
            response = exchange_reply(ref.reply, rng)
        return Record(
            id=f"{ref.seed_id}:{i}",
            label=label,
            category=ref.category.id,
            kind="input" if response is None else "exchange",
            seed_id=ref.seed_id,
            source=source,
            response=response,
            **fields,
        )
