; Definitions a snippet can show: top-level functions, classes, assignments; methods of classes.
; @name is the defined name, @definition.KIND the whole definition (decorators included).
(module (function_definition name: (identifier) @name) @definition.function)
(module (decorated_definition definition: (function_definition name: (identifier) @name)) @definition.function)
(module (class_definition name: (identifier) @name) @definition.class)
(module (decorated_definition definition: (class_definition name: (identifier) @name)) @definition.class)
(module (expression_statement (assignment left: (identifier) @name)) @definition.variable)
(class_definition body: (block (function_definition name: (identifier) @name) @definition.method))
(class_definition body: (block (decorated_definition definition: (function_definition name: (identifier) @name)) @definition.method))
