#!/usr/bin/env python3
"""The layering check (issue 19): fails when a module imports one above it in
ARCHITECTURE.md's order, or when files import each other.

It reads the layers from the ```layers block of ARCHITECTURE.md (top line = top
layer; a line may hold several modules that stand beside each other) and every
`use crate::…`, `use super::…` and `crate::…::` path in the code of `src/`
(comments, doc comments and `#[cfg(test)]` modules are left out: a test may reach
anywhere). Then:

1. a module may import only modules in lower layers (modules of one layer stand
   beside each other and import none of each other);
2. no files form a cycle of imports (a `pub use` re-export and a `mod` line are
   not imports: they are how a folder shows its parts);
3. a table is written (`INSERT INTO t`, `UPDATE t`, `DELETE FROM t` in a string
   literal of `src/store/**`, test code left out) only by the files the ```tables
   block of ARCHITECTURE.md names as its owners; the composers it lists write no
   table of their own, and a table name built with `format!` fails (it cannot be
   checked).

Exit 0 when all hold; 1 with one line per violation otherwise.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def layers() -> list[list[str]]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    m = re.search(r"```layers\n(.*?)```", text, re.S)
    if not m:
        sys.exit("check-layers: ARCHITECTURE.md has no ```layers block")
    rows = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            rows.append(line.split())
    return list(reversed(rows))  # bottom first


def code_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines of code, without comments and without test modules."""
    out = []
    skip_depth = None  # brace depth at which a #[cfg(test)] item started
    depth = 0
    pending_test = False
    in_block_comment = False
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw
        if in_block_comment:
            if "*/" in line:
                line = line.split("*/", 1)[1]
                in_block_comment = False
            else:
                continue
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        line = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)  # string literals
        line = line.split("//", 1)[0]
        if "/*" in line:
            line, _, rest = line.partition("/*")
            in_block_comment = "*/" not in rest
        if skip_depth is None and re.match(r"\s*#\[cfg\((all\()?test", line):
            pending_test = True
            continue
        opened, closed = line.count("{"), line.count("}")
        if pending_test and skip_depth is None:
            if re.match(r"\s*#\[", line):
                continue
            pending_test = False
            if opened > closed:
                skip_depth = depth
            depth += opened - closed
            continue
        depth += opened - closed
        if skip_depth is not None:
            if depth <= skip_depth:
                skip_depth = None
            continue
        out.append((no, line))
    return out


def module_file(parts: list[str]) -> Path | None:
    """The file of the longest prefix of `parts` (a path below src/) that is one."""
    for n in range(len(parts), 0, -1):
        base = SRC.joinpath(*parts[:n])
        for cand in (base.with_suffix(".rs"), base / "mod.rs"):
            if cand.is_file():
                return cand
    return None


def file_module_path(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def is_test_file(path: Path) -> bool:
    return path.name in ("tests.rs", "testing.rs") or path.stem.endswith("_tests") or "tests" in path.parts[:-1]


USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::\w+)*)(?:::\{([^;]*))?")
PATH = re.compile(r"\b(crate|super)((?:::\w+)+)")


def imports(path: Path) -> list[tuple[int, list[str]]]:
    """(line, module path below src/) of each import of the file."""
    here = file_module_path(path)
    found = []
    lines = code_lines(path)
    # join multi-line use statements
    joined: list[tuple[int, str]] = []
    buf, start = "", 0
    for no, line in lines:
        if buf:
            buf += " " + line.strip()
            if ";" in line:
                joined.append((start, buf))
                buf = ""
            continue
        if re.match(r"\s*(pub(\([^)]*\))?\s+)?use\s", line) and ";" not in line:
            buf, start = line.strip(), no
            continue
        joined.append((no, line))
    for no, line in joined:
        if re.match(r"\s*pub(\([^)]*\))?\s+use\s", line) and not re.match(r"\s*pub\(crate\)\s+use\s+crate::", line):
            # a re-export of a child (pub use sessions::X) is the folder's face
            if re.match(r"\s*pub(\([^)]*\))?\s+use\s+(self::|\w+::)", line) and "crate::" not in line and "super::" not in line:
                continue
        for m in USE_GROUP.finditer(line):
            root, rest, group = m.group(1), m.group(2), m.group(3)
            if root == "crate":
                base: list[str] = []
            elif root == "super":
                base = here[:-1] if not path.name == "mod.rs" else here[:-1]
                # a file's `super` is its folder's module
                base = here[:-1]
            else:
                base = list(here)
            segs = [s for s in rest.split("::") if s]
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            prefix = base + segs
            if group:
                for item in re.split(r",", group):
                    item = item.strip().strip("{}").strip()
                    item = re.split(r"\s+as\s+", item)[0]
                    first = [s for s in item.split("::") if s and s not in ("self", "*")]
                    found.append((no, prefix + first))
            else:
                found.append((no, prefix))
        if re.match(r"\s*(pub(\([^)]*\))?\s+)?use\s", line):
            continue
        for m in PATH.finditer(line):
            segs = [s for s in m.group(2).split("::") if s]
            if m.group(1) == "crate":
                found.append((no, segs))
                continue
            base = here[:-1]
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
            found.append((no, base + segs))
    return found


# --- table ownership (issue 28) -------------------------------------------------

STORE = SRC / "store"
WRITE = re.compile(r"\b(INSERT\s+INTO|(?<!FOR\s)(?<!NO KEY\s)(?<!DO\s)UPDATE|DELETE\s+FROM)\s+(\{[^}]*\}|[a-z_][a-z0-9_]*)")


def table_map() -> tuple[dict[str, list[str]], list[str]]:
    """The ```tables block: `table owner-file…` lines, and one `composers file…` line."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    m = re.search(r"```tables\n(.*?)```", text, re.S)
    if not m:
        sys.exit("check-layers: ARCHITECTURE.md has no ```tables block")
    owners: dict[str, list[str]] = {}
    composers: list[str] = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, *files = line.split()
        if name == "composers":
            composers += files
        else:
            owners[name] = files
    return owners, composers


def string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in the file's code: comments, char
    literals and test items (`#[cfg(test)]`, `#[cfg(any(test, feature = "testing"))]`)
    are left out. Handles escapes, `\\` line continuations and raw strings."""
    src = path.read_text()
    out: list[tuple[int, str]] = []
    i, n, line = 0, len(src), 1
    depth = 0
    skip_depth: int | None = None  # brace depth at which a test item started
    pending_test = False
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            level, i = 1, i + 2
            while i < n and level:
                if src.startswith("/*", i):
                    level, i = level + 1, i + 2
                elif src.startswith("*/", i):
                    level, i = level - 1, i + 2
                else:
                    line += src[i] == "\n"
                    i += 1
            continue
        if src.startswith("#[", i):
            j = src.find("]", i)
            # attributes may nest brackets; find the matching one
            level, j = 0, i + 1
            while j < n:
                if src[j] == "[":
                    level += 1
                elif src[j] == "]":
                    level -= 1
                    if level == 0:
                        break
                j += 1
            attr = src[i : j + 1]
            if re.match(r"#\[cfg\((all\(|any\()?\s*test\b", attr) and skip_depth is None:
                pending_test = True
            line += attr.count("\n")
            i = j + 1
            continue
        raw = re.match(r'b?r(#*)"', src[i : i + 260]) if c in "br" and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")) else None
        if raw or c == '"' or (c == "b" and src.startswith('b"', i) and not (src[i - 1].isalnum() or src[i - 1] == "_")):
            start = line
            if raw:
                close = '"' + raw.group(1)
                j = src.index(close, i + raw.end())
                text = src[i + raw.end() : j]
                i = j + len(close)
            else:
                i = src.index('"', i) + 1
                buf = []
                while src[i] != '"':
                    if src[i] == "\\":
                        if src[i + 1] == "\n":  # continuation: skip the newline and leading blanks
                            i += 2
                            line += 1
                            while src[i] in " \t\n":
                                line += src[i] == "\n"
                                i += 1
                            buf.append(" ")
                            continue
                        buf.append(src[i : i + 2])
                        i += 2
                        continue
                    line += src[i] == "\n"
                    buf.append(src[i])
                    i += 1
                text = "".join(buf)
                i += 1
            line += text.count("\n") if raw else 0
            if skip_depth is None and not pending_test:
                out.append((start, text))
            continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i : i + 12])
            if m:  # a char literal ('"' included); otherwise a lifetime
                i += m.end()
                continue
        if c == "{":
            if pending_test and skip_depth is None:
                skip_depth, pending_test = depth, False
            depth += 1
        elif c == "}":
            depth -= 1
            if skip_depth is not None and depth <= skip_depth:
                skip_depth = None
        elif c == ";" and pending_test and skip_depth is None:
            pending_test = False  # a test-only `use` or item without a body
        i += 1
    return out


def check_tables() -> list[str]:
    """A file below src/store/ writes (`INSERT INTO`, `UPDATE`, `DELETE FROM`, in a
    string literal of its code) only the tables the map lists it as an owner of;
    a composer writes none; a table name the check cannot read (`format!`'s
    `{table}`, or a literal that ends at the keyword) fails too."""
    owners, composers = table_map()
    problems = []
    owned_by: dict[str, set[str]] = {}
    for table, files in owners.items():
        for f in files:
            owned_by.setdefault(f, set()).add(table)
            if not (STORE / f).is_file():
                problems.append(f"ARCHITECTURE.md: the table map names src/store/{f}, which does not exist")
    for f in composers:
        if not (STORE / f).is_file():
            problems.append(f"ARCHITECTURE.md: the table map names src/store/{f}, which does not exist")
    for path in sorted(STORE.rglob("*.rs")):
        if is_test_file(path):
            continue
        rel = path.relative_to(STORE).as_posix()
        mine = owned_by.get(rel, set())
        for no, text in string_literals(path):
            for m in WRITE.finditer(text):
                table = m.group(2)
                verb = " ".join(m.group(1).split())
                if table.startswith("{") or not re.fullmatch(r"[a-z_][a-z0-9_]*", table):
                    problems.append(
                        f"src/store/{rel}:{no}: `{verb} {table}`: a table name the check cannot read "
                        "(write the table's name in the literal)"
                    )
                elif table not in owners:
                    problems.append(f"src/store/{rel}:{no}: `{verb} {table}`: `{table}` is in no row of the table map")
                elif table not in mine:
                    who = ", ".join(owners[table])
                    problems.append(
                        f"src/store/{rel}:{no}: `{verb} {table}` outside the table's owners ({who}); "
                        "call a statement of theirs"
                    )
            if re.search(r"\b(INSERT\s+INTO|(?<!FOR\s)(?<!DO\s)UPDATE|DELETE\s+FROM)\s*$", text):
                problems.append(f"src/store/{rel}:{no}: a write whose table name is not in the literal")
    return problems


def main() -> int:
    order = layers()
    rank = {m: i for i, row in enumerate(order) for m in row}
    problems = []
    files = sorted(p for p in SRC.rglob("*.rs") if not is_test_file(p))
    edges: dict[Path, dict[Path, int]] = {}
    for f in files:
        mod = file_module_path(f)
        top = mod[0] if mod else "lib"
        if top == "main":
            top = "cli"
        if top not in rank and top != "lib":
            problems.append(f"{f.relative_to(ROOT)}: module `{top}` is in no layer of ARCHITECTURE.md")
            continue
        for no, target in imports(f):
            if not target:
                continue
            other = target[0]
            if other in rank and top in rank and other != top and rank[other] >= rank[top]:
                where = "beside" if rank[other] == rank[top] else "above"
                problems.append(
                    f"{f.relative_to(ROOT)}:{no}: `{top}` imports `{other}`, which stands {where} it in ARCHITECTURE.md"
                )
            tf = module_file(target)
            if tf and tf != f and not is_test_file(tf):
                edges.setdefault(f, {}).setdefault(tf, no)
    # cycles between files (Tarjan's strongly connected components)
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on: set[Path] = set()
    counter = [0]
    sccs = []

    sys.setrecursionlimit(10000)

    def visit(v: Path) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for f in files:
        if f not in index:
            visit(f)
    for comp in sccs:
        members = set(comp)
        detail = []
        for a in sorted(comp):
            for b, no in sorted(edges.get(a, {}).items()):
                if b in members:
                    detail.append(f"{a.relative_to(ROOT)}:{no} -> {b.relative_to(ROOT)}")
        problems.append("files import each other: " + "; ".join(detail))
    problems += check_tables()
    for p in problems:
        print(p)
    if problems:
        print(f"check-layers: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"check-layers: {len(files)} files, {sum(len(e) for e in edges.values())} imports between files, "
        "layers hold, every table written only by its owners"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
