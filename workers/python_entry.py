"""Runs one `package.module:function` for the python executor, in its own process: `python -m
workers.python_entry TARGET`. The task context comes as JSON in $ORCH_CONTEXT_FILE; the function's return value
goes back as JSON in $ORCH_RESULT_FILE. An exception exits non-zero with its traceback on stderr."""

from __future__ import annotations

import importlib
import json
import os
import sys


def main(target: str) -> None:
    module_name, _, function_name = target.partition(":")
    sys.path.insert(0, os.getcwd())  # the task's workdir: users' own modules import from there
    function = getattr(importlib.import_module(module_name), function_name)
    with open(os.environ["ORCH_CONTEXT_FILE"], encoding="utf-8") as context_file:
        context = json.load(context_file)
    value = function(context)
    with open(os.environ["ORCH_RESULT_FILE"], "w", encoding="utf-8") as result_file:
        json.dump(value, result_file, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
