"""The language server, in layers: `server` (pygls handlers and position mapping) over `session` (the editor's
requests: debounce, supersession, typed-ahead, counters) over `supervisor` (the backend's lifecycle) and
`autostart` (the backend child process); `timing`, `settings` and `stats` are plain leaves.

This file imports nothing, so that `copilot_ls.lsp.settings` and `copilot_ls.lsp.autostart` (also used by the
command-line tools) load without pygls. The core (pipeline, context, ...) never imports this package.
"""
