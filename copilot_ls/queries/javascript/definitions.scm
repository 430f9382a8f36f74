; Top-level (or exported) functions, classes and function-valued constants; class methods.
(function_declaration name: (identifier) @name) @definition.function
(generator_function_declaration name: (identifier) @name) @definition.function
(class_declaration name: (identifier) @name) @definition.class
(lexical_declaration (variable_declarator name: (identifier) @name value: [(arrow_function) (function_expression)])) @definition.function
(variable_declaration (variable_declarator name: (identifier) @name value: [(arrow_function) (function_expression)])) @definition.function
(lexical_declaration (variable_declarator name: (identifier) @name value: [(object) (array) (number) (string) (call_expression) (new_expression)])) @definition.variable
(method_definition name: (property_identifier) @name) @definition.method
; @include ../ecmascript/commonjs_definitions.scm
