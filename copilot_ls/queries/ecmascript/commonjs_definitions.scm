; CommonJS exports, named by the exported name: `exports.f = function / () =>`, `module.exports.f = ...` (the
; statement is the definition), the functions of `module.exports = { f: function () {}, g() {} }` (@statement:
; the top-level statement that holds them); `exports.g = helper` / `module.exports = { g: helper }` make g an
; @alias of helper. `module.exports = f` / `= function f() {}` is the default export (context_workspace.py).
(expression_statement (assignment_expression
  left: (member_expression object: (identifier) @_exports property: (property_identifier) @name)
  right: [(function_expression) (arrow_function)]) (#eq? @_exports "exports")) @definition.function
(expression_statement (assignment_expression
  left: (member_expression object: (identifier) @_exports property: (property_identifier) @name)
  right: (class)) (#eq? @_exports "exports")) @definition.class
(expression_statement (assignment_expression
  left: (member_expression
    object: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
    property: (property_identifier) @name)
  right: [(function_expression) (arrow_function)]) (#eq? @_module "module") (#eq? @_exports "exports")) @definition.function
(expression_statement (assignment_expression
  left: (member_expression
    object: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
    property: (property_identifier) @name)
  right: (class)) (#eq? @_module "module") (#eq? @_exports "exports")) @definition.class
(expression_statement (assignment_expression
  left: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
  right: (object [(pair key: (property_identifier) @name value: [(function_expression) (arrow_function)])
                  (method_definition name: (property_identifier) @name)] @definition.function))
  (#eq? @_module "module") (#eq? @_exports "exports")) @statement
(expression_statement (assignment_expression
  left: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
  right: (object (pair key: (property_identifier) @name value: (identifier) @alias)))
  (#eq? @_module "module") (#eq? @_exports "exports")) @statement
(expression_statement (assignment_expression
  left: (member_expression object: (identifier) @_exports property: (property_identifier) @name)
  right: (identifier) @alias) (#eq? @_exports "exports")) @statement
(expression_statement (assignment_expression
  left: (member_expression
    object: (member_expression object: (identifier) @_module property: (property_identifier) @_exports)
    property: (property_identifier) @name)
  right: (identifier) @alias) (#eq? @_module "module") (#eq? @_exports "exports")) @statement
