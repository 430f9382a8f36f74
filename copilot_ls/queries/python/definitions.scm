; Definitions a snippet can show: functions, classes, assignments (kept when at the top level, i.e. under the
; module or an ERROR node of a file that does not parse); methods of classes.
; @name is the defined name, @definition.KIND the whole definition (decorators included).
(function_definition name: (identifier) @name) @definition.function
(decorated_definition definition: (function_definition name: (identifier) @name)) @definition.function
(class_definition name: (identifier) @name) @definition.class
(decorated_definition definition: (class_definition name: (identifier) @name)) @definition.class
(expression_statement (assignment left: (identifier) @name)) @definition.variable
(class_definition body: (block (function_definition name: (identifier) @name) @definition.method))
(class_definition body: (block (decorated_definition definition: (function_definition name: (identifier) @name)) @definition.method))
