"""Search queries: what a user types after ``/search``, as terms; the SQLite FTS5 expression for them; and
where they match in a text (code-point offsets, for any client to mark).

A query is words, all of which must occur (``deploy failed``), ``"a phrase"`` (its words in a row), and
``word*`` (any word starting so). Words are letters and digits; case and accents do not matter (as SQLite's
``unicode61`` tokenizer with ``remove_diacritics 2`` sees them). The FTS5 expression is built from the
terms, every word quoted, so no query a user types can be an FTS5 syntax error or reach FTS5's operators.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ..protocol import MAX_QUERY_CHARS

MAX_TERMS = 16
WORD = re.compile(r"[^\W_]+")  # what unicode61 keeps as a token: letters, digits (not "_", not punctuation)
_PART = re.compile(r'"([^"]*)"?|(\S+)')


class QueryError(ValueError):
    """The query cannot be searched for; its text says why, for the user."""


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # folded; several: a phrase
    prefix: bool = False  # the last word is a prefix


def fold(word: str) -> str:
    """A word as the index sees it: lower case, accents removed (not case-folded: unicode61 keeps "ß")."""
    decomposed = unicodedata.normalize("NFD", word.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def parse(query: str) -> list[Term]:
    """The terms of ``query``; QueryError if there is nothing to search for, or too much."""
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"search: the query is longer than {MAX_QUERY_CHARS} characters")
    terms: list[Term] = []
    for phrase, bare in _PART.findall(query):
        text = phrase if phrase else bare
        prefix = not phrase and text.endswith("*")
        words = tuple(fold(w) for w in WORD.findall(text))
        if words:
            terms.append(Term(words, prefix))
    if not terms:
        raise QueryError("search: give a word to look for (letters or digits)")
    if len(terms) > MAX_TERMS:
        raise QueryError(f"search: at most {MAX_TERMS} words or phrases")
    return terms


def fts_expression(terms: list[Term]) -> str:
    """The FTS5 MATCH expression for ``terms``: every one of them, each word a quoted string."""
    parts = []
    for term in terms:
        quoted = '"' + " ".join(term.words).replace('"', '""') + '"'
        parts.append(quoted + ("*" if term.prefix else ""))
    return " AND ".join(parts)


def _tokens(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), fold(m.group())) for m in WORD.finditer(text)]


def _spans(term: Term, tokens: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    n = len(term.words)
    out = []
    for i in range(len(tokens) - n + 1):
        window = tokens[i:i + n]
        if all(tok == word for (_s, _e, tok), word in zip(window[:-1], term.words[:-1])):
            last, want = window[-1][2], term.words[-1]
            if last == want or (term.prefix and last.startswith(want)):
                out.append((window[0][0], window[-1][1]))
    return out


def marks(terms: list[Term], text: str) -> list[list[int]]:
    """``[start, end]`` code-point offsets in ``text`` of every match of any term, in order, merged."""
    tokens = _tokens(text)
    spans = sorted(span for term in terms for span in _spans(term, tokens))
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def matches(terms: list[Term], text: str) -> bool:
    """Whether ``text`` holds every term (what FTS5 would find)."""
    tokens = _tokens(text)
    return all(_spans(term, tokens) for term in terms)
