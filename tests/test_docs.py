"""The documentation's examples run: every Python block, and every ``byzance`` command line.

Python blocks (```python fences) run page by page, in order, in one namespace per page (a
tutorial's blocks build on each other), in a temporary folder. A block preceded by the line
``<!-- docs-test: skip REASON -->`` is not run (REASON: it starts a Ray instance, reads a
dataset that CI may lack, ...).

Command lines (``byzance ...`` at the start of a line in a bash/text fence, or after ``$ ``):
every one is parsed by the real CLI; ``run`` lines build and check their configs on their
engine up to the point where training would start (a ``ray`` line is parsed only: it needs a
cluster); ``bench`` lines validate their whole grid (``--dry-run``), the grid being the file
of the repository or the last TOML block of the page before the line; a ``$ byzance ...``
line followed by the output it prints must print exactly that error. A config file named in
an example and found nowhere stands for any config: the quickstart's is written there.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts
)
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- docs-test: skip [^>]+-->\s*$")


def _fences(page: Path) -> list[tuple[str, str, bool]]:
    """(language, body, skipped) of every fenced block of ``page``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append((m.group(1), m.group(2), bool(SKIP.search(before))))
    return out


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


PYTHON_PAGES = [p for p in PAGES if any(lang == "python" for lang, _, _ in _fences(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_name)
def test_python_examples_run(page: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("docs_example")  # a real module: dataclasses look it up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    ran = 0
    for lang, body, skipped in _fences(page):
        if lang == "python" and not skipped:
            exec(compile(body, f"{_name(page)} example {ran + 1}", "exec"), namespace)
            ran += 1
    assert ran > 0 or all(s for lang, _, s in _fences(page) if lang == "python")


# -- command lines -----------------------------------------------------------------------------


class _Stop(Exception):
    """Raised where a checked ``byzance run`` would start training."""


def _commands(page: Path) -> list[tuple[list[str], str | None, str, str]]:
    """(argv, redirect file, expected output, last TOML block before it) per command line."""
    out = []
    toml = ""
    for lang, body, _ in _fences(page):
        if lang == "toml":
            toml = body
            continue
        if lang not in ("bash", "text", "console", ""):
            continue
        lines = body.replace("\\\n", " ").split("\n")  # continued lines joined
        for i, line in enumerate(lines):
            shown = line[2:] if line.startswith("$ ") else line
            if not shown.startswith("byzance "):
                continue
            words = shlex.split(shown, comments=True)[1:]
            redirect = None
            if ">" in words:
                k = words.index(">")
                words, redirect = words[:k], words[k + 1]
            expected = ""
            if line.startswith("$ "):
                rest = []
                for nxt in lines[i + 1 :]:
                    if nxt.startswith("$ ") or not nxt.strip():
                        break
                    rest.append(nxt)
                expected = " ".join(" ".join(rest).split())
            out.append((words, redirect, expected, toml))
    return out


COMMAND_CASES = [
    pytest.param(page, i, id=f"{_name(page)}:{i}")
    for page in PAGES
    for i in range(len(_commands(page)))
]


@pytest.mark.parametrize("page,index", COMMAND_CASES)
def test_command_examples_are_valid(page: Path, index: int, tmp_path, monkeypatch, capsys) -> None:
    from byzance.cli import commands as cli_commands
    from byzance.cli import main
    from byzance.cli.parser import build_parser

    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    commands = _commands(page)
    # files made by earlier lines of the page (``run --show-config > my.toml``)
    for words, redirect, _, _ in commands[:index]:
        if redirect:
            assert main([*words]) == 0
            Path(redirect).write_text(capsys.readouterr().out)
    words, redirect, expected, toml = commands[index]
    if expected:
        code = main(words)
        err = " ".join(capsys.readouterr().err.split())
        assert code == 2 and err == expected, err
        return
    if redirect:
        assert main(words) == 0
        Path(redirect).write_text(capsys.readouterr().out)
        return
    command = words[0]
    files = [w for w in words[1:] if w.endswith(".toml") and not Path(w).exists()]
    for name in files:
        if command == "bench":
            assert toml, f"{name}: no grid file, and no TOML block before the line"
            Path(name).write_text(toml)
        else:
            assert main(["run", "--show-config"]) == 0
            Path(name).write_text(capsys.readouterr().out)
    if command == "run" and "ray" not in words:
        def stop(*args, **kwargs):
            raise _Stop

        monkeypatch.setattr(cli_commands, "execute_run", stop)
        with pytest.raises(_Stop):
            main(words)
    elif command == "run":
        assert main([*words, "--show-config"]) == 0
    elif command == "bench":
        assert main([*words, "--dry-run", "--quiet"]) == 0, capsys.readouterr().err
    else:
        build_parser().parse_args(words)


def test_readme_links_exist() -> None:
    """The README's relative links point to files of the repository (the site's own links
    are checked by ``mkdocs build --strict``)."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links to the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
