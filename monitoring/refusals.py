"""Decide whether a model's answer declines the task: a pluggable detector and a phrase default.

The default detector, `PhraseRefusalDetector`, knows how refusals are phrased in English,
Spanish, French, German, Portuguese and Chinese. It favours precision over recall, because a
false refusal signal raises alerts and biases rollout analysis:

- only the opening of the answer is read (refusals lead with the decline), which also bounds
  the cost per call and lets a stream hand over just its first `REFUSAL_WINDOW_CHARS`;
- quoted passages and Markdown block quotes are dropped, so an answer that quotes a refusal
  ("the bot replied 'I can't help with that'") is not one;
- a decline counts only at the start of a sentence, optionally after an apology ("Sorry, but"),
  and only as a first-person decline of an act (help, provide, write, ...): "I can't wait to
  help" and "the API cannot be called twice" are not refusals;
- a decline that goes on to deliver ("I can't give an exact number, but roughly 60% ...") is
  an answer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

# Refusals state the decline in their first sentence or two; nothing later is read.
REFUSAL_WINDOW_CHARS = 400


class RefusalDetector(Protocol):
    """Decides whether an answer declines the task it was given."""

    def is_refusal(self, text: str) -> bool: ...


def detector_name(detector: RefusalDetector) -> str:
    """`name:version` of a detector, for the metrics' `detector` label ("custom" if it has none)."""
    name = getattr(detector, "name", None)
    return name if isinstance(name, str) else "custom"


# Passages the answer quotes rather than says: "...", “...”, «...», „...“, 「...」, '...', > lines.
# Three patterns, each run only when its opening mark occurs: most answers skip all three.
_QUOTE_MARKS = re.compile(r"[\"“«„「『]")
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|«[^»\n]*»|„[^“”\n]*[“”]|「[^」]*」|『[^』]*』")
_SINGLE_QUOTE_OPENING = re.compile(r"(?<!\w)'")
_SINGLE_QUOTED = re.compile(r"(?<!\w)'(?:[^'\n]|(?<=\w)'(?=\w))*?'(?!\w)")
_BLOCK_QUOTE = re.compile(r"^[ \t]*>.*$", re.MULTILINE)

_EN_ACT = (
    r"(?:help(?!\s+(?:but|\w+ing)\b)|assist|provide|comply|fulfil+|complete|process|generate"
    r"|create|write|produce|share|give|offer|answer|respond|engage|support|discuss|continue"
    r"|do (?:that|this|it)\b|make|draft|tell|reveal|disclose|access|look up)"
)
_EN_NEGATION = (
    r"(?: can't| cannot| can not| won't| will not|(?: am|'m) (?:unable|not able) to"
    r"|(?: am|'m) not going to)(?: and will not| and won't)?(?: be able to)?"
)
_EN = (
    rf"i{_EN_NEGATION} (?:really |currently )?{_EN_ACT}"
    r"|i (?:must |have to )?(?:respectfully )?(?:decline|refuse)\b"
    r"|i (?:do not|don't) feel comfortable|i(?: am|'m) not comfortable"
    r"|(?:that|this|it)(?:'s| is) not something i(?:'m| am)? (?:can|able to) (?:help|assist|do)"
    r"|it would (?:not |n't )?be (?:inappropriate|appropriate) for me to"
)
_ES = (
    r"no (?:puedo|podré|voy a|estoy en condiciones de|me es posible)\s+"
    r"(?:ayud|proporcion|cumplir|gener|crear|escrib|respond|dar|compart|asist|hacer eso|ofrec"
    r"|facilit)"
)
_FR_ACT = (
    r"(?:vous |t'|te )?(?:aider|répondre|fournir|générer|écrire|rédiger|faire (?:cela|ça)"
    r"|donner|partager|créer|produire|traiter)"
)
_FR = (
    rf"je ne (?:peux|pourrai) pas {_FR_ACT}|je ne suis pas en mesure de {_FR_ACT}"
    r"|il m'est impossible de|je refuse de|je crains de ne pas pouvoir"
)
_DE = (
    r"(?:(?:das|dabei|damit|hierbei)\s+)?(?:ich kann|kann ich|ich werde|werde ich)\b"
    r"[^.!?\n]{0,40}?\b(?:nicht|keine?[nms]?)\b[^.!?\n]{0,30}?"
    r"\b(?:helfen|unterstützen|erfüllen|bereitstellen|geben|erstellen|schreiben|beantworten"
    r"|tun|machen|liefern|teilen|nachkommen)\b"
    r"|ich bin (?:leider )?nicht in der lage"
)
_PT = (
    r"não (?:posso|consigo|vou|sou capaz de|tenho como|estou em condições de)\s+"
    r"(?:te |lhe )?(?:ajud|fornec|ger|cri|escrev|respond|atend|dar|compartilh|fazer isso|auxili"
    r"|prest)"
)
_ZH = (
    r"我(?:无法|不能|没办法|不可以|没法)(?:为你|为您|帮你|帮您|替你)?"
    r"(?:帮助|帮忙|协助|提供|回答|满足|完成|生成|处理|写|做|参与)|这不是我能(?:帮忙|帮助|协助|做)"
)
# Openers that may come before the decline in the same sentence.
_PREAMBLE = (
    r"(?:(?:i(?:'m| am)|i'm really|i am really) (?:really |so |very |truly )?sorry|sorry"
    r"|(?:my )?apologies|i apologi[sz]e|unfortunately|i'm afraid|i am afraid|no"
    r"|thanks? (?:you )?for asking|i(?:'d| would) love to(?: help)?|regrettably"
    r"|as an ai(?: language model| assistant| model)?"
    r"|lo siento(?: mucho)?|lo lamento|lamentablemente|disculp[ae]|perdón|me temo que"
    r"|je suis (?:vraiment )?désolée?|désolée?|je regrette|malheureusement|hélas"
    r"|es tut mir (?:sehr )?leid|tut mir leid|entschuldigung|leider|bedauerlicherweise"
    r"|desculp[ae]|sinto muito|lamento|infelizmente"
    r"|(?:很|非常|十分)?(?:抱歉|对不起|不好意思))"
    r"[\s,.!—–\-，。！]*(?:(?:but|pero|mais|aber|mas)\s+)?"  # noqa: RUF001
)
# Tried only at sentence starts: one anchored match per sentence, not a scan of every offset.
_DECLINE = re.compile(rf"\s*[¡¿]?(?:{_PREAMBLE})?(?:{_EN}|{_ES}|{_FR}|{_DE}|{_PT}|{_ZH})")
# A decline that goes on to deliver in the same sentence is an answer.
_DELIVERS = re.compile(
    r"\bbut (?:here|below|roughly|approximately|about|around|generally|in general)\b"
    r"|\b(?:pero|mais|aber|mas) (?:aquí|voici|hier|aqui)\b"
)
_SENTENCE_END = re.compile(r"[.!?。！？\n]")  # noqa: RUF001


def _normalised(text: str) -> str:
    opening = text[:REFUSAL_WINDOW_CHARS].replace("\u2019", "'").replace("\u2018", "'")
    opening = opening.casefold()
    if _QUOTE_MARKS.search(opening):
        opening = _QUOTED.sub(" ", opening)
    if _SINGLE_QUOTE_OPENING.search(opening):
        opening = _SINGLE_QUOTED.sub(" ", opening)
    if ">" in opening:
        opening = _BLOCK_QUOTE.sub(" ", opening)
    return opening


# The rules' version is a digest of their patterns: any change to them changes the metrics'
# `detector` label, so a refusal rate is only ever compared with one from the same rules.
PHRASE_RULES_VERSION = hashlib.sha256(
    (_DECLINE.pattern + _DELIVERS.pattern + _QUOTED.pattern).encode()
).hexdigest()[:8]


class PhraseRefusalDetector:
    """Recognises refusals by their phrasing (en, es, fr, de, pt, zh); about 10 µs per answer."""

    name = f"phrase:{PHRASE_RULES_VERSION}"

    def is_refusal(self, text: str) -> bool:
        opening = _normalised(text)
        starts = [0, *(end.end() for end in _SENTENCE_END.finditer(opening))]
        for start in starts:
            decline = _DECLINE.match(opening, start)
            if decline is None:
                continue
            end = _SENTENCE_END.search(opening, decline.end())
            rest = opening[decline.end() : end.start() if end else len(opening)]
            if not _DELIVERS.search(rest):
                return True
        return False
