"""README.md and the guide in docs/: every relative link resolves (the file, and the heading an anchor names), and every
command-line flag they document exists in the parser of the command it is given to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from speculoos_hf import cli_generate
from speculoos_hf.bench import arch_sweep
from speculoos_hf.bench import cli as bench_cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```+|~~~+).*?^\1\s*$", re.S | re.M)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FLAG = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")
# a command's program, by a word it contains; its flags are checked against that program's parser
PROGRAMS = {"speculoos_hf.bench.arch_sweep": "arch_sweep", "speculoos-bench": "bench", "speculoos_hf.bench": "bench",
            "speculoos-generate": "generate", "speculoos_hf.cli_generate": "generate", "examples/demo.py": "demo", "accelerate": "accelerate",
            "pytest": "pytest", "pip": "pip"}
PROGRAMS.update({f"benchmarks/{path.name}": "scripts" for path in (ROOT / "benchmarks").glob("*.py")})
PAGE_PROGRAM = {"bench.md": "bench", "dataset.md": "generate"}  # a bare `--flag` on these pages is that command's


def _options(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def known_flags() -> dict[str, set[str]]:
    """Every flag each documented program takes, read from its own parser."""
    demo = set(re.findall(r'"(--[\w-]+)"', (ROOT / "examples" / "demo.py").read_text()))
    scripts = {f for path in (ROOT / "benchmarks").glob("*.py") for f in re.findall(r'"(--[\w-]+)"', path.read_text())}
    flags = {"bench": _options(bench_cli.parser()), "generate": _options(cli_generate.parser()), "demo": demo,
             "scripts": scripts,
             "arch_sweep": _options(arch_sweep.parser()),
             "pytest": {"--run-slow"}, "pip": None}  # None: not ours, not checked
    try:
        from accelerate.commands.launch import launch_command_parser

        flags["accelerate"] = _options(launch_command_parser())
    except ImportError:
        flags["accelerate"] = None
    flags["any"] = set().union(*(v for v in flags.values() if v))
    return flags


def code_fragments(text: str) -> list[str]:
    """Fenced blocks (backslash continuations joined, one command per line) and inline code spans."""
    blocks = [m[0] for m in FENCE.finditer(text)]
    rest = FENCE.sub("", text)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return lines + [m[2] for m in INLINE.finditer(rest)]


def prose(text: str) -> str:
    """The page without its code (links inside code are not links)."""
    return INLINE.sub("", FENCE.sub("", text))


def documented_flags(page: Path) -> list[tuple[str, str]]:
    """(program, flag) for every flag in the page's code: a flag belongs to the last program named before it in its
    command, else to the page's own command, else to any of ours."""
    found = []
    for fragment in code_fragments(page.read_text()):
        program = PAGE_PROGRAM.get(page.name, "any")
        for word in fragment.split():
            program = next((p for key, p in PROGRAMS.items() if key in word and not word.startswith("--")), program)
            found += [(program, flag) for flag in FLAG.findall(word)]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(re.sub(r"`", "", m[1]))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_is_githubs():
    assert slug("Cheaper drafts (speculoos_hf.drafters)") == "cheaper-drafts-speculoos_hfdrafters"
    assert slug("Machine profile (--profile)") == "machine-profile---profile"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.name}: {broken}"


def test_documented_flags_exist():
    flags = known_flags()
    missing = [f"{page.relative_to(ROOT)}: {flag} ({program})" for page in PAGES
               for program, flag in documented_flags(page) if flags[program] is not None and flag not in flags[program]]
    assert not missing, missing


def test_the_checks_can_fail(tmp_path):
    """A flag no parser has, a missing file and a missing heading are caught."""
    page = tmp_path / "bench.md"
    page.write_text("# Title\n\n`speculoos-bench --no-such-flag` and `--k 4`; [a](missing.md), [b](#nowhere), "
                    "[c](#title)\n\n```bash\naccelerate launch --num_processes 2 -m speculoos_hf.cli_generate \\\n"
                    "    --input x --bogus\n```\n")
    assert documented_flags(page) == [("accelerate", "--num_processes"), ("generate", "--input"),
                                      ("generate", "--bogus"), ("bench", "--no-such-flag"), ("bench", "--k")]
    flags = known_flags()
    assert [f for p, f in documented_flags(page) if flags[p] is not None and f not in flags[p]] == \
        ["--bogus", "--no-such-flag"]
    assert LINK.findall(prose(page.read_text())) == ["missing.md", "#nowhere", "#title"]
    assert anchors(page) == {"title"}


# ---------------------------------------------------------------- docstrings of the public API

import inspect  # noqa: E402

import speculoos  # noqa: E402
import speculoos_hf  # noqa: E402
from speculoos_hf import drafters  # noqa: E402
from speculoos_hf.glue.options import SHARED_OPTIONS, SPECULOOS_OPTIONS  # noqa: E402

PUBLIC = sorted({(module.__name__, name) for module in (speculoos_hf, speculoos, drafters) for name in module.__all__})
# documented argument by argument, as transformers documents its own: every parameter named in the docstring
ARGUMENTS_DOCUMENTED = [speculoos_hf.SuffixCache, speculoos_hf.SpeculativeSampler, drafters.ModelDrafter,
                        drafters.PromptLookupDrafter, drafters.HybridDrafter, drafters.OtherTokenizerDrafter,
                        drafters.int8_draft, drafters.reduced_head_draft, drafters.frequent_token_ids,
                        speculoos_hf.enable_speculative]


def own_doc(obj) -> str:
    """The object's own docstring (a dataclass's generated signature does not count)."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    return "" if inspect.isclass(obj) and doc.startswith(obj.__name__ + "(") else doc


@pytest.mark.parametrize("module, name", PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_every_public_name_has_a_docstring(module, name):
    obj = getattr(__import__(module, fromlist=[name]), name)
    assert len(own_doc(obj)) > 40, f"{module}.{name} has no docstring of its own"


def test_generate_documents_every_argument_it_adds():
    doc = own_doc(speculoos_hf.speculative_generate)
    for name in ("draft_model", *SPECULOOS_OPTIONS, *SHARED_OPTIONS):
        assert re.search(rf"\b{name}\b[^\n]*\(", doc) or f"{name}," in doc, f"speculative_generate: {name} undocumented"
    for word in ("defaults to", "exact", "Returns"):
        assert word in doc


@pytest.mark.parametrize("obj", ARGUMENTS_DOCUMENTED, ids=lambda o: o.__name__)
def test_public_arguments_are_documented(obj):
    doc = own_doc(obj)
    params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
    missing = [p for p in params if p not in ("self", "args", "kwargs") and not re.search(rf"\b{p}\b", doc)]
    assert not missing, f"{obj.__name__}: {missing} not in its docstring"
