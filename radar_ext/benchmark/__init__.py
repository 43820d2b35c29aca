"""End-to-end benchmark harness (`radar bench`, bench/bench_e2e.py). Offline tooling only: nothing
in the inference path imports this package."""
from radar_ext.benchmark.aggregate import aggregate, mismatches, summarize
from radar_ext.benchmark.methods import (BASELINE, METHODS, BenchContext, BenchOptions, MethodUnavailable,
                                         UnknownMethod, availability, parse_methods)
from radar_ext.benchmark.questions import Question, QuestionFileError, load_questions, select_questions
from radar_ext.benchmark.report import build_report, format_table, machine_info, plot, write_json
from radar_ext.benchmark.runner import RunConfig, RunResult, run_benchmark

__all__ = ["BASELINE", "METHODS", "BenchContext", "BenchOptions", "MethodUnavailable", "Question",
           "QuestionFileError", "RunConfig", "RunResult", "UnknownMethod", "aggregate", "availability",
           "build_report", "format_table", "load_questions", "machine_info", "mismatches", "parse_methods",
           "plot", "run_benchmark", "select_questions", "summarize", "write_json"]
