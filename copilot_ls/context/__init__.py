"""The context builder: what the model sees for a completion at a cursor.

``build_prompt`` (``context.prompt``) is the entry point. Each module imports only modules listed below it:

    prompt      assembly: budget split, snippet choice, windows, trimming -> Prompt
    choice      which snippets fit the room the budget leaves them
    edits       recent edit regions: the history the LS keeps of them, and the snippets they give
    render      how parts look in the prompt text (path header, snippet styles, guarded control tokens)
    budget      token limits, counting, the longest head / tail within a number of tokens
    snippets    candidates: function under test, definitions via imports, similar windows, scope headers
    resolve     import resolution: names -> definitions in other files
    subjects    test detection: what the test around the cursor tests
    cursor      what the syntax says about the cursor (multi-line or not, stop strings, enclosing function)
    workspace   the project around a file: parsed files (cached), name index thread, workspace registry
    symbols     definitions of a file from its tree (pure)
    imports     import statements of a file from its tree (pure)
    fim         fill-in-the-middle templates per model family
"""

from copilot_ls.context.budget import KEEP_IN_PREFIX, PromptBudget, estimate_tokens
from copilot_ls.context.cursor import is_multiline, stop_strings
from copilot_ls.context.fim import FimTemplate
from copilot_ls.context.prompt import Prompt, SnippetSource, build_prompt
from copilot_ls.context.render import DEFAULT_SNIPPET_STYLE, GUARD, SNIPPET_STYLES, guard, unguard

__all__ = [
    "DEFAULT_SNIPPET_STYLE",
    "GUARD",
    "KEEP_IN_PREFIX",
    "SNIPPET_STYLES",
    "FimTemplate",
    "Prompt",
    "PromptBudget",
    "SnippetSource",
    "build_prompt",
    "estimate_tokens",
    "guard",
    "is_multiline",
    "stop_strings",
    "unguard",
]
