"""Programming languages as CodeGeeX's prompts name them.

CodeGeeX was trained with a first line naming each file's language in that
language's comment syntax (`# language: Python`, `// language: C++`); putting the
same line before a prompt tells the model which language to continue in. Its
translation data put the source and the target under `code translation`, each
after a `Name:` line. The tags below are the ones THUDM's training data used.
"""
from __future__ import annotations

# display name -> the first line CodeGeeX saw on files of that language
LANGUAGE_TAGS = {
    "C": "// language: C",
    "C++": "// language: C++",
    "C#": "// language: C#",
    "CSS": "/* language: CSS */",
    "Cuda": "// language: Cuda",
    "Dart": "// language: Dart",
    "Lua": "// language: Lua",
    "Objective-C": "// language: Objective-C",
    "Objective-C++": "// language: Objective-C++",
    "Python": "# language: Python",
    "Perl": "# language: Perl",
    "Prolog": "% language: Prolog",
    "Swift": "// language: swift",
    "Lisp": "; language: Lisp",
    "Java": "// language: Java",
    "Scala": "// language: Scala",
    "TeX": "% language: TeX",
    "Vue": "<!--language: Vue-->",
    "Markdown": "<!--language: Markdown-->",
    "HTML": "<!--language: HTML-->",
    "PHP": "// language: PHP",
    "JavaScript": "// language: JavaScript",
    "TypeScript": "// language: TypeScript",
    "Go": "// language: Go",
    "Shell": "# language: Shell",
    "Rust": "// language: Rust",
    "SQL": "-- language: SQL",
    "Kotlin": "// language: Kotlin",
    "Visual Basic": "' language: Visual Basic",
    "Ruby": "# language: Ruby",
    "Pascal": "// language: Pascal",
    "R": "# language: R",
    "Fortran": "!language: Fortran",
    "Lean": "-- language: Lean",
    "Matlab": "% language: Matlab",
    "Delphi": "{language: Delphi}",
    "Scheme": "; language: Scheme",
    "Basic": "' language: Basic",
    "Assembly": "; language: Assembly",
    "Groovy": "// language: Groovy",
    "Abap": "* language: Abap",
    "GDScript": "# language: GDScript",
    "Haskell": "-- language: Haskell",
    "Julia": "# language: Julia",
    "Elixir": "# language: Elixir",
    "Excel": "' language: Excel",
    "Clojure": "; language: Clojure",
    "ActionScript": "// language: ActionScript",
    "Solidity": "// language: Solidity",
    "PowerShell": "# language: PowerShell",
    "Erlang": "% language: Erlang",
    "Cobol": "// language: Cobol",
}

# other spellings people (and HumanEval-X file names) use
_ALIASES = {
    "cpp": "C++", "cxx": "C++",
    "csharp": "C#", "cs": "C#",
    "js": "JavaScript", "node": "JavaScript",
    "ts": "TypeScript",
    "py": "Python", "python3": "Python",
    "golang": "Go",
    "rs": "Rust",
    "objectivec": "Objective-C", "objc": "Objective-C",
    "vb": "Visual Basic",
    "bash": "Shell", "sh": "Shell",
}
_BY_LOWER = {**{name.lower(): name for name in LANGUAGE_TAGS}, **_ALIASES}

# A generated function is complete when one of these appears in the new text.
# Python: any unindented statement after the function starts something else
# (the list HumanEval-X generation uses). Brace languages: a `}` at the start of
# a line closes a top-level function; `end` languages likewise. Generation cuts
# the stop string from the text, so for those two `close_function` puts the
# closing line back.
_PYTHON_END = ("\ndef", "\nclass", "\nif", "\nprint", "\n#", "\nassert", "\n@")
_BRACE_END = ("\n}",)
_KEYWORD_END = ("\nend\n",)
FUNCTION_END_STOPS = {
    "Python": _PYTHON_END,
    **{name: _BRACE_END for name in ("C", "C++", "C#", "Cuda", "Dart", "Objective-C", "Objective-C++", "Swift",
                                     "Java", "Scala", "PHP", "JavaScript", "TypeScript", "Go", "Shell", "Rust",
                                     "Kotlin", "Groovy", "ActionScript", "Solidity")},
    **{name: _KEYWORD_END for name in ("Ruby", "Lua", "Julia", "Elixir")},
}
_CLOSING_LINE = {_BRACE_END: "\n}", _KEYWORD_END: "\nend"}


def canonical_language(language: str) -> str:
    """CodeGeeX's name for `language` ('cpp' -> 'C++', 'python' -> 'Python')."""
    if not isinstance(language, str) or language.strip().lower() not in _BY_LOWER:
        raise ValueError(f"unknown language {language!r}: choose from {', '.join(LANGUAGE_TAGS)} "
                         f"(or {', '.join(sorted(_ALIASES))})")
    return _BY_LOWER[language.strip().lower()]


def language_tag(language: str) -> str:
    """The tag line for `language`, e.g. '// language: C++'."""
    return LANGUAGE_TAGS[canonical_language(language)]


def with_language_tag(prompt: str, language: str) -> str:
    """`prompt` after its language's tag line; a prompt already starting with it is unchanged."""
    tag = language_tag(language)
    if prompt.startswith(tag + "\n"):
        return prompt
    return f"{tag}\n{prompt}"


def translation_prompt(source_code: str, source_language: str, target_language: str,
                       target_prefix: str = "") -> str:
    """CodeGeeX's translation prompt: the model continues with the code in `target_language`.

    `target_prefix` (e.g. the target function's signature) is placed after the
    target's header line so the translation starts from it.
    """
    source_name = canonical_language(source_language)
    target_name = canonical_language(target_language)
    return f"code translation\n{source_name}:\n{source_code.rstrip()}\n{target_name}:\n{target_prefix}"


def function_end_stops(language: str) -> list[str]:
    """Stop strings that end a top-level function in `language` ([] if we know none).

    They assume the generated text continues inside the function, i.e. the
    prompt ends with its signature (as HumanEval-X prompts do, and translation
    prompts given the target signature as `target_prefix`); otherwise a Python
    import or comment line before the function would already match.
    """
    return list(FUNCTION_END_STOPS.get(canonical_language(language), ()))


def close_function(text: str, language: str) -> str:
    """`text` that generation cut at a `function_end_stops` string, with the
    function's closing line (`}`, `end`) put back; Python text is complete as it is."""
    return text + _CLOSING_LINE.get(FUNCTION_END_STOPS.get(canonical_language(language)), "")
