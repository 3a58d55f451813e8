"""The documentation: the README's command lines parse, its links resolve, the help texts name the
shipped model, and no tracked text file speaks of how the work was organised (numbered work
periods, ticket numbers) instead of what the code or figure is."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt"}
SKIP_DIRS = {".venv", ".git", "__pycache__", "node_modules", "build", "dist", "runs", ".carry"}

# Built from pieces so that this file does not match its own patterns.
_WORD = "se" + "ssion"
ORGANISATION = [
    (re.compile(r"\b" + _WORD + r"[ -]?\d+", re.I), "a numbered work period"),
    (re.compile(r"\b(?:in|from) the same " + _WORD + r"\b", re.I), "a work period"),
    (re.compile(r"(?<![\w&/#])#" + r"\d+\b"), "a ticket number"),
    (re.compile(r"\bdevice (?:to" + r"ol|ca" + r"ll)\b", re.I), "a tool only the developers have"),
    (re.compile(r"\bproject br" + r"ief\b", re.I), "a work brief"),
]


def tracked_text_files(root: Path = ROOT) -> list[Path]:
    """Tracked *.py/*.md/*.sh/*.toml/*.txt files (git ls-files), or a walk of the tree without git."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True,
                             check=True, timeout=30).stdout.decode()
        files = [root / name for name in out.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        files = []
    if not files:
        files = [p for p in root.rglob("*")
                 if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(root).parts)]
    return sorted(p for p in files if p.suffix in TEXT_SUFFIXES and p.is_file())


def organisation_references(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, line) of every reference to how the work was organised."""
    hits = []
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, what in ORGANISATION:
            if pattern.search(line):
                hits.append((n, what, line.strip()))
    return hits


@pytest.mark.parametrize("text, found", [
    ("Re-measured in " + _WORD + " 7, a quiet hour.", True),
    ("measured in the same " + _WORD + ".", True),
    ("the shutdown path (#" + "13): SIGTERM", True),
    ("an idea tried for #" + "6.", True),
    ("run once with the device " + "tool", True),
    ("a path may name a tile as IMAGE#t0", False),
    ('parse_tile_path("a/odd#' + '1.jpg")', False),
    ("colour = '#ff00" + "aa'  # BGR", False),
    ('@pytest.fixture(scope="' + _WORD + '")', False),
    ("ort.InferenceSession(path)", False),
])
def test_organisation_patterns(text, found):
    assert bool(organisation_references(text)) is found


def test_no_work_organisation_references_in_tracked_text():
    files = tracked_text_files()
    assert any(p.name == "README.md" for p in files)
    bad = [f"{p.relative_to(ROOT)}:{n}: {what}: {line}"
           for p in files for n, what, line in organisation_references(p.read_text(errors="replace"))]
    assert not bad, "say what the code or figure is, not when or by whom it was made:\n" + "\n".join(bad)


def test_tree_walk_without_git_skips_the_venv(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("text\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "site.py").write_text("x = 2\n")
    assert [p.name for p in tracked_text_files(tmp_path)] == ["a.py", "notes.md"]


# --- the README's command lines -------------------------------------------------------------

def readme_snippets(text: str) -> list[str]:
    """The text of the README's code blocks (line by line) and of the code spans in its tables."""
    snippets, in_block = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif in_block:
            snippets.append(line)
        elif line.lstrip().startswith("|"):
            snippets += re.findall(r"`([^`]+)`", line)
    return snippets


def rtseg_commands(snippet: str) -> list[tuple[str, list[str]]]:
    """(command, [--options]) of every ``rtseg COMMAND ...`` in one shell line."""
    found = []
    for part in re.split(r"&&|\|\||;|\|", snippet.split(" #")[0]):
        try:
            words = shlex.split(part)
        except ValueError:
            words = part.split()
        for i, w in enumerate(words):
            if w == "rtseg" and i + 1 < len(words) and not words[i + 1].startswith("-"):
                found.append((words[i + 1],
                              [a.split("=")[0] for a in words[i + 2:] if a.startswith("--")]))
                break
    return found


def test_readme_command_parser():
    line = 'pip install -e ".[dev]" && rtseg stream --headless --json=s.json  # a comment --x'
    assert rtseg_commands(line) == [("stream", ["--headless", "--json"])]
    assert rtseg_commands("python -m rtseg.recipes.distill cv --folds 3") == []
    assert readme_snippets("| a | `rtseg bench --frames 100` |\n```bash\nrtseg export\n```\n`rtseg x`") \
        == ["rtseg bench --frames 100", "rtseg export"]


@pytest.fixture(scope="module")
def cli():
    import typer.main

    from rtseg.cli import app

    return app, typer.main.get_command(app)


def test_readme_commands_exist_with_their_options(cli):
    from typer.testing import CliRunner

    app, group = cli
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "the README is a guide: at most 250 lines"
    used: dict[str, set[str]] = {}
    for snippet in readme_snippets(text):
        for command, options in rtseg_commands(snippet):
            used.setdefault(command, set()).update(options)
    # the quick start's main job and every job the README promises an example of
    assert {"stream", "predict", "batch", "export"} <= set(used)
    runner = CliRunner()
    problems = []
    for command, options in sorted(used.items()):
        if command not in group.commands:
            problems.append(f"rtseg {command}: no such command")
            continue
        res = runner.invoke(app, [command, "--help"])
        if res.exit_code != 0:
            problems.append(f"rtseg {command} --help exits {res.exit_code}")
        known = {o for p in group.commands[command].params for o in (*p.opts, *p.secondary_opts)}
        problems += [f"rtseg {command} {o}: no such option" for o in sorted(options - known)]
    assert not problems, "\n".join(problems)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, - for spaces)."""
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_anchor_slugs():
    assert anchors("## `rtseg batch`\n### Errors, outputs, stopping and exit codes\n") == {
        "rtseg-batch", "errors-outputs-stopping-and-exit-codes"}


def test_readme_and_docs_links_resolve():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    assert {"results.md", "model.md", "speed.md", "paper.md"} <= {p.name for p in pages}
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
            if "://" in target:
                continue
            dest = (page.parent / target) if target else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                broken.append(f"{page.name}: {target}#{anchor}")
    assert not broken, f"links to missing files or headings: {broken}"


def test_help_texts_name_the_shipped_model(cli):
    app, group = cli
    assert "EfficientNet-Lite1" in (group.help or "")
    assert "b1 classifier" not in (group.help or "")
    with_model = [name for name, cmd in group.commands.items()
                  if any("--model" in p.opts and not p.required for p in cmd.params)]
    assert {"stream", "batch", "export", "predict", "eval", "bench"} <= set(with_model)
    for name in with_model:
        opt = next(p for p in group.commands[name].params if "--model" in p.opts)
        assert "EfficientNet-Lite1" in opt.help, f"rtseg {name} --model does not name the shipped model"


def test_command_help_reflows_to_the_terminal():
    """Help paragraphs are single lines (the terminal wraps them); examples keep their lines."""
    from rtseg.cli import app, reflow

    assert reflow("One two\nthree.\n\nFour\nfive.") == "One two three.\n\nFour five."
    assert reflow("Examples:\n  rtseg a\n  rtseg b") == "Examples:\n  rtseg a\n  rtseg b"
    for info in app.registered_commands:
        for para in (info.help or "").split("\n\n"):
            lines = para.splitlines()
            assert len(lines) == 1 or any(ln[:1].isspace() for ln in lines), (info.name, para[:60])
