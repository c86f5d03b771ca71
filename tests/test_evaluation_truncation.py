"""Where a generated completion ends: stop rules per language."""
import pytest

from codegen.evaluation.problems import LANGUAGES, load_humaneval_x
from codegen.evaluation.truncation import restore_stop, stop_sequences, truncate_completion

# what a model might write after finishing the function
AFTERWARDS = {"python": "\n\ndef helper():\n    return 1\n", "cpp": "\nint main(){ return 0; }\n",
              "java": "\nclass Other { }\n", "js": "\nconst other = () => {}\n",
              "go": "\nfunc other() int { return 1 }\n", "rust": "\nfn other() -> i32 { 1 }\n"}


def test_python_cuts_at_first_top_level_line():
    body = "    x = 1\n\n    if x:\n        return x\n    # a comment inside\n    return 0\n"
    for tail in ("def g():\n    pass\n", "if __name__ == '__main__':\n    g()\n", "print(1)\n", "# note\n",
                 "class A:\n    pass\n", "x = 2\n"):
        assert truncate_completion("python", body + "\n" + tail) == body
    assert truncate_completion("python", body) == body


def test_python_stop_sequences_are_the_top_level_starts():
    assert {"\ndef", "\nclass", "\nif", "\nprint", "\n#"} <= set(stop_sequences("python"))


@pytest.mark.parametrize("language,text,expected_end", [
    ("cpp", '    string s = "}{";\n    char c = \'}\';\n    return s;\n}\nint main(){}', '    return s;\n}'),
    ("cpp", "    // } not code\n    /* } nor this */\n    return 1;\n}\nrest", "    return 1;\n}"),
    ("js", "  const t = `${a}}`;\n  return t\n}\nconst x = () => {}", "  return t\n}"),
    ("go", "    s := `}`\n    r := '}'\n    return s\n}\nfunc f() {}", "    return s\n}"),
    ("rust", "    let s = format!(\"{}}}\", x);\n    return s;\n}\nfn main() {}", "    return s;\n}"),
    ("rust", "    fn f<'a>(x: &'a str) -> char { '{' }\n    f(\"a\")\n}\nfn g() {}", "    f(\"a\")\n}"),
    ("rust", "    let s = r#\"}\"#;\n    s.len()\n}\nfn g() {}", "    s.len()\n}"),
    ("java", "        return 1;\n    }\n    int helper() { return 2; }\n}\npublic class X {}",
     "    int helper() { return 2; }\n}"),
])
def test_brace_languages_end_where_braces_balance(language, text, expected_end):
    truncated = truncate_completion(language, text)
    assert truncated.endswith(expected_end)
    assert text.startswith(truncated)


def test_unfinished_function_is_left_alone():
    assert truncate_completion("cpp", "    if (x) {\n        return 1;\n") == "    if (x) {\n        return 1;\n"


def test_restore_stop_puts_back_the_excluded_closing_brace():
    assert restore_stop("cpp", "    return 1;", "stop") == "    return 1;\n}"
    # Java: the stop "\n}" closes the class after the method's own indented brace
    assert restore_stop("java", "        return 1;\n    }", "stop") == "        return 1;\n    }\n}"
    assert restore_stop("cpp", "    return 1;", "length") == "    return 1;"
    assert restore_stop("cpp", "    return 1;\n}", "stop") == "    return 1;\n}"
    # stopped while two blocks were open: not ours to repair
    assert restore_stop("cpp", "    if (x) {\n        return 1;", "stop") == "    if (x) {\n        return 1;"
    assert restore_stop("python", "    return 1", "stop") == "    return 1"


def test_unknown_language_is_an_error():
    with pytest.raises(ValueError, match="unknown language"):
        truncate_completion("cobol", "x")


def _single_function(language, canonical):
    # canonical solutions that define helpers after the function, or put inner braces in column 0,
    # end earlier than the whole canonical text under any end-of-function rule
    return language == "python" or (canonical.count("\n}") == 1 and canonical.rstrip().endswith("}"))


@pytest.mark.parametrize("language", LANGUAGES)
def test_canonical_solutions_survive_stop_and_truncation(language):
    """Generation as the predictor does it (text cut before the first stop string), then our repair and cut."""
    checked = 0
    for problem in load_humaneval_x(language):
        canonical = problem.canonical_solution
        if not _single_function(language, canonical):
            continue
        generated = canonical + AFTERWARDS[language]
        stops = [generated.find(s) for s in stop_sequences(language) if s in generated]
        cut = min(stops) if stops else len(generated)
        text = restore_stop(language, generated[:cut], "stop" if stops else "length")
        completion = truncate_completion(language, text)
        expected = canonical if language == "python" else canonical[:canonical.rindex("}") + 1]
        assert completion.rstrip() == expected.rstrip(), problem.task_id
        checked += 1
    assert checked >= 150


def test_python_after_a_prompt_ending_its_line_an_unindented_start_has_left_the_function():
    body = "    return 1\n"
    assert truncate_completion("python", "def helper():\n" + body, starts_line=True) == ""
    assert truncate_completion("python", body + "x = 2\n", starts_line=True) == body
    # mid-line prompts ("    return") continue the line: only later lines count
    assert truncate_completion("python", "x + 1\ny = 2\n") == "x + 1"
