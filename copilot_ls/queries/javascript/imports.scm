; ES imports, re-exports (export ... from) and CommonJS require() bindings; the source string is @source.
(import_statement source: (string (string_fragment) @source)) @import
(lexical_declaration (variable_declarator value: (call_expression function: (identifier) @_req arguments: (arguments (string (string_fragment) @source))) (#eq? @_req "require"))) @require
(variable_declaration (variable_declarator value: (call_expression function: (identifier) @_req arguments: (arguments (string (string_fragment) @source))) (#eq? @_req "require"))) @require
(export_statement source: (string (string_fragment) @source)) @reexport
