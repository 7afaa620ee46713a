"""The documentation: the site builds strictly, the README is a landing page, and every answer it shows is live.

Shown answers are of two kinds, and each is checked against a real server (``mcdropout serve`` on
127.0.0.1, HTTP and gRPC on free ports, serving the shipped ``models/``):

- a ``sh`` block holding one ``curl`` to ``localhost:8000``, followed directly by a ``json`` block: the
  request is sent and the whole JSON body compared with the block (numbers to about four significant
  digits);
- ``pycon`` blocks (``>>>`` examples): each page's blocks run in order in one namespace, with
  ``127.0.0.1:8000`` (HTTP) and ``127.0.0.1:8001`` (gRPC) pointed at the live server and the repository as the
  working directory, and each output is compared with the one shown (text equal, numbers close).

``MCD_UPDATE_DOCS=1 pytest tests/test_docs.py`` rewrites the shown answers from the live ones instead;
``MCD_DOCS_SERVER=http://127.0.0.1:PORT[,127.0.0.1:GRPC_PORT]`` checks against a server already running.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from doctest import DocTestParser, Example
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Server, free_port, run_server

ANSWER_ID = re.compile(r"[0-9a-f]{32}")  # the id the server gives an answer (a page may leave it out)
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
UPDATE = os.environ.get("MCD_UPDATE_DOCS", "") not in ("", "0")
HTTP_SHOWN = "127.0.0.1:8000"
CURL_HOST = "localhost:8000"
GRPC_SHOWN = "127.0.0.1:8001"

# A fenced block: its indentation (blocks may sit in admonitions and tabs), fence, info string and body.
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.M | re.S)
NUMBER = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
RELATIVE, ABSOLUTE = 2e-4, 1e-6


@dataclass
class Block:
    info: str
    body: str  # dedented
    indent: str
    opening: int  # where the opening fence's line starts
    start: int  # span of the body in the page's text
    end: int
    after: int  # end of the closing fence


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        indent = match["indent"]
        body = "".join(line[len(indent):] if line.startswith(indent) else line.lstrip()
                       for line in match["body"].splitlines(keepends=True))
        found.append(Block(match["info"].strip().split(" ")[0].lower(), body, indent, match.start(), match.start("body"),
                           match.end("body"), match.end()))
    return found


def indented(body: str, indent: str) -> str:
    return "".join(indent + line if line.strip() else line for line in body.splitlines(keepends=True))


# ---------------------------------------------------------------------------------------------- numbers


def close(shown: float, live: float) -> bool:
    if math.isnan(shown) or math.isnan(live):
        return math.isnan(shown) and math.isnan(live)
    return abs(shown - live) <= RELATIVE * max(abs(shown), abs(live)) + ABSOLUTE


def differences(shown, live, where: str = "$") -> list[str]:
    """Where two JSON values differ: structure and strings exactly, numbers within tolerance."""
    number = (int, float)
    if isinstance(shown, bool) or isinstance(live, bool):
        return [] if shown is live else [f"{where}: shown {shown!r}, live {live!r}"]
    if isinstance(shown, number) and isinstance(live, number):
        return [] if close(float(shown), float(live)) else [f"{where}: shown {shown!r}, live {live!r}"]
    if isinstance(shown, dict) and isinstance(live, dict):
        found = [f"{where}: key {key!r} shown, not in the live answer" for key in shown if key not in live]
        found += [f"{where}: key {key!r} in the live answer, not shown" for key in live
                  if key not in shown and not (key == "id" and ANSWER_ID.fullmatch(str(live[key])))]
        for key in shown:
            if key in live:
                found += differences(shown[key], live[key], f"{where}.{key}")
        return found
    if isinstance(shown, list) and isinstance(live, list):
        if len(shown) != len(live):
            return [f"{where}: {len(shown)} items shown, {len(live)} live"]
        return [item for index, (a, b) in enumerate(zip(shown, live)) for item in differences(a, b, f"{where}[{index}]")]
    if where.endswith(".id") and ANSWER_ID.fullmatch(str(shown)) and ANSWER_ID.fullmatch(str(live)):
        return []  # a fresh answer id: any one shown stands for it
    return [] if shown == live else [f"{where}: shown {shown!r}, live {live!r}"]


def text_matches(shown: str, live: str) -> bool:
    """Printed output: equal once numbers are set aside and whitespace ignored, and the numbers close."""
    def skeleton(text: str) -> str:
        return re.sub(r"\s+", "", NUMBER.sub("#", text))
    if skeleton(shown) != skeleton(live):
        return False
    return all(close(float(a), float(b)) for a, b in zip(NUMBER.findall(shown), NUMBER.findall(live)))


def rounded(value):
    """A JSON value with floats cut to 5 significant digits, for showing."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.5g}")
    if isinstance(value, list):
        return [rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return value


def render(value, indent: int = 0, width: int = 100) -> str:
    """JSON laid out for reading: one line where it fits, else one member per line (numbers packed)."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) + indent <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key)}: {render(item, indent + 2, width - len(json.dumps(key)) - 2)}"
                 for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if all(not isinstance(item, (dict, list)) for item in value):
        lines, line = [], []
        for item in map(json.dumps, value):
            if line and len(inner) + len(", ".join([*line, item])) + 1 > width:
                lines.append(", ".join(line))
                line = []
            line.append(item)
        lines.append(", ".join(line))
        return "[\n" + ",\n".join(inner + text for text in lines) + "\n" + " " * indent + "]"
    items = [inner + render(item, indent + 2, width) for item in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


# ---------------------------------------------------------------------------------------------- examples


@dataclass
class Curl:
    method: str
    path: str
    headers: dict[str, str]
    data: str | None


def parse_curl(command: str) -> Curl:
    args = shlex.split(command.replace("\\\n", " "), comments=True)
    if not args or args[0] != "curl":
        raise ValueError(f"not one curl command: {command!r}")
    method, headers, data, url = None, {}, None, None
    words = iter(args[1:])
    for word in words:
        if word in ("-s", "-sS", "--silent"):
            continue
        if word in ("-H", "--header"):
            key, _, value = next(words).partition(":")
            headers[key.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-raw"):
            data = next(words)
        elif word in ("-X", "--request"):
            method = next(words)
        elif word.startswith("-") or url is not None:
            raise ValueError(f"a shown curl may use -s, -H, -d and -X only, and one URL: {word!r} in {command!r}")
        else:
            url = word
    if url is None or CURL_HOST not in url:
        raise ValueError(f"a shown curl goes to {CURL_HOST}: {command!r}")
    return Curl(method or ("POST" if data is not None else "GET"), url.split(CURL_HOST, 1)[1], headers, data)


def curl_examples(text: str) -> list[tuple[Block, Block]]:
    """(request, answer) pairs: a sh block of one curl to localhost:8000 and the json block right after it."""
    found = blocks(text)
    pairs = []
    for request, answer in zip(found, found[1:]):
        if (request.info in ("sh", "bash", "shell") and request.body.lstrip().startswith("curl ")
                and answer.info == "json" and not text[request.after:answer.opening].strip()):
            pairs.append((request, answer))
    return pairs


def run_pycon(source: str, namespace: dict) -> str:
    """One example as an interactive session runs it: its printed output and the value it shows."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(source, "<docs>", "single"), namespace)
        except Exception as error:  # shown as doctest shows it
            return out.getvalue() + f"Traceback (most recent call last):\n  ...\n{type(error).__name__}: {error}\n"
    return out.getvalue()


SESSION = """
import json, sys
from tests.test_docs import run_pycon
namespace = {"__name__": "__docs__"}
print(json.dumps([run_pycon(source, namespace) for source in json.load(sys.stdin)]))
"""


def run_session(sources: list[str]) -> list[str]:
    """A page's examples run in order in one namespace, in a process of its own: tritonclient's gRPC
    protobuf modules and kserve's (imported by other tests) cannot share one process."""
    if not sources:
        return []
    done = subprocess.run([sys.executable, "-c", SESSION], input=json.dumps(sources), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def pycon_source(examples: list[Example], outputs: list[str]) -> str:
    lines = []
    for example, output in zip(examples, outputs):
        source = example.source.rstrip("\n").split("\n")
        lines.append(">>> " + source[0])
        lines += ["... " + line for line in source[1:]]
        lines += output.rstrip("\n").split("\n") if output.strip() else []
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- the tests


def test_site_builds_strictly(tmp_path):
    """mkdocs build --strict: a broken link, a missing page or an API reference naming what is gone fails."""
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    built = {path.relative_to(tmp_path / "site").as_posix() for path in (tmp_path / "site").rglob("index.html")}
    assert {"index.html", "quickstart/index.html", "reference/mcdropout/index.html"} <= built
    reference = (tmp_path / "site" / "reference" / "mcdropout" / "index.html").read_text()
    for name in ("predict", "MCPredictor", "mc_dropout", "load_bundle", "save_bundle", "Bundle"):
        assert f'id="mcdropout.{name}"' in reference, f"mcdropout.{name} is missing from the API reference"


def test_readme_is_a_landing_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the site holds the rest (docs/)"
    first = blocks(README.read_text())[0]
    commands = [line.split("#")[0].strip() for line in first.body.splitlines() if line.strip()]
    assert commands[:2] == ["make serve", "make test"], "the README starts with make serve and make test"
    assert "make docs" in README.read_text()


def test_every_page_is_in_the_site():
    """Each page under docs/ is in the nav (mkdocs only warns about a page left out; strict catches it too)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def pages(node) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for item in node.values():
                yield from pages(item)

    assert {page.relative_to(DOCS).as_posix() for page in PAGES} == set(pages(config["nav"]))


def test_every_setting_is_documented():
    """Each MCD_* setting of service/settings.py has its row in the settings page, and the page names no other."""
    from service.settings import Settings

    page = (DOCS / "service" / "settings.md").read_text()
    table = {name for line in page.splitlines() if line.startswith("| `MCD_")
             for name in re.findall(r"`(MCD_[A-Z0-9_]+)`", line.split("|")[1])}
    assert table == {f"MCD_{name.upper()}" for name in Settings.model_fields}


def test_named_files_exist():
    """A repository path the pages name in backticks (`service/dataplane.py`, `mcdropout/answer.py`) exists."""
    named = re.compile(r"`((?:mcdropout|service|bench|tests|monitoring|docs|clients|deploy)/[\w./-]*)`")
    missing = [f"{page.relative_to(ROOT)}: {path}" for page in [README, *PAGES] for path in named.findall(page.read_text())
               if not (ROOT / path).exists()]
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[Server, str]]:
    if os.environ.get("MCD_DOCS_SERVER"):  # a server already running: MCD_DOCS_SERVER=http://host:port[,grpc-host:port]
        url, _, grpc_address = os.environ["MCD_DOCS_SERVER"].partition(",")
        yield Server(url, None, Path(os.devnull)), grpc_address  # type: ignore[arg-type]
        return
    grpc = free_port()
    with run_server(tmp_path_factory.mktemp("docs-server"), cli=True, grpc_port=str(grpc)) as server:
        yield server, f"127.0.0.1:{grpc}"


def checked_pages() -> list[Path]:
    return [page for page in [README, *PAGES]
            if curl_examples(page.read_text()) or any(block.info == "pycon" for block in blocks(page.read_text()))]


@pytest.mark.parametrize("page", checked_pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_shown_answers_are_live(page: Path, live, monkeypatch):
    server, grpc = live
    monkeypatch.chdir(ROOT)
    text = page.read_text()
    replacements: list[tuple[int, int, str]] = []
    problems: list[str] = []
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for request, answer in curl_examples(text):
            curl = parse_curl(request.body)
            response = http.request(curl.method, curl.path, headers=curl.headers,
                                    content=None if curl.data is None else curl.data.encode())
            try:
                body = response.json()
            except ValueError:
                problems.append(f"{curl.method} {curl.path}: not JSON ({response.status_code}): {response.text[:300]}")
                continue
            line = text.count("\n", 0, request.start) + 1
            if UPDATE:
                replacements.append((answer.start, answer.end, indented(render(rounded(body)) + "\n", answer.indent)))
                continue
            try:
                shown = json.loads(answer.body)
            except ValueError as error:
                problems.append(f"line {line}: the shown answer is not JSON ({error})")
                continue
            found = differences(shown, body)
            if found:
                problems.append(f"line {line}: {curl.method} {curl.path} ({response.status_code}) answers otherwise than"
                                f" shown:\n  " + "\n  ".join(found[:20]))
    parser = DocTestParser()
    sessions = [(block, parser.get_examples(block.body)) for block in blocks(text) if block.info == "pycon"]
    sources = [example.source.replace(HTTP_SHOWN, server.url.split("//", 1)[1]).replace(GRPC_SHOWN, grpc)
               for _, examples in sessions for example in examples]
    lived = iter(run_session(sources))
    for block, examples in sessions:
        line = text.count("\n", 0, block.start) + 1
        outputs = []
        for example in examples:
            got = next(lived)
            outputs.append(got)
            raised = got.startswith("Traceback (most recent call last):") and not example.want.startswith("Traceback")
            if (raised or not UPDATE) and not text_matches(example.want, got):
                problems.append(f"line {line + example.lineno}: >>> {example.source.strip()}\n  shown: "
                                f"{example.want.strip()!r}\n  live:  {got.strip()!r}")
        if UPDATE:
            replacements.append((block.start, block.end, indented(pycon_source(examples, outputs), block.indent)))
    if UPDATE and replacements:
        for start, end, new in sorted(replacements, reverse=True):
            text = text[:start] + new + text[end:]
        page.write_text(text)
    assert not problems, (f"{page.relative_to(ROOT)}: shown answers differ from the live ones (regenerate with"
                          " MCD_UPDATE_DOCS=1 if the change is meant):\n" + "\n".join(problems))
