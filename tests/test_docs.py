"""The documentation: README.md stays a front door, its links and the docs' links lead somewhere,
and every flag and environment variable the programs' ``--help`` prints is written up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
# An option line of argparse's help: "  --flag ..." or "  -h, --help ...".
OPTION = re.compile(r"^\s{2}(?:-\w,\s+)?(--[a-z0-9][a-z0-9-]*)", re.MULTILINE)
ENV = re.compile(r"\[env ([A-Z][A-Z0-9_]*)")


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("**/*.md"))]


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (a '# comment' in a block is no heading)."""
    lines: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 ... for repeated ones."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """Link targets in the file's prose that stay in the repository (no scheme, no //host)."""
    targets: list[str] = []
    for line in prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # code spans show links, they are none
        for match in LINK.finditer(line):
            target = match.group(1)
            if not SCHEME.match(target) and not target.startswith("//"):
                targets.append(target)
    return targets


def broken_links(path: Path) -> list[str]:
    broken: list[str] = []
    for target in relative_links(path):
        name, _, anchor = target.partition("#")
        resolved = (path.parent / name).resolve() if name else path
        where = f"{path.relative_to(ROOT)}: ({target})"
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{where} no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{where} no heading #{anchor} in {resolved.relative_to(ROOT)}")
    return broken


def test_every_relative_link_leads_to_a_file_and_a_heading() -> None:
    assert (ROOT / "docs").is_dir(), "docs/ is missing"
    broken = [problem for path in documents() for problem in broken_links(path)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_slugs_follow_githubs_rules() -> None:
    assert slug("End of speech → final text on a CPU") == "end-of-speech--final-text-on-a-cpu"
    assert slug("Earlier: our design against the seed's (2026-11-24, the defaults of then)") == (
        "earlier-our-design-against-the-seeds-2026-11-24-the-defaults-of-then"
    )
    assert slug("Docker Compose, for real") == "docker-compose-for-real"


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"
    text = "\n".join(lines)
    assert "make run" in text and "make test" in text


def programs() -> list[list[str]]:
    """The command line of every process with a --help: the two services, and each script of
    clients/, tools/ and bench/ that parses arguments and runs as a program."""
    commands = [["-m", "services.ingest"], ["-m", "services.transcriber"]]
    for folder in ("clients", "tools", "bench"):
        for path in sorted((ROOT / folder).glob("*.py")):
            source = path.read_text(encoding="utf-8")
            if "ArgumentParser(" not in source or '__name__ == "__main__"' not in source:
                continue
            if (path.parent / "__init__.py").exists():
                commands.append(["-m", f"{folder}.{path.stem}"])
            else:
                commands.append([str(path.relative_to(ROOT))])
    return commands


def help_text(command: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, *command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ.copy(),
        timeout=180,
    )
    assert done.returncode == 0, f"{' '.join(command)} --help exited {done.returncode}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    commands = programs()
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(help_text, commands))
    return {" ".join(command): text for command, text in zip(commands, texts, strict=True)}


def test_the_programs_with_a_help_are_found(helps: dict[str, str]) -> None:
    for expected in ("services.ingest", "services.transcriber", "client_file.py", "client_mic.py"):
        assert any(expected in name for name in helps), f"{expected} not among {sorted(helps)}"


def test_every_flag_and_environment_variable_is_documented(helps: dict[str, str]) -> None:
    corpus = "\n".join(path.read_text(encoding="utf-8") for path in documents())
    missing: list[str] = []
    for name, text in helps.items():
        flags = set(OPTION.findall(text)) - {"--help"}
        # argparse wraps help lines at spaces: join them again before reading "[env NAME".
        names = set(ENV.findall(" ".join(text.split())))
        assert flags, f"no flags read from {name} --help"
        for flag in sorted(flags):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", corpus):
                missing.append(f"{name}: {flag}")
        for env in sorted(names):
            if not re.search(rf"(?<![A-Z0-9_]){env}(?![A-Z0-9_])", corpus):
                missing.append(f"{name}: environment variable {env}")
    assert helps["-m services.ingest"].count("[env ") > 10, "the ingest's help names no env vars"
    assert not missing, "not in README.md or docs/:\n" + "\n".join(missing)
