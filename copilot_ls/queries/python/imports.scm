; Import statements; copilot_ls/context_workspace.py reads their fields (module_name, name, alias).
(import_statement) @import
(import_from_statement) @import
