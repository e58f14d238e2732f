"""Every fenced ``python`` and ``toml`` block in README.md and docs/*.md runs or loads as written.

How a block is run:

- ``toml``: parsed, then loaded by the loader its tables name: ``[[endpoint]]`` or ``[state]`` by
  :class:`~sttrouter.EndpointRegistry`, ``[[rule]]`` by :class:`~sttrouter.Policy`, ``[usage]``
  by the cost scenario loader, ``[initial]``/``[[change]]``/``[[fault]]`` by the trace loader.
  A block none of them takes fails.
- ``python`` with top-level ``test_*`` functions: written to a file of its own and run by pytest
  in a subprocess, as a user would run it (it must bring its own imports and markers).
- any other ``python``: executed in a fresh namespace, top-level ``await`` inside an event loop,
  from a scratch directory where ``examples/`` is the repository's (so ``examples/...`` paths
  resolve and files a block writes land in the scratch directory). Every name it uses
  must be imported or defined in the block itself.

A marker in an HTML comment on the line before the fence (blank lines between are allowed)
changes that; markers are visible in the Markdown source:

- ``<!-- docs-test: skip REASON -->`` a deliberately partial block; the reason is required.
- ``<!-- docs-test: fixture NAME -->`` runs the block with a documented fixture:
  ``vendor-keys`` sets ``DEEPGRAM_API_KEY`` and ``ASSEMBLYAI_API_KEY`` to test values;
  ``fake-deepgram`` does that and runs a :class:`sttrouter.testing.FakeDeepgramServer` (it
  answers "Hello world.") whose address is in ``DEEPGRAM_URL``.

Any other block that fails to run fails this test, with the file and line of its fence.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sttrouter import EndpointRegistry, Policy
from sttrouter.costs import scenario_from_dict
from sttrouter.simulate import Trace

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = ("python", "toml")

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code and the marker before it."""

    path: Path
    line: int
    lang: str
    code: str
    marker: str | None = None
    marker_arg: str = ""

    @property
    def where(self) -> str:
        inside = self.path.is_relative_to(REPO)
        shown = (
            self.path.relative_to(REPO) if inside else Path(self.path.parent.name, self.path.name)
        )
        return f"{shown}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The ``python`` and ``toml`` blocks of one Markdown file, with their markers."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, lang = fence["indent"], fence["lang"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path.name}:{i + 1}: a fence that is never closed")
        if lang in LANGUAGES:
            body = "\n".join(
                ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]
            )
            marker = _marker_before(lines, i)
            out.append(
                Block(
                    path,
                    i + 1,
                    lang,
                    textwrap.dedent(body) + "\n",
                    marker[0] if marker else None,
                    marker[1] if marker else "",
                )
            )
        i = end + 1
    return out


def _marker_before(lines: list[str], fence: int) -> tuple[str, str] | None:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    found = _MARKER.match(lines[j]) if j >= 0 else None
    return (found["kind"], found["arg"]) if found else None


# -- running one block -----------------------------------------------------------------------


def load_toml(block: Block) -> object:
    """Load a TOML block with the loader its tables name; fail when none takes it."""
    data = tomllib.loads(block.code)
    source = block.where
    if "endpoints" in data:
        raise AssertionError(f"{source}: the registry table is [[endpoint]], not [[endpoints]]")
    if "endpoint" in data or "state" in data:
        return EndpointRegistry.from_dict(data, source=source)
    if "rule" in data:
        return Policy.from_dict(data, source=source)
    if "usage" in data:
        return scenario_from_dict(data, source=source)
    if {"initial", "change", "fault", "duration"} & data.keys():
        return Trace.from_dict(data, source=source)
    raise AssertionError(f"{source}: no loader takes this TOML block; mark it or fix it")


async def exec_python(code: str, where: str) -> dict[str, Any]:
    """Execute a snippet in a fresh namespace; top-level ``await`` runs in the current loop."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    compiled = compile(code, where, "exec", flags=flags, dont_inherit=True)
    scope: dict[str, Any] = {"__name__": "__docs__"}
    result = eval(compiled, scope)
    if inspect.isawaitable(result):
        await result
    return scope


def defines_tests(code: str) -> bool:
    tree = ast.parse(code)
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        for node in tree.body
    )


def run_as_pytest_file(code: str, tmp_path: Path, env: dict[str, str]) -> None:
    """Run a block that defines tests the way its reader would: ``pytest file.py``."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    test_file = tmp_path / "test_docs_snippet.py"
    test_file.write_text(code)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@asynccontextmanager
async def fixture_env(name: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The documented fixtures a marked block may ask for."""
    if name not in FIXTURES:
        raise AssertionError(f"unknown docs-test fixture {name!r}; known: {sorted(FIXTURES)}")
    async with FIXTURES[name](monkeypatch):
        yield


@asynccontextmanager
async def _vendor_keys(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "test-key")
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", "test-key")
    yield


@asynccontextmanager
async def _fake_deepgram(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    from sttrouter.testing import FakeDeepgramServer

    async with AsyncExitStack() as stack:
        await stack.enter_async_context(_vendor_keys(monkeypatch))
        server = await stack.enter_async_context(
            FakeDeepgramServer([("Hello world.", 0.3, 1.0)], api_key="test-key")
        )
        monkeypatch.setenv("DEEPGRAM_URL", server.base_url)
        yield


FIXTURES: dict[str, Callable[[pytest.MonkeyPatch], Any]] = {
    "vendor-keys": _vendor_keys,
    "fake-deepgram": _fake_deepgram,
}


async def run_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run or load one block as the module docstring describes."""
    if block.marker == "skip":
        if not block.marker_arg:
            raise AssertionError(f"{block.where}: a docs-test skip needs a reason")
        pytest.skip(f"{block.where}: {block.marker_arg}")
    if block.marker not in (None, "fixture"):
        raise AssertionError(f"{block.where}: unknown docs-test marker {block.marker!r}")
    if block.lang == "toml":
        load_toml(block)
        return
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    async with AsyncExitStack() as stack:
        if block.marker == "fixture":
            await stack.enter_async_context(fixture_env(block.marker_arg, monkeypatch))
        if defines_tests(block.code):
            run_as_pytest_file(block.code, tmp_path, dict(os.environ))
        else:
            await exec_python(block.code, block.where)


ALL_BLOCKS = [block for path in DOC_FILES for block in blocks_of(path)]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.where for b in ALL_BLOCKS])
async def test_doc_block_runs(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_block(block, tmp_path, monkeypatch)


# -- the collector itself ----------------------------------------------------------------------

BROKEN = """\
# A page

```python
print(undefined_name)
```

<!-- docs-test: skip shows a fragment -->

```python
print(also_undefined)
```

  ```toml
  [[endpoints]]
  id = "x"
  ```

<!-- docs-test: skip -->
```toml
what = 1
```

```toml
what = 1
```

<!-- docs-test: fixture no-such-fixture -->
```python
pass
```

<!-- docs-test: explode -->
```python
pass
```

```python
def test_fails():
    assert 1 == 2
```

```sh
not collected
```
"""


@pytest.fixture
def broken_page(tmp_path: Path) -> list[Block]:
    page = tmp_path / "docs" / "broken.md"
    page.parent.mkdir()
    page.write_text(BROKEN)
    return blocks_of(page)


def test_blocks_are_found_with_their_markers(broken_page: list[Block]) -> None:
    assert [(b.line, b.lang, b.marker, b.marker_arg) for b in broken_page] == [
        (3, "python", None, ""),
        (9, "python", "skip", "shows a fragment"),
        (13, "toml", None, ""),
        (19, "toml", "skip", ""),
        (23, "toml", None, ""),
        (28, "python", "fixture", "no-such-fixture"),
        (33, "python", "explode", ""),
        (37, "python", None, ""),
    ]
    assert broken_page[2].code == '[[endpoints]]\nid = "x"\n'  # the fence's indent is removed


async def _outcome(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    work = tmp_path / f"run-{block.line}"
    work.mkdir()
    try:
        await run_block(block, work, monkeypatch)
    except pytest.skip.Exception as skipped:
        return f"skipped: {skipped.msg}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ran"


async def test_a_broken_block_fails_and_a_marked_one_is_skipped(
    broken_page: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = [await _outcome(b, tmp_path, monkeypatch) for b in broken_page]
    assert outcomes[0] == "NameError: name 'undefined_name' is not defined"
    assert outcomes[1] == "skipped: docs/broken.md:9: shows a fragment"
    assert "the registry table is [[endpoint]], not [[endpoints]]" in outcomes[2]
    assert "a docs-test skip needs a reason" in outcomes[3]
    assert "no loader takes this TOML block" in outcomes[4]
    assert "unknown docs-test fixture 'no-such-fixture'" in outcomes[5]
    assert "unknown docs-test marker 'explode'" in outcomes[6]
    assert outcomes[7].startswith("AssertionError")
    assert "1 failed" in outcomes[7]


async def test_top_level_await_runs_in_the_loop() -> None:
    scope = await exec_python("import anyio\nawait anyio.sleep(0)\ndone = True\n", "<t>")
    assert scope["done"] is True


def test_an_unclosed_fence_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "open.md"
    page.write_text("```python\nprint(1)\n")
    with pytest.raises(AssertionError, match="never closed"):
        blocks_of(page)


def test_every_doc_page_has_blocks_collected() -> None:
    assert {b.path.name for b in ALL_BLOCKS} >= {"README.md", "routing.md", "testing.md"}
    assert len(ALL_BLOCKS) >= 40


_INTERNAL = re.compile(r"DESIGN|reference/|\bthe seed\b|seed's|seed document|§|--seed-scenario\b")


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_docs_cite_only_what_a_user_has(path: Path) -> None:
    """No planning notes, section signs or former option names a reader cannot look up."""
    hits = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _INTERNAL.search(line) and "former name" not in line
    ]
    assert not hits, hits
