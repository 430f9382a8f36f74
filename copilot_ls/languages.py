"""The language table: tree-sitter grammars (from the grammar wheels) and per-language knowledge as data.

Every language the server understands is one row of ``_TABLE``. Nothing here is downloaded at run time:
each grammar is a compiled parser shipped inside its ``tree-sitter-<lang>`` wheel. A language that is not
in the table gets text-only context (``language_for`` returns ``None``).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import tree_sitter

QUERY_DIR = Path(__file__).with_name("queries")


@dataclass(frozen=True)
class LanguageSpec:
    id: str  # "python", "javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp"
    ts_language: tree_sitter.Language
    comment: str  # line-comment prefix
    extensions: tuple[str, ...]
    lsp_ids: tuple[str, ...] = ()  # LSP languageId values (besides `id`) that map to this grammar
    # Node types whose children are the statements of a block / body (an empty one at the cursor -> multi-line).
    block_types: frozenset[str] = frozenset()
    # Definitions that open a scope (functions, methods, classes ...): headers kept in context, scope ends.
    function_types: frozenset[str] = frozenset()
    class_types: frozenset[str] = frozenset()
    # Node types inside which the cursor is "in a string / comment" (completion stays single-line).
    string_types: frozenset[str] = frozenset()
    comment_types: frozenset[str] = frozenset()
    indent_scoped: bool = False  # True when indentation closes blocks (Python)
    block_open: str = "{"  # the character that opens a block in brace languages ("" for Python)
    # Test detection: file names, function names, and call names (describe/it/test) that mark a test.
    test_file: re.Pattern[str] = field(default=re.compile(r"(?!)"))
    test_function: re.Pattern[str] = field(default=re.compile(r"(?!)"))
    test_calls: frozenset[str] = frozenset()
    query_group: str = ""  # folder under copilot_ls/queries/ with this language's .scm files (default: id)

    def query(self, name: str) -> tree_sitter.Query | None:
        """The compiled query ``queries/<group>/<name>.scm`` for this language, or None if there is none."""
        return _query(self.id, self.query_group or self.id, name)

    def __repr__(self) -> str:  # the Language object's repr is noise in test output
        return f"LanguageSpec({self.id!r})"


_PY_TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")
_JS_TEST_FILE = re.compile(r"(^|/)([^/]*\.(test|spec)\.[cm]?[jt]sx?|__tests__/[^/]*)$")
_C_BLOCKS = frozenset({"compound_statement", "field_declaration_list", "enumerator_list", "initializer_list"})
_JS_BLOCKS = frozenset({"statement_block", "class_body", "object", "switch_body", "array"})
_JS_FUNCS = frozenset(
    {
        "function_declaration",
        "function_expression",
        "arrow_function",
        "method_definition",
        "generator_function_declaration",
        "generator_function",
    }
)
# TypeScript and TSX: one grammar package, two dialects with the same node types
_TS_ROW = dict(
    comment="//",
    block_types=_JS_BLOCKS | {"interface_body", "enum_body", "object_type"},
    function_types=_JS_FUNCS | {"function_signature", "method_signature"},
    class_types=frozenset(
        {"class_declaration", "class", "abstract_class_declaration", "interface_declaration"}
    ),
    string_types=frozenset({"string", "template_string", "string_fragment"}),
    comment_types=frozenset({"comment"}),
    test_file=_JS_TEST_FILE,
    test_function=re.compile(r"^test"),
    test_calls=frozenset({"describe", "it", "test"}),
    query_group="typescript",
)

# (id, module, factory, row)
_TABLE: tuple[tuple[str, str, str, dict], ...] = (
    (
        "python",
        "tree_sitter_python",
        "language",
        dict(
            comment="#",
            extensions=(".py", ".pyi", ".pyw"),
            lsp_ids=("py", "python3"),
            block_types=frozenset({"block"}),
            function_types=frozenset({"function_definition"}),
            class_types=frozenset({"class_definition"}),
            string_types=frozenset({"string", "string_content", "concatenated_string"}),
            comment_types=frozenset({"comment"}),
            indent_scoped=True,
            block_open=":",
            test_file=_PY_TEST_FILE,
            test_function=re.compile(r"^test"),
        ),
    ),
    (
        "javascript",
        "tree_sitter_javascript",
        "language",
        dict(
            comment="//",
            extensions=(".js", ".jsx", ".mjs", ".cjs"),
            lsp_ids=("javascriptreact", "js", "jsx"),
            block_types=_JS_BLOCKS,
            function_types=_JS_FUNCS,
            class_types=frozenset({"class_declaration", "class"}),
            string_types=frozenset({"string", "template_string", "string_fragment"}),
            comment_types=frozenset({"comment"}),
            test_file=_JS_TEST_FILE,
            test_function=re.compile(r"^test"),
            test_calls=frozenset({"describe", "it", "test"}),
        ),
    ),
    (
        "typescript",
        "tree_sitter_typescript",
        "language_typescript",
        dict(_TS_ROW, extensions=(".ts", ".mts", ".cts"), lsp_ids=("ts",)),
    ),
    (
        "tsx",
        "tree_sitter_typescript",
        "language_tsx",
        dict(_TS_ROW, extensions=(".tsx",), lsp_ids=("typescriptreact",)),
    ),
    (
        "go",
        "tree_sitter_go",
        "language",
        dict(
            comment="//",
            extensions=(".go",),
            lsp_ids=("golang",),
            block_types=frozenset({"block", "field_declaration_list", "literal_value", "interface_type"}),
            function_types=frozenset({"function_declaration", "method_declaration", "func_literal"}),
            class_types=frozenset({"type_declaration"}),
            string_types=frozenset({"interpreted_string_literal", "raw_string_literal"}),
            comment_types=frozenset({"comment"}),
            test_file=re.compile(r"_test\.go$"),
            test_function=re.compile(r"^(Test|Benchmark|Example|Fuzz)"),
        ),
    ),
    (
        "rust",
        "tree_sitter_rust",
        "language",
        dict(
            comment="//",
            extensions=(".rs",),
            lsp_ids=("rs",),
            block_types=frozenset(
                {"block", "declaration_list", "field_declaration_list", "enum_variant_list", "match_block"}
            ),
            function_types=frozenset({"function_item", "closure_expression"}),
            class_types=frozenset({"impl_item", "struct_item", "enum_item", "trait_item", "mod_item"}),
            string_types=frozenset({"string_literal", "raw_string_literal", "string_content"}),
            comment_types=frozenset({"line_comment", "block_comment"}),
            test_file=re.compile(r"(^|/)tests/[^/]*\.rs$|_test\.rs$"),
            test_function=re.compile(r"^test"),
        ),
    ),
    (
        "java",
        "tree_sitter_java",
        "language",
        dict(
            comment="//",
            extensions=(".java",),
            block_types=frozenset(
                {"block", "class_body", "interface_body", "enum_body", "constructor_body", "switch_block"}
            ),
            function_types=frozenset({"method_declaration", "constructor_declaration", "lambda_expression"}),
            class_types=frozenset(
                {"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}
            ),
            string_types=frozenset({"string_literal", "string_fragment"}),
            comment_types=frozenset({"line_comment", "block_comment"}),
            test_file=re.compile(r"(^|/)[^/]*Tests?\.java$|(^|/)src/test/"),
            test_function=re.compile(r"^test"),
        ),
    ),
    (
        "c",
        "tree_sitter_c",
        "language",
        dict(
            comment="//",
            extensions=(".c", ".h"),
            block_types=_C_BLOCKS,
            function_types=frozenset({"function_definition"}),
            class_types=frozenset({"struct_specifier", "union_specifier", "enum_specifier"}),
            string_types=frozenset({"string_literal", "char_literal", "string_content"}),
            comment_types=frozenset({"comment"}),
            test_file=re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.c$"),
            test_function=re.compile(r"^test"),
        ),
    ),
    (
        "cpp",
        "tree_sitter_cpp",
        "language",
        dict(
            comment="//",
            extensions=(".cpp", ".cc", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp"),
            lsp_ids=("c++", "cuda-cpp"),
            block_types=_C_BLOCKS | {"declaration_list"},
            function_types=frozenset({"function_definition", "lambda_expression"}),
            class_types=frozenset(
                {
                    "class_specifier",
                    "struct_specifier",
                    "union_specifier",
                    "enum_specifier",
                    "namespace_definition",
                }
            ),
            string_types=frozenset(
                {"string_literal", "raw_string_literal", "char_literal", "string_content"}
            ),
            comment_types=frozenset({"comment"}),
            test_file=re.compile(r"(^|/)(test_[^/]*|[^/]*_test|[^/]*_unittest)\.(cc|cpp|cxx)$"),
            test_function=re.compile(r"^(TEST|test)"),
        ),
    ),
)


# --- what the context builder knows per language -------------------------------------------------------------
# Languages whose definitions and imports are extracted (queries/<lang>/{definitions,imports}.scm), and the
# JavaScript family among them (one import resolution, one name-index pattern).
JS_LANGUAGES = ("javascript", "typescript", "tsx")
SYMBOL_LANGUAGES = ("python", *JS_LANGUAGES)
JS_EXTENSIONS = (".js", ".ts", ".tsx", ".jsx", ".mjs", ".cjs", ".mts", ".cts")  # what a JS import may name
INDEXED_EXTENSIONS = (".py", ".pyi", *JS_EXTENSIONS)  # files the workspace name index reads

# Top-level definitions a regex can spot cheaply (for the workspace name index), per family: "python" | "js".
NAME_PATTERNS: dict[str, re.Pattern[str]] = {
    "python": re.compile(r"^(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", re.M),
    "js": re.compile(
        r"^(?:(?:export\s+(?:default\s+)?)?(?:async\s+)?(?:function\*?|class|const|let|var|interface|type|enum)\s+"
        r"|(?:module\.)?exports\.)([A-Za-z_$][\w$]*)",  # CommonJS: `exports.f = ...`, `module.exports.f = ...`
        re.M,
    ),
}

# Multi-line completions end where a new top-level statement starts (the Codex paper's stop sequences).
MULTILINE_STOPS: dict[str, tuple[str, ...]] = {
    "python": ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n@"),
    "javascript": ("\nfunction ", "\nclass ", "\nexport ", "\nimport ", "\ndescribe(", "\ntest(", "\nit("),
    "typescript": (
        "\nfunction ",
        "\nclass ",
        "\nexport ",
        "\nimport ",
        "\ninterface ",
        "\ndescribe(",
        "\ntest(",
    ),
    "tsx": ("\nfunction ", "\nclass ", "\nexport ", "\nimport ", "\ninterface "),
    "go": ("\nfunc ", "\ntype ", "\nvar ", "\nconst ", "\nimport "),
    "rust": ("\nfn ", "\npub fn ", "\nimpl ", "\nstruct ", "\n#[", "\nmod "),
    "java": ("\n}\n\n", "\npublic class ", "\nclass ", "\nimport "),
    "c": ("\n#include", "\n#define", "\nint main("),
    "cpp": ("\n#include", "\n#define", "\nint main("),
}


@functools.cache
def _specs() -> dict[str, LanguageSpec]:
    specs: dict[str, LanguageSpec] = {}
    for lang_id, module_name, factory, row in _TABLE:
        module = importlib.import_module(module_name)
        ts_language = tree_sitter.Language(getattr(module, factory)())
        specs[lang_id] = LanguageSpec(id=lang_id, ts_language=ts_language, **row)
    return specs


@functools.cache
def _by_lsp_id() -> dict[str, LanguageSpec]:
    table: dict[str, LanguageSpec] = {}
    for spec in _specs().values():
        table[spec.id] = spec
        for alias in spec.lsp_ids:
            table[alias] = spec
    return table


@functools.cache
def _by_extension() -> dict[str, LanguageSpec]:
    return {ext: spec for spec in _specs().values() for ext in spec.extensions}


def all_languages() -> list[LanguageSpec]:
    """Every language in the table, in table order."""
    return list(_specs().values())


# LSP languageIds that say "this is text": no grammar, and no guessing from the file extension either.
TEXT_IDS = frozenset({"plaintext", "text", "txt"})


def language_for(language_id: str | None, path: str | None = None) -> LanguageSpec | None:
    """The language of an LSP ``languageId`` (or, failing that, of the file extension); None = text-only."""
    if language_id:
        key = language_id.strip().lower()
        if key in TEXT_IDS:
            return None
        spec = _by_lsp_id().get(key)
        if spec is not None:
            return spec
    if path:
        ext = os.path.splitext(path)[1].lower()
        if ext:
            return _by_extension().get(ext)
    return None


def new_parser(spec: LanguageSpec) -> tree_sitter.Parser:
    return tree_sitter.Parser(spec.ts_language)


@functools.cache
def _query(lang_id: str, group: str, name: str) -> tree_sitter.Query | None:
    path = QUERY_DIR / group / f"{name}.scm"
    if not path.is_file():
        return None
    return tree_sitter.Query(_specs()[lang_id].ts_language, _query_text(path))


def _query_text(path: Path) -> str:
    """A query file's text, with each `; @include RELATIVE_PATH` line replaced by that file's text (patterns
    shared by grammars with the same node types, e.g. CommonJS exports in JavaScript and TypeScript)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("; @include "):
            out.append(_query_text((path.parent / line.removeprefix("; @include ").strip()).resolve()))
        else:
            out.append(line)
    return "\n".join(out) + "\n"
