"""CodeGeeX's prompt conventions: language tags, translation prompts, function-end stops."""
import pytest

from codegen.generation.stopping import find_stop
from codegen.languages import (LANGUAGE_TAGS, canonical_language, close_function, function_end_stops,
                               translation_prompt, with_language_tag)


@pytest.mark.parametrize("language, first_line", [
    ("Python", "# language: Python"),
    ("cpp", "// language: C++"),
    ("C++", "// language: C++"),
    ("js", "// language: JavaScript"),
    ("go", "// language: Go"),
    ("RUST", "// language: Rust"),
    ("java", "// language: Java"),
    ("html", "<!--language: HTML-->"),
    ("sql", "-- language: SQL"),
])
def test_prompt_starts_with_the_tag_codegeex_was_trained_with(language, first_line):
    assert with_language_tag("int add(int a, int b) {", language) == f"{first_line}\nint add(int a, int b) {{"


def test_a_prompt_already_tagged_is_not_tagged_twice():
    once = with_language_tag("def f():", "python")
    assert with_language_tag(once, "Python") == once


def test_unknown_language_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown language 'klingon': choose from C, C\\+\\+"):
        with_language_tag("x", "klingon")


def test_every_language_has_a_name_of_its_own():
    for name in LANGUAGE_TAGS:
        assert canonical_language(name.lower()) == name
        assert LANGUAGE_TAGS[name].count("language: ") == 1


def test_translation_prompt_has_codegeex_layout():
    source = "def add(a, b):\n    return a + b\n\n"
    prompt = translation_prompt(source, "python", "cpp", target_prefix="int add(int a, int b) {")
    assert prompt == ("code translation\nPython:\ndef add(a, b):\n    return a + b\n"
                      "C++:\nint add(int a, int b) {")
    assert translation_prompt("x", "JS", "go").endswith("JavaScript:\nx\nGo:\n")


def test_function_end_stops_end_a_function_at_the_right_place():
    cpp = "    return a + b;\n}\n\nint main() {\n    return 0;\n}\n"
    cut = cpp[:find_stop(cpp, function_end_stops("C++"))]
    assert close_function(cut, "C++") == "    return a + b;\n}"

    python = "    if a:\n        return b\n    return a + b\n\nprint(add(1, 2))\n"
    cut = python[:find_stop(python, function_end_stops("python"))]
    assert close_function(cut, "python") == "    if a:\n        return b\n    return a + b\n"

    ruby = "  a + b\nend\n\nputs add(1, 2)\n"
    cut = ruby[:find_stop(ruby, function_end_stops("ruby"))]
    assert close_function(cut, "ruby") == "  a + b\nend"


def test_indented_lines_do_not_end_a_function():
    body = "    for x in xs:\n        if x:\n            print(x)\n    # done\n"
    assert find_stop(body, function_end_stops("Python")) == -1
    go = "\tfor i := 0; i < n; i++ {\n\t\ts += i\n\t}\n"
    assert find_stop(go, function_end_stops("go")) == -1


def test_languages_without_a_known_function_end_have_no_stops():
    assert function_end_stops("Markdown") == []
    assert close_function("text", "Markdown") == "text"
