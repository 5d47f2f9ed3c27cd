"""The pure parts of `orch graph` and `orch report`: Mermaid escaping, the chart of a plan too large to
draw task by task, Markdown escaping."""

from __future__ import annotations

import re

from orch.views.mermaid import Node, escape, render
from orch.views.report_markdown import md_code, md_text
from tests.helpers import DIAMOND, layered_dag


def nodes(tasks: list[dict[str, object]], state: str | None = None) -> list[Node]:
    return [Node(str(t["id"]), str(t["title"]), tuple(t.get("after", ())), state) for t in tasks]  # type: ignore[arg-type]


def test_mermaid_labels_escape_what_mermaid_or_html_would_read() -> None:
    assert escape('say "hi" <b>&</b> #1 `x`') == "say #quot;hi#quot; #lt;b#gt;#amp;#lt;/b#gt; #35;1 #96;x#96;"
    assert escape("%%{init: {}}%%") == "#37;#37;{init: {}}#37;#37;"  # not a directive
    assert escape("two\nlines   here") == "two lines here"
    assert escape("abcdefghij", limit=5) == "abcd…"


def test_a_small_plan_is_drawn_task_by_task_in_stage_subgraphs() -> None:
    chart = render(nodes(DIAMOND, "succeeded"), "plan p")
    assert chart.note is None
    lines = chart.text.splitlines()
    assert lines[0] == "flowchart TD"
    assert [line.strip() for line in lines if line.strip().startswith("subgraph")] == [
        'subgraph stage0 ["stage 1 · 1 task"]',
        'subgraph stage1 ["stage 2 · 2 tasks"]',
        'subgraph stage2 ["stage 3 · 1 task"]',
    ]
    assert sum(1 for line in lines if "-->" in line) == 4
    assert "    class n0,n1,n2,n3 succeeded" in lines


def test_a_large_plan_is_drawn_as_a_chain_of_stages_and_says_so() -> None:
    big = nodes(layered_dag(width=10, depth=30), "pending")  # 300 tasks, 580 dependencies
    chart = render(big, "plan big", max_nodes=20)
    assert chart.note is not None and "300 tasks and 580 dependencies" in chart.note
    stage_nodes = re.findall(r'^    (s\d+)\["([^"]*)"\]$', chart.text, flags=re.MULTILINE)
    assert len(stage_nodes) == 20
    assert stage_nodes[0] == ("s0", "stage 1 · 10 tasks<br/>10 pending")
    assert stage_nodes[-1] == ("s19", "stages 20 to 30 · 110 tasks<br/>110 pending")
    assert chart.text.count("-->") == 19
    assert f"%% {chart.note}" in chart.text
    # within the limits, the same plan is drawn task by task
    assert render(big[:100], "plan big").note is None


def test_markdown_text_and_code_spans_escape_what_would_break_a_table() -> None:
    assert md_text("a | b <i>x</i> *y* #2\nnext") == r"a \| b \<i\>x\</i\> \*y\* \#2 next"
    assert md_code("plain") == "`plain`"
    assert md_code("has `ticks`") == "`` has `ticks` ``"
    assert md_code("a|b", in_table=True) == r"`a\|b`"


def test_mermaid_labels_and_comments_show_control_and_bidi_characters_as_escapes() -> None:
    assert escape("T1 \x1b]0;SPOOFED\x07\x1b[2J \u202eevil") == "T1 \\x1b]0;SPOOFED\\x07\\x1b[2J \\u202eevil"
    chart = render([Node("a", "ok", ())], "plan file \x1b]0;X\x07.json: \u202et")
    assert "\x1b" not in chart.text and "\x07" not in chart.text and "\u202e" not in chart.text
    assert "    %% plan file \\x1b]0;X\\x07.json: \\u202et" in chart.text.splitlines()


def test_markdown_text_pings_nobody_and_links_nothing() -> None:
    assert md_text("thanks @octocat and @org/team") == "thanks @&#8203;octocat and @&#8203;org/team"
    assert md_text("see https://evil.example/x or WWW.evil.example") == (
        "see https:&#8203;//evil.example/x or WWW&#8203;.evil.example"
    )
    assert md_text("mail a@b.example") == "mail a@&#8203;b.example"
    assert md_text("&#64;octocat") == r"\&\#64;octocat"  # an entity in the text stays text


def test_markdown_text_and_code_show_control_and_bidi_characters_as_escapes() -> None:
    assert md_text("\x1b]0;PWNED\x07 bell \x07 \u202e") == r"\\x1b\]0;PWNED\\x07 bell \\x07 \\u202e"
    assert md_code("evil\x1b[31m.py \u2066") == r"`evil\x1b[31m.py \u2066`"


def test_counted_says_one_thing_and_many_things() -> None:
    from orch.views.format import counted

    assert [counted(1, "task"), counted(2000, "task")] == ["1 task", "2,000 tasks"]
    assert [counted(1, "dependency", "dependencies"), counted(0, "dependency", "dependencies")] == [
        "1 dependency",
        "0 dependencies",
    ]


def test_a_piped_table_is_plain_and_never_folds() -> None:
    import io

    from rich.console import Console
    from rich.table import Table

    from orch.views.format import line, show_table

    error = "command failed: " + "x" * 300

    def table() -> Table:
        made = Table(title=line("plan p-1 [bold]"))
        for column in ("task", "error"):
            made.add_column(column, overflow="fold")
        made.add_row(line("a-task-with-a-long-name"), line(error))
        made.add_row("b", "")
        return made

    piped = Console(file=io.StringIO(), width=80)  # not a terminal: what `| cat` gives
    show_table(piped, table())
    assert piped.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "plan p-1 [bold]",
        "task                     error",
        f"a-task-with-a-long-name  {error}",
        "b",
    ]
    screen = Console(file=io.StringIO(), width=80, force_terminal=True)
    show_table(screen, table())
    assert "┃" in screen.file.getvalue()  # type: ignore[attr-defined]
