"""A fake `claude` CLI speaking the documented stream-json output, for what the real one can't be made to do on
demand. The prompt (on stdin, as orch gives it; or after -p) chooses the behaviour with a marker `FAKE:<mode>`:

  success (default)  init, an assistant message, a success result with usage and cost
  hang               init, then silence forever
  ignore-term        ignores SIGTERM, forks two grandchildren that ignore it too, prints a line every 0.1 s
  flood              1 GiB of output (in 1 MiB lines), then a success result
  exit-mid           init, half a JSON line, exit status 3
  usage-limit        an error result: "Claude AI usage limit reached|<epoch in 2 s>"
  usage-limit-once   that on the first call for a prompt (a flag file in $FAKE_CLAUDE_STATE), success later
  error              an error result with api_error_status 401
  spend              an assistant message (1,000 tokens in and out each) every 0.05 s, forever
  env                a success result whose text is the JSON list of its environment's variable names
  env-values         a success result whose text is its whole environment as JSON, values included
  write              writes each `FAKE-WRITE:<path>=<text>` of the prompt (text up to the line's end, `\n` for a
                     newline) into its working folder, then succeeds
  plan               `orch plan --executor claude-code`'s planner, answering as `--output-format json` does (one
                     JSON result object): the next answer of the JSON list in the file $FAKE_CLAUDE_PLANS (a
                     draft plan, put in a ```json block after some prose; a string, given as the answer's text),
                     the last one again once they are used up; with $FAKE_CLAUDE_RECORD set, appends a JSON line
                     of its argv, environment's variable names, working folder and prompt there
  resolve            for a conflict-resolution prompt (its "Conflicted files:" list): keeps both sides of every
                     conflict in each listed file, markers removed, then succeeds (with FAKE-NO-RESOLVE in the
                     prompt it leaves them, and says it succeeded)

A prompt holding "Conflicted files:" (orch's conflict-resolution task) is `resolve` whatever else it says; one
holding FAKE-SLOW waits 1.5 s first, whatever its mode.

Every process it starts appends its pid (as its own pid namespace sees it) to $FAKE_CLAUDE_PIDS (when set), so a
test can count them; tests find what is left by a marker in the environment (`fake_claude_wrapper`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time


def emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def note_pid() -> None:
    path = os.environ.get("FAKE_CLAUDE_PIDS")
    if path:
        with open(path, "a") as pids:
            pids.write(f"{os.getpid()}\n")


def result(text: str, *, error: bool = False, status: int | None = None) -> dict[str, object]:
    return {
        "type": "result", "subtype": "error_during_execution" if error else "success", "is_error": error,
        "api_error_status": status, "duration_ms": 12, "num_turns": 1, "result": text, "session_id": "fake-session",
        "total_cost_usd": 0.0123,
        "usage": {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 30,
                  "cache_read_input_tokens": 40},
        "modelUsage": {"claude-sonnet-4-6": {"inputTokens": 1000, "outputTokens": 200, "costUSD": 0.0123}},
        "terminal_reason": "completed",
    }  # fmt: skip


def write_files(prompt: str) -> None:
    """Each `FAKE-WRITE:<path>=<text>` line of the prompt, written into the working folder."""
    for line in prompt.splitlines():
        if "FAKE-WRITE:" in line:
            path, _, text = line.split("FAKE-WRITE:", 1)[1].partition("=")
            folder = os.path.dirname(path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            with open(path, "w") as file:
                file.write(text.replace("\\n", "\n"))


def resolve_conflicts(prompt: str) -> None:
    """Every conflict of each file the prompt lists under "Conflicted files:", both sides kept, markers gone."""
    listed = prompt.split("Conflicted files:", 1)[1].split("\n\n", 1)[0]
    for path in (item.strip()[2:] for item in listed.strip().splitlines() if item.strip().startswith("- ")):
        with open(path) as file:
            kept = [line for line in file if not line.startswith(("<<<<<<< ", "=======", ">>>>>>> "))]
        with open(path, "w") as file:
            file.writelines(kept)


# The prompt's lists of other tasks (waiting on this one, running beside it): their titles' markers are not this
# task's, and a sibling listed or not depends on timing.
_OTHER_TASKS = re.compile(r"\n## Tasks (?:waiting on|running beside) this one[^\n]*\n.*?(?=\n## |\Z)", re.DOTALL)


def plan_answer(prompt: str, args: list[str]) -> None:
    """The `plan` mode: the next scripted answer of $FAKE_CLAUDE_PLANS, as one JSON result object."""
    record = os.environ.get("FAKE_CLAUDE_RECORD")
    if record:
        seen = {"args": args, "env": sorted(os.environ), "cwd": os.getcwd(), "prompt": prompt}
        with open(record, "a") as file:
            file.write(json.dumps(seen) + "\n")
    plans_file = os.environ["FAKE_CLAUDE_PLANS"]
    with open(plans_file) as file:
        answers = json.load(file)
    counter = plans_file + ".round"
    used = 0
    if os.path.exists(counter):
        with open(counter) as file:
            used = int(file.read())
    with open(counter, "w") as file:
        file.write(str(used + 1))
    answer = answers[min(used, len(answers) - 1)]
    text = answer if isinstance(answer, str) else f"I read the repository.\n\n```json\n{json.dumps(answer)}\n```"
    emit(result(text))


def main() -> None:  # noqa: C901 (one branch per mode, each a few lines)
    args = sys.argv[1:]
    after_p = args[args.index("-p") + 1] if "-p" in args and args.index("-p") + 1 < len(args) else "--"
    source = "argv" if not after_p.startswith("--") else "stdin"
    whole = after_p if source == "argv" else sys.stdin.read()
    prompt = _OTHER_TASKS.sub("", whole)
    mode = prompt.split("FAKE:", 1)[1].split()[0] if "FAKE:" in prompt else "success"
    if "Conflicted files:" in prompt:
        mode = "resolve"
    if "FAKE-SLOW" in prompt:
        time.sleep(1.5)
    note_pid()
    if mode == "plan":
        plan_answer(prompt, args)
        return
    init = {"type": "system", "subtype": "init", "model": "claude-sonnet-4-6", "cwd": os.getcwd(), "args": args}
    emit({**init, "prompt_from": source, "prompt_bytes": len(whole.encode()), "prompt": whole})
    if mode == "hang":
        time.sleep(3600)
    elif mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _ in range(2):
            if os.fork() == 0:
                note_pid()
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(3600)
                os._exit(0)
        while True:
            emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "still working"}]}})
            time.sleep(0.1)
    elif mode == "flood":
        chunk = "x" * (1024 * 1024 - 1) + "\n"
        for _ in range(1024):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        emit(result("flooded and done"))
    elif mode == "exit-mid":
        sys.stdout.write('{"type": "assistant", "message": {"content": [{"type": "te')
        sys.stdout.flush()
        sys.exit(3)
    elif mode == "usage-limit":
        emit(result(f"Claude AI usage limit reached|{int(time.time()) + 2}", error=True, status=429))
    elif mode == "usage-limit-once":
        # The first call (per prompt's first line) hits the limit, later ones succeed.
        digest = hashlib.sha256(prompt.splitlines()[0].encode()).hexdigest()[:16]
        flag = os.path.join(os.environ["FAKE_CLAUDE_STATE"], digest)
        if os.path.exists(flag):
            emit(result(f"did: {prompt.splitlines()[0]}"))
        else:
            open(flag, "w").close()
            emit(result(f"Claude AI usage limit reached|{int(time.time()) + 3}", error=True, status=429))
    elif mode == "spend":
        for turn in range(1_000_000):
            usage = {"input_tokens": 1000, "output_tokens": 1000}
            message = {"id": f"msg_{turn}", "content": [{"type": "text", "text": "spending"}], "usage": usage}
            emit({"type": "assistant", "message": message})
            time.sleep(0.05)
    elif mode == "env":
        emit(result(json.dumps(sorted(os.environ))))
    elif mode == "env-values":
        emit(result(json.dumps(dict(sorted(os.environ.items())))))
    elif mode == "write":
        write_files(prompt)
        emit(result("wrote the files"))
    elif mode == "resolve":
        if "FAKE-NO-RESOLVE" not in prompt:
            resolve_conflicts(prompt)
        emit(result("resolved the conflicts, keeping both sides"))
    elif mode == "error":
        emit(result("Invalid API key · Please run /login", error=True, status=401))
    else:
        emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "working on it"}]}})
        emit(result(f"did: {prompt.splitlines()[0] if prompt else 'nothing'}"))


if __name__ == "__main__":
    main()
