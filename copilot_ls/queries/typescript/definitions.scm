; TypeScript / TSX: the JavaScript definitions plus interfaces, type aliases, enums, abstract classes.
(function_declaration name: (identifier) @name) @definition.function
(generator_function_declaration name: (identifier) @name) @definition.function
(class_declaration name: (type_identifier) @name) @definition.class
(abstract_class_declaration name: (type_identifier) @name) @definition.class
(interface_declaration name: (type_identifier) @name) @definition.class
(type_alias_declaration name: (type_identifier) @name) @definition.type
(enum_declaration name: (identifier) @name) @definition.type
(lexical_declaration (variable_declarator name: (identifier) @name value: [(arrow_function) (function_expression)])) @definition.function
(lexical_declaration (variable_declarator name: (identifier) @name value: [(object) (array) (number) (string) (call_expression) (new_expression)])) @definition.variable
(method_definition name: (property_identifier) @name) @definition.method
; @include ../ecmascript/commonjs_definitions.scm
