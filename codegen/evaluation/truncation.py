"""Where a generated HumanEval-X completion ends.

A completion continues a prompt that stops inside a function (after Python's
docstring, after a C-like signature's `{`). The function is over at the first
unindented line for Python, and where its braces balance for the C-like
languages; everything after that is something else the model went on to
write. Generation stops early on `stop_sequences(language)` to save tokens;
`truncate_completion` then cuts at the exact end.
"""
from __future__ import annotations

import re

from ..languages import function_end_stops

BRACE_LANGUAGES = ("cpp", "java", "js", "go", "rust")

# a top-level statement after the function means the function is finished
_PYTHON_STOPS = function_end_stops("Python")
# braces the prompt leaves open: Java's method sits inside `class Solution {`
_OPEN_AT_START = {"java": 2}
# a `}` in the first column closes the outermost open brace (Java: the class)
_BRACE_STOPS = ["\n}"]

_RUST_CHAR = re.compile(r"'(?:\\(?:u\{[0-9a-fA-F]{1,6}\}|x[0-9a-fA-F]{2}|.)|[^'\\\n])'")
_RUST_RAW_STRING = re.compile(r'b?r(#*)"')


def stop_sequences(language: str) -> list[str]:
    """Strings that end generation for `language` (one of BRACE_LANGUAGES or 'python')."""
    if language == "python":
        return list(_PYTHON_STOPS)
    _check_brace_language(language)
    return list(_BRACE_STOPS)


def truncate_completion(language: str, text: str, starts_line: bool = False) -> str:
    """`text` up to the end of the function it continues; unchanged if that end is not in it.

    `starts_line`: the prompt ended with a newline, so for Python text that begins unindented has
    already left the function (stop strings, which need the newline, cannot see that).
    """
    if language == "python":
        top_level = re.search(r"^(?=\S)" if starts_line else r"\n(?=\S)", text, re.MULTILINE)
        return text[:top_level.start()] if top_level else text
    _check_brace_language(language)
    depth = _OPEN_AT_START.get(language, 1)
    for index, brace in _code_braces(language, text):
        depth += 1 if brace == "{" else -1
        if depth == 0:
            return text[:index + 1]
    return text


def restore_stop(language: str, text: str, finish_reason: str) -> str:
    """Put back the closing brace a matched stop string took with it.

    Generated text excludes the stop string, and for brace languages "\\n}" is the
    function's (Java: the class's) last line. When generation ended on a stop and
    exactly that brace is missing, it is appended. An end-of-text token in the
    same place is indistinguishable here and is treated the same way.
    """
    if language not in BRACE_LANGUAGES or finish_reason != "stop":
        return text
    depth = _OPEN_AT_START.get(language, 1)
    for _, brace in _code_braces(language, text):
        depth += 1 if brace == "{" else -1
        if depth == 0:
            return text
    return text + "\n}" if depth == 1 else text


def _check_brace_language(language: str) -> None:
    if language not in BRACE_LANGUAGES:
        raise ValueError(f"unknown language {language!r}: expected python or one of {', '.join(BRACE_LANGUAGES)}")


def _code_braces(language: str, text: str):
    """(index, brace) of each `{` and `}` outside comments, strings and character literals."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "{}":
            yield i, c
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif language == "rust" and (raw := _RUST_RAW_STRING.match(text, i)) and (
                i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            closing = '"' + raw.group(1)
            end = text.find(closing, raw.end())
            i = n if end < 0 else end + len(closing)
        elif c == '"':
            i = _skip_quoted(text, i, '"')
        elif c == "'":
            if language == "rust":
                # 'a' is a character, 'a alone is a lifetime
                char = _RUST_CHAR.match(text, i)
                i = char.end() if char else i + 1
            else:
                i = _skip_quoted(text, i, "'")
        elif c == "`" and language in ("js", "go"):
            # JS template literals may escape a backtick; Go raw strings have no escapes
            i = _skip_quoted(text, i, "`", escapes=language == "js")
        else:
            i += 1


def _skip_quoted(text: str, start: int, quote: str, escapes: bool = True) -> int:
    i = start + 1
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
        elif text[i] == quote:
            return i + 1
        else:
            i += 1
    return len(text)
